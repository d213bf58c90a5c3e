#!/usr/bin/env bash
# Soak the router (see scripts/soak.py): setup if needed, then 10 minutes at half its capacity.
# usage: scripts/soak.sh [--minutes N] [--rate R] [--json FILE] [--keep] ...
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
scripts/setup.sh >/dev/null
exec .venv/bin/python scripts/soak.py "$@"
