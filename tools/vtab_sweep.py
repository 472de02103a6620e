#!/usr/bin/env python
"""Run one VTAB configuration over all 19 tasks (or a group / list), skipping finished and resuming interrupted ones.

    python tools/vtab_sweep.py --config configs/vtab/protocol/vtab1k.yaml --config configs/vtab/liera_r8.yaml \
        --tasks all -- --data.root data/vtab-1k --model.checkpoint convnextv2_base_22k_224_ema.pt

Results: runs/vtab/<last config's name>/results.jsonl. A run folder holds one resolved configuration: other
settings are refused, naming each difference (see docs/vtab.md).
"""

import sys

from liera_vision.vtab.sweep import main

if __name__ == "__main__":
    sys.exit(main())
