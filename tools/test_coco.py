#!/usr/bin/env python
"""Test (and evaluate with CocoMetric) a trained detector (the flags of mmdet's tools/test.py).

    python tools/test_coco.py CONFIG CHECKPOINT [--out preds.pkl] [--show-dir vis]
    tools/dist_test.sh CONFIG CHECKPOINT GPUS [args]   # multi-GPU

See docs/coco.md.
"""

from liera_vision.det.cli import test_main

if __name__ == "__main__":
    test_main()
