"""Seed 000's six models as a system of member workdirs (one preset per member)."""

from steel_tpu.constants import CLASS_IDS
from steel_tpu.config.schema import (ClassifierModel, ClassifyConfig, Config, DataConfig, SegmentConfig,
                                     SegmenterModel, TrainConfig)


def seed000():
    """steel-tpu train --shards S --workdir W --config seed000

    Seed 000's six models, each fed only the data it should see, as a system (system.py): one member workdir each
    in W, trained one after another, tuned and scored as one ensemble by `steel-tpu tune --workdir W` and
    `steel-tpu predict --workdir W`. `binary`: a binary defect classifier on all images. `multilabel`: a 4-output
    classifier on defect images only (clean_keep=0), so its outputs are P(class | defect); the ensemble gates each
    class on P(defect) x P(class | defect) (members.combine_gates). `class1`..`class4`: one single-output segmenter
    per class, trained on the images holding that class (classes=[c], clean_keep=0) and validated, like every
    model here, on all of its held-out fold's images. The seed set its per-class area and probability thresholds
    by hand from plots; `tune` chooses them per class (min area, gate) on out-of-fold data. The seed names no
    architecture: EfficientNet-B0 classifiers and B0 U-Nets at 128x800 here.
    """
    data = dict(image_height=128, image_width=800)
    train = dict(epochs=20, learning_rate=1e-3, reference_batch=16)

    def classifier(heads, clean_keep):
        return Config(name="seed000", tasks=("classify",), classify=ClassifyConfig(
            model=ClassifierModel(encoder="efficientnetb0", heads=heads),
            data=DataConfig(**data, batch_per_replica=16, clean_keep=clean_keep),
            train=TrainConfig(**train, loss={"bce": 1.0})))

    def segmenter(class_id):
        return Config(name="seed000", tasks=("segment",), segment=SegmentConfig(
            model=SegmenterModel(arch="unet", encoder="efficientnetb0", classes=(class_id,)),
            data=DataConfig(**data, batch_per_replica=16, clean_keep=0.0),
            train=TrainConfig(**train, loss={"bce": 1.0, "dice": 1.0})))

    return {"binary": classifier("binary", 1.0), "multilabel": classifier("multilabel", 0.0),
            **{f"class{c}": segmenter(c) for c in CLASS_IDS}}
