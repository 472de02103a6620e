# Smoke config: Mask R-CNN on a LieRA r=16 ConvNeXt-V2-atto, random init, runs without any
# checkpoint (used by the tests on a generated COCO-format dataset).
# alpha / rank = 64 ≈ 1 / mean|W|: a Lie step scales with |W| (benchmarks/transfer_study.py, docs/coco.md)
_base_ = './mask-rcnn_convnextv2-atto_fpn_1x_coco.py'

model = dict(backbone=dict(adapter=dict(method='liera', rank=16, alpha=1024)))
