"""The `full` preset: the seed TPU solution's scale."""

from steel_tpu.config.presets.colab_tpu import colab_tpu


def full():
    """steel-tpu train --shards gs://BUCKET/shards --workdir gs://BUCKET/work-b4 --config full --set segment.model.encoder=efficientnetb4

    The seed TPU solution's scale: 5 folds at full resolution; run once per encoder B0..B5 into separate
    workdirs and ensemble them at predict time.
    """
    cfg = colab_tpu()
    cfg.name = "full"
    cfg.classify.train.epochs = 25
    cfg.segment.train.epochs = 50
    cfg.classify.data.image_width = 1600
    return cfg
