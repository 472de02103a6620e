# Mask R-CNN, ConvNeXt-V2-atto backbone, full fine-tuning, random init (no checkpoint needed):
# the adapter-free twin of the atto smoke config, and the target of tools/merge_backbone.py.
_base_ = './_base_/mask-rcnn_convnextv2_fpn_1x_coco.py'

model = dict(
    backbone=dict(arch='atto', drop_path_rate=0.1),
    neck=dict(in_channels=[40, 80, 160, 320]))

# layer-wise lr decay ids: stem 0, stage 0 -> 1, stage 1 -> 2, stage 2 -> 3 + block // 3 (6 blocks: 3..4),
# stage 3 -> num_layers; so num_layers = 3 + (6 - 1) // 3 + 1 = 5 for atto (12 for base)
optim_wrapper = dict(paramwise_cfg=dict(num_layers=5))
