#!/usr/bin/env python
"""Fold the LieRA / LoRA / DoRA adapters of a trained detector's backbone into its weights.

    python tools/merge_backbone.py CONFIG CHECKPOINT OUT.pth
    python tools/test_coco.py CONFIG OUT.pth --cfg-options model.backbone.adapter=None

See docs/coco.md.
"""

from liera_vision.det.cli import merge_main

if __name__ == "__main__":
    merge_main()
