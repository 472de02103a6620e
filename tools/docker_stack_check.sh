#!/usr/bin/env bash
# The docker image's stack, without docker: a venv with the image's Python (3.10), its torch (from the
# Dockerfile's FROM line: 2.1.2, the registry's CUDA build, which runs on the CPU), the matching
# torchvision, the Dockerfile's own pins (numpy < 2, setuptools, mmengine, mmdet, timm, ...) and mmcv 2.1.0
# built by tools/install_mmcv.py; then the core, models, det and tools tests in it. Not part of CI.
#
#   tools/docker_stack_check.sh                 # build (first time: ~2.5 GB download + a ~15-30 min mmcv build)
#   tools/docker_stack_check.sh -m "not slow"   # extra arguments go to pytest
#   DOCKER_STACK_TESTS="tests/det" tools/docker_stack_check.sh   # other test paths
#
# A second run reuses the venv ($LIERA_DOCKER_VENV, default ~/.cache/liera-vision/docker-stack-venv) and the
# cached mmcv wheel (~/.cache/liera-vision/wheels), so it costs about the test run. PYTHON=/path/to/python3.10
# picks the interpreter (default: python3.10 on PATH, else pyenv's 3.10.x). Results: docker/README.md.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$PWD"
export PIP_DISABLE_PIP_VERSION_CHECK=1

# --- the image's versions, read from docker/Dockerfile ------------------------------------------------------
FROM_LINE=$(grep -m1 -E '^FROM ' docker/Dockerfile)
TORCH=$(sed -nE 's#^FROM pytorch/pytorch:([0-9]+\.[0-9]+\.[0-9]+)-cuda.*#\1#p' <<<"$FROM_LINE")
[ -n "$TORCH" ] || { echo "docker_stack_check: cannot read the torch version from '$FROM_LINE'" >&2; exit 2; }
# pytorch/pytorch:2.M.P images ship torchvision 0.(M+15).P (2.1.2 -> 0.16.2), the pairing of torch's release table
IFS=. read -r _ TORCH_MINOR TORCH_PATCH <<<"$TORCH"
TORCHVISION="0.$((TORCH_MINOR + 15)).$TORCH_PATCH"

# --- the interpreter: the image's Python minor -------------------------------------------------------------
WANT_PY=3.10
runs_as() { "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null; }
PY310="${PYTHON:-}"
if [ -z "$PY310" ]; then
    # python3.10 on PATH may be a pyenv shim that refuses to run: take the first candidate that runs as 3.10
    PYENV_ROOT_DIR=$( (command -v pyenv >/dev/null && pyenv root) || echo "$HOME/.pyenv")
    for candidate in "python$WANT_PY" $(ls -d "$PYENV_ROOT_DIR"/versions/"$WANT_PY".*/bin/python"$WANT_PY" 2>/dev/null \
                                         | sort -rV); do
        if [ "$(runs_as "$candidate")" = "$WANT_PY" ]; then PY310=$(command -v "$candidate"); break; fi
    done
fi
[ -n "$PY310" ] || { echo "docker_stack_check: no Python $WANT_PY found (the image's); set PYTHON=/path/to/python$WANT_PY" >&2
                     exit 2; }
got=$(runs_as "$PY310")
[ "$got" = "$WANT_PY" ] || { echo "docker_stack_check: $PY310 is Python ${got:-?}, the image has $WANT_PY" >&2; exit 2; }

VENV="${LIERA_DOCKER_VENV:-${LIERA_VISION_CACHE:-$HOME/.cache/liera-vision}/docker-stack-venv}"
if [ ! -x "$VENV/bin/python" ]; then
    echo "docker_stack_check: creating $VENV with $("$PY310" --version)"
    "$PY310" -m venv "$VENV"
fi
PY="$VENV/bin/python"

# The image's pins as pip constraints: every quoted requirement in the Dockerfile's RUN lines, plus torch.
CONSTRAINTS="$VENV/image-constraints.txt"
{
    echo "# written by tools/docker_stack_check.sh from docker/Dockerfile"
    echo "torch==$TORCH"
    echo "torchvision==$TORCHVISION"
    grep -oE '"[A-Za-z0-9_.-]+(==|>=|<=|~=|<|>)[^"]*"' docker/Dockerfile | tr -d '"'
} >"$CONSTRAINTS.part"
mv "$CONSTRAINTS.part" "$CONSTRAINTS"
export PIP_CONSTRAINT="$CONSTRAINTS"  # every pip call below, install_mmcv.py's included

echo "docker_stack_check: torch $TORCH, torchvision $TORCHVISION, constraints:" $(grep -v '^#' "$CONSTRAINTS")
"$PY" -m pip install -q "torch==$TORCH" "torchvision==$TORCHVISION" "numpy<2" "setuptools>=77,<81" wheel
"$PY" tools/install_mmcv.py
"$PY" -m pip install -q --no-build-isolation -e ".[det,dev]"
"$PY" tools/install_mmcv.py --check

"$PY" - <<'EOF'
import sys
from importlib.metadata import version
names = ["torch", "torchvision", "numpy", "mmcv", "mmengine", "mmdet", "timm", "safetensors", "pycocotools",
         "setuptools", "pytest"]
print("docker_stack_check: Python", sys.version.split()[0], "|", ", ".join(f"{n} {version(n)}" for n in names))
EOF

cd "$ROOT"
read -r -a TESTS <<<"${DOCKER_STACK_TESTS:-tests/core tests/models tests/det tests/tools tests/test_layout.py}"
exec "$PY" -m pytest -p no:xdist -p no:cacheprovider -q -rfE --durations=10 "${TESTS[@]}" "$@"
