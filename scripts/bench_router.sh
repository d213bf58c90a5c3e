#!/usr/bin/env bash
# Router benchmark: direct vs router vs nginx split_clients, static and Paddle Serving backends.
# Installs wrk and nginx from Debian if absent (needs root), sets up .venv if needed.
# usage: scripts/bench_router.sh [--duration S] [--rounds N] [--static-concurrency 1,32]
#                                [--paddle-concurrency 1,16] [--skip-paddle] [--probe-rounds N]
#                                [--baseline DIR] [--isolate] [--json FILE]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
if [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then
  exec .venv/bin/python scripts/bench_router.py --help
fi
scripts/setup.sh >/dev/null
if ! command -v wrk >/dev/null || ! command -v nginx >/dev/null; then
  echo "bench: installing wrk and nginx-light from Debian"
  sudo_cmd=""; [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq wrk nginx-light
fi
exec .venv/bin/python scripts/bench_router.py "$@"
