#!/usr/bin/env python
"""Train a detector on COCO with an mmengine Runner (the flags of mmdet's tools/train.py).

    python tools/train_coco.py configs/coco/mask-rcnn_liera-r16-convnextv2-b_fpn_1x_coco.py [--amp] [--resume]
    tools/dist_train.sh CONFIG GPUS [args]   # multi-GPU

See docs/coco.md.
"""

from liera_vision.det.cli import train_main

if __name__ == "__main__":
    train_main()
