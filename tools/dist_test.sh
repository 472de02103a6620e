#!/usr/bin/env bash
# Multi-GPU testing with torchrun:
#   tools/dist_test.sh CONFIG CHECKPOINT GPUS [tools/test_coco.py args, e.g. --out preds.pkl]
# Multi-node: NNODES, NODE_RANK, MASTER_ADDR and PORT (default 1, 0, 127.0.0.1, 29500).
# PYTHON selects the interpreter (default: python3).
set -euo pipefail
if [ $# -lt 3 ]; then
    echo "usage: $0 CONFIG CHECKPOINT GPUS [test_coco.py args...]" >&2
    exit 2
fi
CONFIG=$1
CHECKPOINT=$2
GPUS=$3
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
exec "${PYTHON:-python3}" -m torch.distributed.run \
    --nnodes="${NNODES:-1}" \
    --node_rank="${NODE_RANK:-0}" \
    --master_addr="${MASTER_ADDR:-127.0.0.1}" \
    --master_port="${PORT:-29500}" \
    --nproc_per_node="$GPUS" \
    "$HERE/test_coco.py" "$CONFIG" "$CHECKPOINT" --launcher pytorch "${@:4}"
