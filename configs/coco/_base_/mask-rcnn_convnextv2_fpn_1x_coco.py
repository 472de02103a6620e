# Mask R-CNN + FPN on a ConvNeXt-V2 backbone with optional LieRA / LoRA / DoRA adapters, COCO 2017
# instance segmentation, 1x schedule. MMDetection's own bases (as its projects/ConvNeXt-V2 does):
# Mask R-CNN R-50 FPN heads and train / test settings, COCO data (1333x800, flip) scored by
# CocoMetric for bbox and segm, the 1x schedule and the default runtime. Only what differs is set
# here: the backbone, the neck's input channels, the optimizer, the checked dataset / metric /
# runner of the plugin, and which checkpoints are kept. See docs/coco.md.
_base_ = [
    'mmdet::_base_/models/mask-rcnn_r50_fpn.py',
    'mmdet::_base_/datasets/coco_instance.py',
    'mmdet::_base_/schedules/schedule_1x.py',
    'mmdet::_base_/default_runtime.py',
]
custom_imports = dict(imports=['liera_vision.det'], allow_failed_imports=False)

# liera_vision.det.LieRAConvNeXt: timm's ConvNeXt-V2 blocks under the official module names.
# Not set here (mmengine cannot merge a child's dict into a base None): adapter (default None =
# full fine-tuning; e.g. dict(method='liera', rank=16)) and init_cfg (default None = random init).
model = dict(
    backbone=dict(
        _delete_=True,  # none of the base's ResNet-50 arguments applies
        type='LieRAConvNeXt',
        arch='base',
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.4,
        frozen_stages=0),
    neck=dict(in_channels=[128, 256, 512, 1024]))

# mmdet's CocoDataset / CocoMetric plus start-up checks: a malformed annotation file, a missing
# image, an annotation the pipeline or pycocotools cannot use fail before training, naming it.
dataset_type = 'CheckedCocoDataset'  # mmdet's configs name the dataset class here; the loaders below use it
train_dataloader = dict(dataset=dict(type=dataset_type))
val_dataloader = dict(dataset=dict(type=dataset_type))
test_dataloader = val_dataloader
val_evaluator = dict(type='CheckedCocoMetric')
test_evaluator = val_evaluator

# AdamW with mmdet's layer-wise lr decay. The layer ids come from the backbone's official ConvNeXt
# module names (backbone.downsample_layers.N / backbone.stages.N.M); neck and heads get the full lr.
# Batch 16 = 8 GPUs x 2 images (the base's auto_scale_lr); see docs/coco.md for the choice of lr / decay.
optim_wrapper = dict(
    constructor='LearningRateDecayOptimizerConstructor',
    paramwise_cfg=dict(decay_rate=0.9, decay_type='layer_wise', num_layers=12),
    optimizer=dict(_delete_=True, type='AdamW', lr=0.0001, betas=(0.9, 0.999), weight_decay=0.05))

# a checkpoint every epoch; the last three and the best (by coco/bbox_mAP) are kept
default_hooks = dict(checkpoint=dict(max_keep_ckpts=3, save_best='auto'))

# mmengine's Runner that reads its own checkpoints under torch >= 2.6 (mmengine's objects
# allow-listed while it reads) and refuses, for resume and test, a checkpoint that does not fit
runner_type = 'CheckedRunner'
