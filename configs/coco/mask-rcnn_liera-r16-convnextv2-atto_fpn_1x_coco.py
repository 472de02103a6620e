# Smoke config: Mask R-CNN on a LieRA r=16 ConvNeXt-V2-atto, random init, runs without any
# checkpoint (used by the tests on a generated COCO-format dataset).
# alpha='auto': alpha / rank = 1 / mean|W| of the loaded backbone's adapted weights (docs/coco.md)
_base_ = './mask-rcnn_convnextv2-atto_fpn_1x_coco.py'

model = dict(backbone=dict(adapter=dict(method='liera', rank=16, alpha='auto')))
