#!/usr/bin/env bash
# Set up (if needed) and run the full check: ruff, mypy and the whole pytest suite, including the
# slow integration tests on the embedded model. Extra arguments go to pytest.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/setup.sh"
cd "$root"
# Only the report's browser tests need a browser (the main job does not): Debian's Chromium,
# installed where we may (root with apt); without it those tests are skipped.
if ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "test: installing chromium for the report's browser tests" >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 \
            || echo "test: chromium did not install; the browser tests will be skipped" >&2
    else
        echo "test: no chromium (apt-get install chromium); browser tests will be skipped" >&2
    fi
fi
.venv/bin/ruff check screener tests benchmarks
.venv/bin/ruff format --check screener tests benchmarks
.venv/bin/mypy
.venv/bin/python -m pytest "$@"
