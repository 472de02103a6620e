# Mask R-CNN, ConvNeXt-V2-B backbone, full fine-tuning (the reference for the adapter configs).
# Backbone weights: the official FCMAE-pretrained, ImageNet-1k fine-tuned ConvNeXt-V2-B
# (an http(s) URL is downloaded once to $TORCH_HOME/hub/checkpoints; a local path works too,
# as do the FCMAE file convnextv2_base_1k_224_fcmae.pt and timm .safetensors files).
_base_ = './_base_/mask-rcnn_convnextv2_fpn_1x_coco.py'

checkpoint_file = 'https://dl.fbaipublicfiles.com/convnext/convnextv2/im1k/convnextv2_base_1k_224_ema.pt'

model = dict(
    backbone=dict(
        arch='base',
        drop_path_rate=0.4,
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file)),
    neck=dict(in_channels=[128, 256, 512, 1024]))
