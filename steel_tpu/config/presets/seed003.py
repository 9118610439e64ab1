"""Seed 003's system as a preset: a binary classifier gating a U-Net ResNet34 trained on defect images."""

from steel_tpu.config.schema import (ClassifierModel, ClassifyConfig, Config, DataConfig, SegmentConfig,
                                     SegmenterModel, TrainConfig)


def seed003():
    """steel-tpu train --shards S --workdir W --config seed003

    Seed 003: U-Net + ResNet (ResNet34 here), BCE + Dice, with the two improvements its slides list done: flips and
    photometric augmentation, and "a pipeline to reject defect-free images" — a binary classifier gates each image
    (`tune` chooses the gate), and the segmenter trains on defect images only (clean_keep=0).
    """
    return Config(
        name="seed003",
        classify=ClassifyConfig(
            model=ClassifierModel(encoder="efficientnetb0", heads="binary"),
            data=DataConfig(image_height=128, image_width=800, batch_per_replica=16),
            train=TrainConfig(epochs=15, learning_rate=1e-3, reference_batch=16, loss={"bce": 1.0}),
        ),
        segment=SegmentConfig(
            model=SegmenterModel(arch="sm-unet", encoder="resnet34"),
            data=DataConfig(image_height=128, image_width=800, batch_per_replica=8, clean_keep=0.0),
            train=TrainConfig(epochs=30, learning_rate=1e-3, reference_batch=8, loss={"bce": 1.0, "dice": 1.0}),
        ),
    )
