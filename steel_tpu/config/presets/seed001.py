"""Seed 001's system as a preset: a segmentation-models U-Net ResNet34, BCE + Dice."""

from steel_tpu.config.schema import Config, DataConfig, SegmentConfig, SegmenterModel, TrainConfig


def seed001():
    """steel-tpu train --shards S --workdir W --config seed001

    Seed 001: a U-Net with a ResNet34 encoder (segmentation-models, the [sm] extra), one sigmoid per class, BCE +
    Dice, 128x800 inputs, no classifier. Its hand-set rule "a mask under 250 px at 128x800 (1,000 at full size) is
    empty" is what `steel-tpu tune` chooses per class here (min area), on out-of-fold data.
    """
    return Config(
        name="seed001",
        tasks=("segment",),
        segment=SegmentConfig(
            model=SegmenterModel(arch="sm-unet", encoder="resnet34"),
            data=DataConfig(image_height=128, image_width=800, batch_per_replica=8),
            train=TrainConfig(epochs=30, learning_rate=1e-3, reference_batch=8, loss={"bce": 1.0, "dice": 1.0}),
        ),
    )
