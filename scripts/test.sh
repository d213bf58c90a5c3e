#!/usr/bin/env bash
# Run the whole test suite (sets up .venv first if needed). Extra arguments go to pytest.
set -euo pipefail
if [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then
  echo "usage: scripts/test.sh [PYTEST_ARGS...]   (setup if needed, then ruff, mypy and pytest)"
  exit 0
fi
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/mypy
exec .venv/bin/python -m pytest "$@"
