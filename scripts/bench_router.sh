#!/usr/bin/env bash
# Router benchmark: direct vs router vs nginx split_clients, static and Paddle Serving backends.
# Installs wrk and nginx from Debian if absent (needs root), and redis-server for
# --workers-section (--grpc-section needs none of them: Python gRPC clients); sets up .venv
# if needed.
# usage: scripts/bench_router.sh [--duration S] [--rounds N] [--static-concurrency 1,32]
#                                [--paddle-concurrency 1,16] [--models DIR] [--skip-paddle]
#                                [--probe-rounds N] [--baseline DIR] [--isolate] [--json FILE]
#                                [--workers-section]
#                                [--grpc-section [--grpc-concurrency 1,16]]
#        scripts/bench_router.sh --help   (what each path and section measures)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
if [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then
  exec .venv/bin/python scripts/bench_router.py --help
fi
scripts/setup.sh >/dev/null
packages=()
grpc_only=""
for arg in "$@"; do
  [ "$arg" != "--grpc-section" ] || grpc_only=1
done
if [ -z "$grpc_only" ]; then
  command -v wrk >/dev/null || packages+=(wrk)
  command -v nginx >/dev/null || packages+=(nginx-light)
fi
for arg in "$@"; do
  if [ "$arg" = "--workers-section" ] && ! command -v redis-server >/dev/null; then
    packages+=(redis-server)
  fi
done
if [ "${#packages[@]}" -gt 0 ]; then
  echo "bench: installing ${packages[*]} from Debian"
  sudo_cmd=""; [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
  # policy-rc.d 101: install without starting the servers the packages ship (redis-server's);
  # the bench starts its own on a free port.
  no_start=/usr/sbin/policy-rc.d
  created=""
  if [ ! -e "$no_start" ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo_cmd tee "$no_start" >/dev/null
    $sudo_cmd chmod +x "$no_start"
    created=1
  fi
  status=0
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get update -qq || status=$?
  if [ "$status" = 0 ]; then
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${packages[@]}" || status=$?
  fi
  [ -z "$created" ] || $sudo_cmd rm -f "$no_start"
  [ "$status" = 0 ] || exit "$status"
fi
exec .venv/bin/python scripts/bench_router.py "$@"
