#!/usr/bin/env python
"""Convert a LieRA adapter between a liera-vision adapter file and a PEFT adapter folder (both ways).

    python tools/convert_adapter.py liera-r8.safetensors liera-r8-peft/    # file -> PEFT folder
    python tools/convert_adapter.py liera-r8-peft/ liera-r8.safetensors    # PEFT folder -> file

See docs/peft.md; the logic is liera_vision.peft.convert.
"""

import sys

from liera_vision.peft.convert import main

if __name__ == "__main__":
    sys.exit(main())
