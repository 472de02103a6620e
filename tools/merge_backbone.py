#!/usr/bin/env python
"""Fold the LieRA / LoRA / DoRA adapters of a trained detector's backbone into its weights.

    python tools/merge_backbone.py CONFIG CHECKPOINT OUT.pth
    python tools/test_coco.py CONFIG OUT.pth --cfg-options model.backbone.adapter=None

See docs/coco.md.
"""

import warnings

# mmengine 0.10.7 imports pkg_resources, which recent setuptools flags as deprecated on every import;
# it is not about this run, and a user error should read as one line
warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)

from liera_vision.det.cli import merge_main, run  # noqa: E402 - after the filter above

if __name__ == "__main__":
    run(merge_main)
