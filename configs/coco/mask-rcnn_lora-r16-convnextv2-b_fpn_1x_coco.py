# Mask R-CNN, ConvNeXt-V2-B backbone frozen except LoRA r=16 (additive baseline) adapters on every
# conv with a spatial kernel (stem, downsamples, depthwise 7x7) and the output norms; neck and
# heads train in full. Everything else as in the full fine-tuning config.
_base_ = './mask-rcnn_convnextv2-b_fpn_1x_coco.py'

model = dict(backbone=dict(adapter=dict(method='lora', rank=16)))
