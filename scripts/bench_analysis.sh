#!/usr/bin/env bash
# Analysis benchmark: `python -m analysis report` on 10M exposures and 2M outcomes (generated
# once, cached under build/bench-analysis/). Sets up .venv if needed. Extra arguments go to
# scripts/bench_analysis.py (--repeat N, --engines duckdb,pandas,polars, --json FILE, ...).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
if [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then
  exec .venv/bin/python scripts/bench_analysis.py --help
fi
scripts/setup.sh >/dev/null
exec .venv/bin/python scripts/bench_analysis.py "$@"
