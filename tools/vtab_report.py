#!/usr/bin/env python
"""Print the VTAB table (per task, per group, mean of the tasks, mean of the group means) of one or more runs.

    python tools/vtab_report.py runs/vtab/liera_r8 runs/vtab/lora_r8 [--metric final|best|both] [--out DIR]

Paths: sweep folders (results.jsonl), single ``train_vtab.py fit`` run folders (result.json), result files, or
folders holding any mix of them. Writes vtab_report.md, vtab_report.csv and vtab_report.png.
"""

import sys

from liera_vision.vtab.report import main

if __name__ == "__main__":
    sys.exit(main())
