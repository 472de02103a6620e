"""liera-vision: LieRA (Lie-group multiplicative PEFT) for ConvNeXt-style vision backbones.

Subpackages: ``core`` (adapters, torch only), ``models`` (ConvNeXt-V2 over timm),
``vtab`` (Lightning, VTAB-1k) and ``det`` (MMDetection plugin). Importing this package
loads none of lightning / mmengine / mmdet / mmcv.
"""

__version__ = "0.1.0"
