#!/usr/bin/env bash
# The main job on one machine: two demo models in Paddle Serving, the router, simulated users
# through a ramp and an SLO rollback, then the analysis report. Stops all it started on exit.
set -euo pipefail

if [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then
  cat <<'USAGE'
usage: scripts/demo.sh [--users N] [--rollback-users N] [--concurrency N] [--run-dir DIR] ...

Sets up .venv if needed, trains and exports the two demo models (models/), starts their Paddle
Serving servers and the router on a copy of experiments.yaml (run/demo/), drives simulated users
through 10% -> 50% (a hot-reloaded registry edit) and an SLO rollback of a frozen treatment,
then prints the analysis report. Takes about 5 minutes on 2 cores; --users makes it longer.
All options go to scripts/demo.py (see: .venv/bin/python scripts/demo.py --help).
USAGE
  exit 0
fi

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/setup.sh"
exec "$root/.venv/bin/python" "$root/scripts/demo.py" "$@"
