#!/usr/bin/env bash
# Run the whole test suite (sets up .venv first if needed). Extra arguments go to pytest.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: scripts/test.sh [--stress] [PYTEST_ARGS...]

Sets up .venv if needed, then runs ruff, mypy (strict) and the pytest suite.

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
