#!/usr/bin/env python
"""The main job: LieRA vs LoRA, full fine-tuning and a linear probe on real images, from a pre-trained backbone.

Builds a small VTAB-style suite from the real images scikit-learn and scikit-image ship (one task per
VTAB group), pre-trains a ConvNeXt-V2 atto on rendered letters (both cached), runs every method x seed
through the VTAB pipeline (configs/vtab, LightningCLI, sweep) and prints the report table.
--help lists the knobs, including how to point it at real VTAB-1k data and real weights.
"""

import sys
from pathlib import Path

from liera_vision.vtab.demo import main

if __name__ == "__main__":
    sys.exit(main(configs_dir=Path(__file__).resolve().parents[1] / "configs" / "vtab"))
