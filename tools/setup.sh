#!/usr/bin/env bash
# One command to a working environment in .venv/: the project with its det + dev extras and
# mmcv 2.1.0 with compiled ops (built once, ~15 min on 2 cores, then reused from
# ~/.cache/liera-vision/wheels). Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON="${PYTHON:-}"
if [ -z "$PYTHON" ]; then
    for candidate in python3.11 python3; do
        if command -v "$candidate" >/dev/null; then PYTHON="$candidate"; break; fi
    done
fi
[ -n "$PYTHON" ] || { echo "setup: no python3 found; install Python 3.11" >&2; exit 1; }

if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv with $("$PYTHON" --version)"
    "$PYTHON" -m venv .venv
fi
PY=.venv/bin/python
export PIP_DISABLE_PIP_VERSION_CHECK=1

echo "setup: installing liera-vision (editable) with its dev extra"
$PY -m pip install -q "setuptools>=77,<81" wheel
$PY -m pip install -q -e ".[dev]"

echo "setup: mmcv with compiled ops"
$PY tools/install_mmcv.py

echo "setup: det and bench extras (mmengine, mmdet, peft; mmcv is already satisfied)"
$PY -m pip install -q -e ".[det,dev,bench]"
$PY tools/install_mmcv.py --check
echo "setup: done. Activate with 'source .venv/bin/activate'."
