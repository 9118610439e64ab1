"""Seed 002's system as a preset: a residual U-Net with a softmax head, CCE + Dice with class weights."""

from steel_tpu.config.schema import Config, DataConfig, SegmentConfig, SegmenterModel, TrainConfig


def seed002():
    """steel-tpu train --shards S --workdir W --config seed002

    Seed 002: a residual U-Net with one softmax over background + the 4 classes, categorical cross-entropy + Dice
    with class weights, Adam. Here the residual U-Net is segmentation-models' U-Net on a ResNet34 encoder (residual
    blocks, as the seed's encoder had) and its per-pixel confusion matrix is in `steel-tpu report`. Class weights:
    background 0.5, then about the inverse square root of each class' share of Severstal's defect images.
    """
    return Config(
        name="seed002",
        tasks=("segment",),
        segment=SegmentConfig(
            model=SegmenterModel(arch="sm-unet", encoder="resnet34", head="softmax"),
            data=DataConfig(image_height=128, image_width=800, batch_per_replica=8),
            train=TrainConfig(epochs=30, learning_rate=1e-3, reference_batch=8, loss={"cce": 1.0, "dice": 1.0},
                              class_weights=(0.5, 2.0, 4.0, 1.0, 2.0)),
        ),
    )
