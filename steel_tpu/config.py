"""Dataclass configs, the named presets (tiny, colab-tpu, full) and `--set key=value` overrides."""

import ast
import dataclasses
import json
from dataclasses import dataclass, field

from steel_tpu.augment import AugmentConfig


@dataclass
class DataConfig:
    image_height: int = 128  # the model's input resolution; multiples of 32
    image_width: int = 800
    batch_size: int = 8  # GLOBAL batch: split evenly across replicas
    shuffle_buffer: int = 256  # encoded records, not decoded images: host memory stays small
    oversample: dict = field(default_factory=dict)  # class id -> repeat factor for images with that class
    clean_keep: float = 1.0  # fraction of defect-free images kept each epoch


@dataclass
class ModelConfig:
    arch: str = "unetpp"  # segmenter: unetpp | unet | sm-unet | sm-fpn | sm-linknet; ignored by the classifier
    encoder: str = "efficientnetb0"
    decoder_filters: tuple = (256, 128, 64, 32, 16)
    deep_supervision: bool = False
    heads: str = "binary"  # classifier: binary | multilabel | both
    dropout: float = 0.3
    weights: str | None = "imagenet"
    allow_random_weights: bool = True  # offline fallback to random init; set False on a real TPU run
    bn_momentum: float | None = None  # None keeps the builders' 0.99; ~0.9 when training from scratch briefly


@dataclass
class TrainConfig:
    epochs: int = 10
    steps_per_epoch: int | None = None  # None: one pass over the (re)sampled training folds
    learning_rate: float = 1e-3
    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.01  # cosine decay ends at learning_rate * min_lr_ratio
    loss: dict = field(default_factory=lambda: {"bce": 0.75, "dice": 0.25})
    pos_weight: tuple | None = None  # per-class BCE positive weights
    label_smoothing: float = 0.0
    steps_per_execution: int = 1  # >1 keeps a TPU busy between host round trips
    # None: XLA everywhere but the CPU (distribute.use_xla says why). Tests set True: XLA on CPU is the cheapest
    # check that a step compiles for TPU.
    jit_compile: bool | None = None
    eval_threshold: float = 0.5  # pixel / label threshold for validation metrics


@dataclass
class TaskConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass
class Config:
    name: str = "custom"
    seed: int = 0
    folds: tuple = (0, 1, 2, 3, 4)
    tpu: str | None = None  # None: detect; "local" on Colab / TPU VMs; a name or grpc:// address otherwise
    gpu_float16: bool = False
    oof_scale: int = 4  # out-of-fold probability maps are stored at full resolution / oof_scale
    classify: TaskConfig = field(default_factory=TaskConfig)
    segment: TaskConfig = field(default_factory=TaskConfig)


def _task(*, model=None, data=None, augment=None, train=None):
    return TaskConfig(
        model=model or ModelConfig(),
        data=data or DataConfig(),
        augment=augment or AugmentConfig(),
        train=train or TrainConfig(),
    )


def tiny():
    """steel-tpu train --data demo_out/shards --workdir demo_out/work --config tiny --folds 0

    A few minutes on a laptop CPU: B0 encoders with thin decoders at 64x320, random init.
    """
    data = dict(image_height=64, image_width=320, batch_size=8)
    # Random init and a few hundred steps: BatchNorm's moving statistics must keep up with the weights.
    weights = dict(weights=None, bn_momentum=0.9)
    return Config(
        name="tiny",
        folds=(0,),
        # A few hundred steps from scratch see each rare class (1, 2, 4: 3-10% of images) only a few dozen
        # times: oversampled, with fewer clean images, so the models do not settle on "never a rare class"
        # (bench_train with the milder oversampling before: no class 1, 2 or 4 pixel predicted after 8 epochs).
        classify=_task(
            model=ModelConfig(encoder="efficientnetb0", heads="multilabel", **weights),
            data=DataConfig(**data, oversample={1: 3, 2: 4, 4: 3}, clean_keep=0.6),
            train=TrainConfig(epochs=8, learning_rate=2e-3, warmup_epochs=0.5, loss={"bce": 1.0}),
        ),
        segment=_task(
            model=ModelConfig(arch="unetpp", encoder="efficientnetb0", decoder_filters=(64, 32, 16, 16, 8), **weights),
            data=DataConfig(**data, oversample={1: 4, 2: 6, 4: 4}, clean_keep=0.3),
            augment=AugmentConfig(crop_height=64, crop_width=192),
            train=TrainConfig(epochs=8, learning_rate=2e-3, warmup_epochs=0.5, loss={"bce": 0.5, "dice": 0.5}),
        ),
    )


def colab_tpu():
    """steel-tpu train --data gs://BUCKET/shards --workdir gs://BUCKET/work --config colab-tpu

    One Colab / Cloud TPU v2-8, v3-8 or v5e-8 (8 replicas): B0 classifier and B0 UNet++ at 256x800,
    trained on 256x512 crops in bfloat16, ImageNet weights required.
    """
    return Config(
        name="colab-tpu",
        classify=_task(
            model=ModelConfig(encoder="efficientnetb0", allow_random_weights=False),
            data=DataConfig(image_height=256, image_width=800, batch_size=128, shuffle_buffer=2048),
            train=TrainConfig(epochs=15, learning_rate=1e-3, steps_per_execution=32, label_smoothing=0.05,
                              loss={"bce": 1.0}),
        ),
        segment=_task(
            model=ModelConfig(arch="unetpp", encoder="efficientnetb0", allow_random_weights=False),
            data=DataConfig(image_height=256, image_width=1600, batch_size=64, shuffle_buffer=2048,
                            oversample={1: 2, 2: 4, 4: 2}, clean_keep=0.2),
            augment=AugmentConfig(crop_height=256, crop_width=512),
            train=TrainConfig(epochs=30, learning_rate=1e-3, steps_per_execution=32),
        ),
    )


def full():
    """steel-tpu train --data gs://BUCKET/shards --workdir gs://BUCKET/work-b4 --config full --set segment.model.encoder=efficientnetb4

    The seed TPU solution's scale: 5 folds at full resolution; run once per encoder B0..B5 into separate
    workdirs and ensemble them at predict time.
    """
    cfg = colab_tpu()
    cfg.name = "full"
    cfg.classify.train.epochs = 25
    cfg.segment.train.epochs = 50
    cfg.classify.data.image_width = 1600
    return cfg


PRESETS = {"tiny": tiny, "colab-tpu": colab_tpu, "full": full}


def preset(name):
    if name not in PRESETS:
        raise ValueError(f"unknown config {name!r}; choose from {', '.join(PRESETS)}")
    return PRESETS[name]()


def _parse_value(text):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a bare word such as efficientnetb3 is a string


def _replace(node, path, value, *, item):
    head, rest = path[0], path[1:]
    if not dataclasses.is_dataclass(node) or head not in {f.name for f in dataclasses.fields(node)}:
        raise ValueError(f"--set {item!r}: no config key {head!r} here")
    current = getattr(node, head)
    if rest:
        value = _replace(current, rest, value, item=item)
    elif isinstance(current, tuple) and isinstance(value, list):
        value = tuple(value)
    # replace() re-runs each section's own validation (AugmentConfig checks its crop sizes, for example).
    return dataclasses.replace(node, **{head: value})


def apply_overrides(cfg, overrides):
    """A copy of `cfg` with `key.path=value` strings applied, e.g. `segment.train.epochs=5`."""
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep:
            raise ValueError(f"--set {item!r}: expected key=value")
        cfg = _replace(cfg, key.strip().split("."), _parse_value(text.strip()), item=item)
    return cfg


def to_dict(cfg):
    return dataclasses.asdict(cfg)


def to_json(cfg):
    return json.dumps(to_dict(cfg), indent=2, sort_keys=True)


def from_dict(d):
    """Rebuild a Config from `to_dict` output (JSON turns tuples into lists and int keys into strings)."""

    def build(cls, values):
        kwargs = {}
        for f in dataclasses.fields(cls):
            if f.name not in values:
                continue
            v = values[f.name]
            sub = f.default_factory if f.default_factory is not dataclasses.MISSING else None
            if sub is not None and dataclasses.is_dataclass(sub):
                v = build(sub, v)
            elif isinstance(v, list):
                v = tuple(v)
            elif f.name == "oversample":
                v = {int(k): int(n) for k, n in v.items()}
            kwargs[f.name] = v
        return cls(**kwargs)

    return build(Config, d)
