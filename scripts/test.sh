#!/usr/bin/env bash
# The test suite (CPU only, generated data) plus the linter.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check anomalib_skipts tests
.venv/bin/python -m pytest -q "$@"
