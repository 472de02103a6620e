# Mask R-CNN, ConvNeXt-V2-B backbone frozen except LieRA r=32 (Taylor composition W + W*dW) adapters on every
# conv with a spatial kernel (stem, downsamples, depthwise 7x7) and the output norms; neck and
# heads train in full. Everything else as in the full fine-tuning config.
# alpha / rank = 64 ≈ 1 / mean|W|: a Lie step scales with |W| (benchmarks/transfer_study.py, docs/coco.md)
_base_ = './mask-rcnn_convnextv2-b_fpn_1x_coco.py'

model = dict(backbone=dict(adapter=dict(method='liera', rank=32, alpha=2048)))
