#!/usr/bin/env python
"""Test (and evaluate with CocoMetric) a trained detector (the flags of mmdet's tools/test.py).

    python tools/test_coco.py CONFIG CHECKPOINT [--out preds.pkl] [--show-dir vis]
    tools/dist_test.sh CONFIG CHECKPOINT GPUS [args]   # multi-GPU

See docs/coco.md.
"""

import warnings

# mmengine 0.10.7 imports pkg_resources, which recent setuptools flags as deprecated on every import;
# it is not about this run, and a user error should read as one line
warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)

from liera_vision.det.cli import run, test_main  # noqa: E402 - after the filter above

if __name__ == "__main__":
    run(test_main)
