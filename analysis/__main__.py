"""`python -m analysis report|samplesize` (see analysis/cli.py)."""

from __future__ import annotations

import sys

from analysis.cli import main

sys.exit(main())
