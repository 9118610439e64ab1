"""Seed 004's system as a preset: EfficientNet binary classifiers and UNet++ segmenters on a TPU."""

from steel_tpu.config.schema import (ClassifierModel, ClassifyConfig, Config, DataConfig, SegmentConfig,
                                     SegmenterModel, TrainConfig)


def seed004():
    """steel-tpu train --shards gs://BUCKET/shards --workdir gs://BUCKET/seed004-b0 --config seed004 --set segment.model.encoder=efficientnetb0

    Seed 004 (reyvaz's TPU solution): EfficientNet binary classifiers and UNet++ segmenters with EfficientNet
    encoders, 5 folds, 128x800, on a TPU from GCS, rare classes oversampled x4 / x3 / x2 (classes 2 / 1 / 4). The
    seed ensembled B0..B5: one workdir per encoder (--set classify.model.encoder=... segment.model.encoder=...).
    Its 0.55 binary gate is what `tune` chooses on out-of-fold data here, and its double threshold (an upper pixel
    threshold with min areas decides presence, a lower one draws the mask) what `tune --double` can choose.
    ImageNet weights required, as on colab-tpu. Elsewhere than a TPU: --set device=cpu|gpu.
    """
    return Config(
        name="seed004",
        device="tpu",
        classify=ClassifyConfig(
            model=ClassifierModel(encoder="efficientnetb0", heads="binary", allow_random_weights=False),
            data=DataConfig(image_height=128, image_width=800, batch_per_replica=16, shuffle_buffer=2048),
            train=TrainConfig(epochs=20, learning_rate=1e-3, reference_batch=128, steps_per_execution=8,
                              loss={"bce": 1.0}),
        ),
        segment=SegmentConfig(
            model=SegmenterModel(arch="unetpp", encoder="efficientnetb0", allow_random_weights=False),
            data=DataConfig(image_height=128, image_width=800, batch_per_replica=16, shuffle_buffer=2048,
                            oversample={2: 4, 1: 3, 4: 2}),
            train=TrainConfig(epochs=30, learning_rate=1e-3, reference_batch=128, steps_per_execution=8),
        ),
    )
