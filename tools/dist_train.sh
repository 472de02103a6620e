#!/usr/bin/env bash
# Multi-GPU (and multi-node) training with torchrun:
#   tools/dist_train.sh CONFIG GPUS [tools/train_coco.py args, e.g. --amp --resume]
# Multi-node: NNODES, NODE_RANK, MASTER_ADDR and PORT (default 1, 0, 127.0.0.1, 29500).
# PYTHON selects the interpreter (default: python3).
set -euo pipefail
if [ $# -lt 2 ]; then
    echo "usage: $0 CONFIG GPUS [train_coco.py args...]" >&2
    exit 2
fi
CONFIG=$1
GPUS=$2
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
exec "${PYTHON:-python3}" -m torch.distributed.run \
    --nnodes="${NNODES:-1}" \
    --node_rank="${NODE_RANK:-0}" \
    --master_addr="${MASTER_ADDR:-127.0.0.1}" \
    --master_port="${PORT:-29500}" \
    --nproc_per_node="$GPUS" \
    "$HERE/train_coco.py" "$CONFIG" --launcher pytorch "${@:3}"
