#!/usr/bin/env python
"""Train a detector on COCO with an mmengine Runner (the flags of mmdet's tools/train.py).

    python tools/train_coco.py configs/coco/mask-rcnn_liera-r16-convnextv2-b_fpn_1x_coco.py [--amp] [--resume]
    tools/dist_train.sh CONFIG GPUS [args]   # multi-GPU

See docs/coco.md.
"""

import warnings

# mmengine 0.10.7 imports pkg_resources, which recent setuptools flags as deprecated on every import;
# it is not about this run, and a user error should read as one line
warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)

from liera_vision.det.cli import run, train_main  # noqa: E402 - after the filter above

if __name__ == "__main__":
    run(train_main)
