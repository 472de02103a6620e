# Mask R-CNN, ConvNeXt-V2-B backbone frozen except LieRA r=16 (Taylor composition W + W*dW) adapters on every
# conv with a spatial kernel (stem, downsamples, depthwise 7x7) and the output norms; neck and
# heads train in full. Everything else as in the full fine-tuning config.
# alpha='auto': alpha / rank = 1 / mean|W| of the loaded backbone's adapted weights (docs/coco.md)
_base_ = './mask-rcnn_convnextv2-b_fpn_1x_coco.py'

model = dict(backbone=dict(adapter=dict(method='liera', rank=16, alpha='auto')))
