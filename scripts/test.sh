#!/usr/bin/env bash
# Run the whole test suite (sets up .venv first if needed). Extra arguments go to pytest.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: scripts/test.sh [--stress] [PYTEST_ARGS...]

Sets up .venv if needed, installs redis-server if missing (Debian/Ubuntu), then runs ruff,
mypy (strict) and the pytest suite.

  --stress   run pytest with every core kept busy by a CPU-bound loop (one per core, at the
             same priority as the tests, stopped when pytest ends and after 60 minutes at
             the latest): the suite must pass on a slow machine as on a fast one
EOF
}

stress=0
if [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then
  usage
  exit 0
fi
if [ "${1:-}" = "--stress" ]; then
  stress=1
  shift
fi

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
scripts/setup.sh
# The fleet's tests run a real Redis (Debian's redis-server), started on a free port by the
# tests themselves; install it when missing.
if ! command -v redis-server >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    echo "test: installing redis-server (the fleet's tests use it)"
    # policy-rc.d 101: install the package without starting the server it ships.
    no_start=/usr/sbin/policy-rc.d
    created=""
    if [ ! -e "$no_start" ]; then
      printf '#!/bin/sh\nexit 101\n' > "$no_start" && chmod +x "$no_start" && created=1
    fi
    installed=1
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server >/dev/null) \
      || installed=0
    [ -z "$created" ] || rm -f "$no_start"
    if [ "$installed" = 0 ]; then
      echo "test: could not install redis-server; install it and run again" >&2
      exit 1
    fi
  else
    echo "test: redis-server is missing (the fleet's tests need it); install it first" >&2
    exit 1
  fi
fi
.venv/bin/ruff check .
.venv/bin/mypy

if [ "$stress" = 0 ]; then
  exec .venv/bin/python -m pytest "$@"
fi

busy=()
stop_busy() {
  if [ "${#busy[@]}" -gt 0 ]; then
    kill "${busy[@]}" 2>/dev/null || true
    wait "${busy[@]}" 2>/dev/null || true
  fi
}
trap stop_busy EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
cores=$(nproc)
for _ in $(seq "$cores"); do
  .venv/bin/python -c '
import time
deadline = time.monotonic() + 3600
while time.monotonic() < deadline:
    sum(range(10_000))
' &
  busy+=("$!")
done
echo "test: --stress: $cores busy loops beside pytest (pids ${busy[*]})"
.venv/bin/python -m pytest "$@"
