#!/usr/bin/env bash
# Set up (if needed) and run the main job on the embedded model and the sample data, writing a
# report under reports/. Until screening lands, the main job is activation collection.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/setup.sh"
cd "$root"
.venv/bin/screener check sample_datasets/
.venv/bin/screener collect sample_datasets/chat_mixed.jsonl --layers 15,20 --out reports/sample-collect "$@"
echo "report: reports/sample-collect/summary.md"
