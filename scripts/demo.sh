#!/usr/bin/env bash
# Set up (if needed) and run the main job on the embedded model and the sample data: screen the
# labelled candidate set and write the results under reports/screen-chat_mixed/.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/setup.sh"
cd "$root"
.venv/bin/screener check sample_datasets/
.venv/bin/screener screen sample_datasets/chat_mixed.jsonl --out reports/screen-chat_mixed "$@"
echo "flagged samples: reports/screen-chat_mixed/flagged.jsonl; summary: reports/screen-chat_mixed/summary.json"
