#!/usr/bin/env bash
# Take the README's report screenshots (docs/report-summary.png, docs/report-flagged.png) with
# headless Chromium, from the demo run's report: run scripts/demo.sh first (it writes
#   reports/screen-chat_mixed/). docs/report-validation.png needs a validated run:
#   scripts/screenshots.sh RUN_DIR validation   # after `screener validate RUN_DIR`
#   scripts/screenshots.sh [RUN_DIR [PART ...]]   # PART: summary, flagged, validation
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
run_dir="$(cd "${1:-$root/reports/screen-chat_mixed}" && pwd)"
shift || true
[ $# -gt 0 ] || set -- summary flagged
browser="$(command -v chromium || command -v chromium-browser || true)"
[ -n "$browser" ] || { echo "screenshots: no chromium (apt-get install chromium)" >&2; exit 2; }
"$root/.venv/bin/screener" report "$run_dir" >/dev/null  # the current template
profile="$(mktemp -d)"
trap 'rm -rf "$profile"' EXIT
for part in "$@"; do
    # headless Chromium does not scroll to an anchor before its screenshot: a copy of the page
    # shows only the part wanted (the summary: everything from the top)
    case "$part" in
        summary) hide=""; height=1900 ;;
        flagged) hide="body > *:not(#flagged)"; height=1400 ;;
        validation) hide="body > *:not(#validation)"; height=1200 ;;
        *) echo "screenshots: unknown part $part (summary, flagged, validation)" >&2; exit 2 ;;
    esac
    page="$profile/$part.html"
    style=""
    [ -z "$hide" ] || style="<style>$hide { display: none; }</style>"
    sed "s|</head>|$style</head>|" "$run_dir/report.html" > "$page"
    "$browser" --headless --no-sandbox --disable-gpu --no-first-run \
        --disable-background-networking --disable-component-update --disable-sync \
        --user-data-dir="$profile/browser" --hide-scrollbars --virtual-time-budget=3000 \
        --window-size=1280,"$height" --screenshot="$root/docs/report-$part.png" \
        "file://$page" 2>/dev/null
    echo "wrote docs/report-$part.png"
done
