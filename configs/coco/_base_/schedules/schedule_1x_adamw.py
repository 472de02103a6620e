# 1x schedule (12 epochs, lr x0.1 at epochs 8 and 11, 500-iteration linear warm-up) with AdamW and
# mmdet's layer-wise lr decay. The layer ids come from the backbone's official ConvNeXt module names
# (backbone.downsample_layers.N / backbone.stages.N.M); neck and heads get the full lr.
# Batch 16 = 8 GPUs x 2 images; see docs/coco.md for the choice of lr / decay.
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=12, val_interval=1)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')

param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(type='MultiStepLR', begin=0, end=12, by_epoch=True, milestones=[8, 11], gamma=0.1)
]

optim_wrapper = dict(
    type='OptimWrapper',
    constructor='LearningRateDecayOptimizerConstructor',
    paramwise_cfg=dict(decay_rate=0.9, decay_type='layer_wise', num_layers=12),
    optimizer=dict(type='AdamW', lr=0.0001, betas=(0.9, 0.999), weight_decay=0.05))

auto_scale_lr = dict(enable=False, base_batch_size=16)
