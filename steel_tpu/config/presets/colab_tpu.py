"""The `colab-tpu` preset: a B0 classifier and UNet++ on any TPU slice."""

from steel_tpu.config.schema import (AugmentConfig, ClassifierModel, ClassifyConfig, Config, DataConfig,
                                     SegmentConfig, SegmenterModel, TrainConfig)


def colab_tpu():
    """steel-tpu train --shards gs://BUCKET/shards --workdir gs://BUCKET/work --config colab-tpu

    Any TPU slice: Colab's v5e-1 (1 replica), Kaggle's v5e-8 and v6e-8 (8), Cloud TPU VM slices. B0 classifier and
    B0 UNet++ at 256x800, trained on 256x512 crops in bfloat16, ImageNet weights required. Batches are per replica
    (sized for a v2 core's 8 GiB, the smallest HBM of these); learning rates and steps per execution were set for
    8 replicas (reference_batch) and follow the slice (resolve.py). Elsewhere on purpose: --set device=gpu|cpu.
    """
    return Config(
        name="colab-tpu",
        device="tpu",
        classify=ClassifyConfig(
            model=ClassifierModel(encoder="efficientnetb0", allow_random_weights=False),
            data=DataConfig(image_height=256, image_width=800, batch_per_replica=16, shuffle_buffer=2048),
            train=TrainConfig(epochs=15, learning_rate=1e-3, reference_batch=128, steps_per_execution=8,
                              label_smoothing=0.05, loss={"bce": 1.0}),
        ),
        segment=SegmentConfig(
            model=SegmenterModel(arch="unetpp", encoder="efficientnetb0", allow_random_weights=False),
            data=DataConfig(image_height=256, image_width=1600, batch_per_replica=8, shuffle_buffer=2048,
                            oversample={1: 2, 2: 4, 4: 2}, clean_keep=0.2),
            augment=AugmentConfig(crop_height=256, crop_width=512),
            # 8 steps of 64 images a host call on 8 replicas; 64 steps of 8 on one chip (the same images a call).
            train=TrainConfig(epochs=30, learning_rate=1e-3, reference_batch=64, steps_per_execution=8),
        ),
    )
