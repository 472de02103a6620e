#!/usr/bin/env python
"""VTAB-1k training with LightningCLI (fit = train, then test and write result.json).

    python tools/train_vtab.py fit --config configs/vtab/protocol/vtab1k.yaml --config configs/vtab/liera_r8.yaml \
        --data.root data/vtab-1k --data.task dtd --model.checkpoint convnextv2_base_22k_224_ema.pt \
        [--trainer.devices 4 --trainer.strategy ddp] [--trainer.precision bf16-mixed]

Configs compose: the protocol first, then a method; later files and then flags override earlier values.
See docs/vtab.md and ``python tools/train_vtab.py fit --help``.
"""

from liera_vision.vtab.cli import main

if __name__ == "__main__":
    main()
