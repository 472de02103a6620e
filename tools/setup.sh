#!/usr/bin/env bash
# One command to a working environment in .venv/: the project (editable) with all its extras (vtab, det,
# peft) and the dev tools, at the exact tested versions of requirements/lock.txt, and mmcv 2.1.0 with
# compiled ops (built once, ~15 min on 2 cores, then reused from ~/.cache/liera-vision/wheels).
# Idempotent: a second run only checks (well under 2 minutes). The supported ranges are in pyproject.toml;
# to install into an environment of your own, see the README's Install section.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

LOCK=requirements/lock.txt
LOCK_PYTHON=3.11  # the Python the lock was made and is tested on (its first lines say so)
PYTHON="${PYTHON:-}"
if [ -z "$PYTHON" ]; then
    for candidate in "python$LOCK_PYTHON" python3; do
        if command -v "$candidate" >/dev/null; then PYTHON="$candidate"; break; fi
    done
fi
[ -n "$PYTHON" ] || { echo "setup: no python3 found; install Python $LOCK_PYTHON" >&2; exit 1; }

if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv with $("$PYTHON" --version)"
    "$PYTHON" -m venv .venv
fi
PY=.venv/bin/python
have=$($PY -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if [ "$have" != "$LOCK_PYTHON" ]; then
    echo "setup: .venv has Python $have, but $LOCK pins the set tested on Python $LOCK_PYTHON." >&2
    echo "setup: remove .venv and run again with PYTHON=python$LOCK_PYTHON, or install from the ranges" >&2
    echo "setup: into your own environment: python tools/install_mmcv.py && pip install -e '.[all,dev]'" >&2
    exit 1
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1
# Every pip call below, and those of tools/install_mmcv.py, installs the lock's versions. (Relative path:
# pip splits PIP_CONSTRAINT at spaces; all calls run from the repository root.)
export PIP_CONSTRAINT="$LOCK"

echo "setup: liera-vision (editable) with the vtab, peft and dev extras, versions from $LOCK"
$PY -m pip install -q "setuptools>=77,<81" wheel
$PY -m pip install -q --no-build-isolation -e ".[vtab,peft,dev]"

echo "setup: mmcv with compiled ops"
$PY tools/install_mmcv.py

echo "setup: all extras (det adds mmengine and mmdet; mmcv is already satisfied)"
$PY -m pip install -q --no-build-isolation -e ".[all,dev]"
$PY -m pip check
$PY tools/install_mmcv.py --check
echo "setup: done. Activate with 'source .venv/bin/activate'."
