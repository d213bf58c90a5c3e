#!/usr/bin/env bash
# Regenerates the assignment test vectors (assign_*.json) with coreutils sha256sum and bc,
# independently of router/experiment/assign.py:  bucket = first 8 bytes of sha256("salt:unit") mod 10000.
# usage: tests/data/assign_vectors.sh   (writes next to itself)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

bucket() {  # bucket SALT UNIT
  local hex
  hex=$(printf '%s' "$1:$2" | sha256sum | cut -c1-16)
  echo "ibase=16; ${hex^^} % 2710" | bc   # 0x2710 = 10000
}

units=(u123 user-1 user-2 user-3 alice bob 42 0 "user@example.com" "用户-42" "device:9f8e7d" x y z
       "a very long unit id with spaces" 1000001 carol dave erin frank)

{
  echo '{"rule": "first 8 bytes of sha256(salt:unit), big-endian, mod 10000", "vectors": ['
  sep=""
  for salt in sentiment-2026-11 s other-salt; do
    for unit in "${units[@]}"; do
      printf '%s  {"salt": "%s", "unit": "%s", "bucket": %s}' "$sep" "$salt" "$unit" "$(bucket "$salt" "$unit")"
      sep=$',\n'
    done
  done
  printf '\n]}\n'
} > assign_buckets.json

{
  echo '{"rule": "treatment iff bucket < traffic * 100", "salt": "sentiment-2026-11", "cases": ['
  sep=""
  for unit in "${units[@]}"; do
    b=$(bucket sentiment-2026-11 "$unit")
    for traffic in 0 0.01 10 37.5 50 99.99 100; do
      limit=$(echo "$traffic * 100 / 1" | bc)
      variant=$([ "$b" -lt "$limit" ] && echo treatment || echo control)
      printf '%s  {"unit": "%s", "traffic": %s, "bucket": %s, "variant": "%s"}' \
        "$sep" "$unit" "$traffic" "$b" "$variant"
      sep=$',\n'
    done
  done
  printf '\n]}\n'
} > assign_two_arm.json

{
  echo '{"rule": "first variant is control; the others take [0,3300) and [3300,6600); control the rest",'
  echo ' "salt": "ranker-3", "variants": [{"name": "base", "weight": 34}, {"name": "wide", "weight": 33}, {"name": "deep", "weight": 33}],'
  echo ' "cases": ['
  sep=""
  for unit in "${units[@]}"; do
    b=$(bucket ranker-3 "$unit")
    if [ "$b" -lt 3300 ]; then v=wide; elif [ "$b" -lt 6600 ]; then v=deep; else v=base; fi
    printf '%s  {"unit": "%s", "bucket": %s, "variant": "%s"}' "$sep" "$unit" "$b" "$v"
    sep=$',\n'
  done
  printf '\n]}\n'
} > assign_multi_arm.json

{
  echo '{"rule": "layer bucket = bucket(layer name, unit); home-a owns [0,5000), home-b [5000,10000); the experiment salt picks the arm (traffic 50)",'
  echo ' "layer": "homepage", "experiments": {"home-a": "salt-a", "home-b": "salt-b"}, "traffic": 50,'
  echo ' "cases": ['
  sep=""
  for unit in "${units[@]}"; do
    lb=$(bucket homepage "$unit")
    if [ "$lb" -lt 5000 ]; then in=home-a; else in=home-b; fi
    for exp in home-a home-b; do
      salt=$([ "$exp" = home-a ] && echo salt-a || echo salt-b)
      if [ "$exp" = "$in" ]; then
        b=$(bucket "$salt" "$unit")
        v=$([ "$b" -lt 5000 ] && echo treatment || echo control); enrolled=true
      else
        v=control; enrolled=false
      fi
      printf '%s  {"unit": "%s", "experiment": "%s", "layer_bucket": %s, "variant": "%s", "enrolled": %s}' \
        "$sep" "$unit" "$exp" "$lb" "$v" "$enrolled"
      sep=$',\n'
    done
  done
  printf '\n]}\n'
} > assign_layers.json
echo "wrote assign_buckets.json assign_two_arm.json assign_multi_arm.json assign_layers.json"
