#!/usr/bin/env python
"""The VTAB-1k pipeline on generated data in a few minutes on CPU (no downloads): LieRA r8 vs LoRA r8.

Generates small tasks in the NOAH folder layout (cached), sweeps configs/vtab/liera_r8.yaml and
lora_r8.yaml over them with a ConvNeXt-V2 atto at 64 px, and prints the report table. The
backbone is random-initialised unless --checkpoint is given. --help lists the knobs, including
how to point it at real VTAB-1k data and real weights.
"""

import sys
from pathlib import Path

from liera_vision.vtab.demo import main

if __name__ == "__main__":
    sys.exit(main(configs_dir=Path(__file__).resolve().parents[1] / "configs" / "vtab"))
