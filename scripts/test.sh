#!/usr/bin/env bash
# Set up (if needed) and run the full check: ruff, mypy and the whole pytest suite, including the
# slow integration tests on the embedded model. Extra arguments go to pytest.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/setup.sh"
cd "$root"
.venv/bin/ruff check screener tests benchmarks
.venv/bin/ruff format --check screener tests benchmarks
.venv/bin/mypy
.venv/bin/python -m pytest "$@"
