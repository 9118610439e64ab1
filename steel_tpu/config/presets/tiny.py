"""The `tiny` preset: laptops, tests and `make demo`."""

from steel_tpu.config.schema import (AugmentConfig, ClassifierModel, ClassifyConfig, Config, DataConfig,
                                     SegmentConfig, SegmenterModel, TrainConfig)


def tiny():
    """steel-tpu train --shards demo_out/shards --workdir demo_out/work --config tiny --folds 0

    A few minutes on a laptop CPU: small residual CNN encoders (plaincnn) with thin decoders at 64x320, random init.
    """
    data = dict(image_height=64, image_width=320, batch_per_replica=8)
    # plaincnn, not EfficientNet-B0: from random init on 2 CPU cores it learns more in less time (bench_learning at
    # 64x320, 3 seeds: held-out Dice 0.947 +- 0.015 after 30 epochs vs 0.670 +- 0.170 for B0 after 8, each step ~2x
    # faster), so the demo trains 30 epochs in ~3.5 minutes where B0's 8 took ~8.
    # Random init and a few hundred steps: BatchNorm's moving statistics must keep up with the weights.
    weights = dict(weights=None, bn_momentum=0.9)
    return Config(
        name="tiny",
        folds=(0,),
        # A few hundred steps from scratch see each rare class (1, 2, 4: 3-10% of images) only a few dozen
        # times: oversampled, with fewer clean images, so the models do not settle on "never a rare class"
        # (bench_train with the milder oversampling before: no class 1, 2 or 4 pixel predicted after 8 epochs).
        classify=ClassifyConfig(
            model=ClassifierModel(encoder="plaincnn", heads="multilabel", **weights),
            data=DataConfig(**data, oversample={1: 3, 2: 4, 4: 3}, clean_keep=0.6),
            train=TrainConfig(epochs=16, learning_rate=2e-3, reference_batch=8, warmup_epochs=0.5, loss={"bce": 1.0}),
        ),
        segment=SegmentConfig(
            model=SegmenterModel(arch="unetpp", encoder="plaincnn", decoder_filters=(64, 32, 16, 16, 8), **weights),
            data=DataConfig(**data, oversample={1: 4, 2: 6, 4: 4}, clean_keep=0.3),
            augment=AugmentConfig(crop_height=64, crop_width=192),
            train=TrainConfig(epochs=30, learning_rate=2e-3, reference_batch=8, warmup_epochs=0.5,
                              loss={"bce": 0.5, "dice": 0.5}),
        ),
    )
