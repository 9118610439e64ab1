"""Dataclass configs, validated when built; the named presets (tiny, colab-tpu, full); `--set key=value` overrides."""

import copy
import dataclasses
import json
import math
from dataclasses import dataclass, field

from steel_tpu import choices, fields
from steel_tpu.fields import one_of, positive, require, stride_multiple, unit
from steel_tpu.constants import CLASS_IDS, HEIGHT, NUM_CLASSES, WIDTH

_TASKS = ("classify", "segment")  # tasks.NAMES, without importing TensorFlow here


@dataclass
class DataConfig:
    image_height: int = 128  # the model's input resolution; multiples of 32
    image_width: int = 800
    # Set one of the two. batch_per_replica (the presets): the global batch is it x the replicas, so a preset fits
    # any slice. batch_size: a fixed GLOBAL batch split over the replicas (what workdirs written before hold).
    batch_per_replica: int | None = 8
    batch_size: int | None = None
    shuffle_buffer: int = 256  # encoded records, not decoded images: host memory stays small
    oversample: dict = field(default_factory=dict)  # class id -> repeat factor for images with that class
    clean_keep: float = 1.0  # fraction of defect-free images kept each epoch
    # Share of every training batch taken from pseudo-labelled shards (`train --pseudo`): floor(share x the
    # per-replica batch) rows of each batch (pipeline.pseudo_rows). 0: none.
    pseudo_share: float = 0.0

    def __post_init__(self):
        fields.check(self)
        stride_multiple(self, "image_height", "image_width")
        positive(self, "batch_per_replica", "batch_size", "shuffle_buffer")
        require((self.batch_per_replica is None) != (self.batch_size is None),
                 f"batch_per_replica={self.batch_per_replica!r}, batch_size={self.batch_size!r}: set exactly one "
                 "(per replica: the global batch follows the slice; batch_size: a fixed global batch)")
        unit(self, "clean_keep")
        require(0.0 <= self.pseudo_share < 1.0, f"pseudo_share={self.pseudo_share!r}: must be in [0, 1) (0: off)")
        for class_id, factor in self.oversample.items():
            require(class_id in CLASS_IDS and isinstance(factor, int) and factor >= 1,
                     f"oversample={self.oversample!r}: keys must be class ids {CLASS_IDS}, factors integers >= 1")


@dataclass
class ModelConfig:
    arch: str = "unetpp"  # segmenter: unetpp | unet | sm-unet | sm-fpn | sm-linknet; ignored by the classifier
    encoder: str = "efficientnetb0"  # sm-* archs: a segmentation-models backbone (choices.SM_BACKBONES)
    decoder_filters: tuple = (256, 128, 64, 32, 16)
    deep_supervision: bool = False
    # segmenter: sigmoid (a probability per class) | softmax (background + the classes, background first; its task
    # trains on one-hot targets and hands the class channels on, so OOF, tune and predict are unchanged)
    head: str = "sigmoid"
    heads: str = "binary"  # classifier: binary | multilabel | both
    dropout: float = 0.3
    weights: str | None = "imagenet"
    allow_random_weights: bool = True  # offline fallback to random init; set False on a real TPU run
    bn_momentum: float | None = None  # None keeps the builders' 0.99; ~0.9 when training from scratch briefly
    # The defect classes the model is about: a segmenter predicts only these (seed 000's one segmenter per class:
    # classes=[2]), and sampling counts an image as a defect image only for these (oversample, clean_keep).
    classes: tuple = CLASS_IDS

    def __post_init__(self):
        fields.check(self)
        self.classes = tuple(self.classes)
        require(len(self.classes) > 0 and all(c in CLASS_IDS for c in self.classes)
                and list(self.classes) == sorted(set(self.classes)),
                f"classes={list(self.classes)!r}: must be distinct class ids from {list(CLASS_IDS)}, in order")
        one_of("arch", self.arch, choices.SEGMENTER_ARCHS)
        one_of("encoder", self.encoder, choices.encoders_for(self.arch))
        one_of("head", self.head, choices.SEGMENTER_HEADS)
        one_of("heads", self.heads, choices.CLASSIFIER_HEADS)
        one_of("weights", self.weights, choices.WEIGHTS)
        require(self.weights is None or self.encoder not in choices.RANDOM_INIT_ENCODERS,
                f"encoder={self.encoder!r} has no pretrained weights: set model.weights=None (random init)")
        require(len(self.decoder_filters) == 5 and all(isinstance(n, int) and n > 0 for n in self.decoder_filters),
                 f"decoder_filters={self.decoder_filters!r}: must be 5 positive integers (strides 16..1)")
        require(0.0 <= self.dropout < 1.0, f"dropout={self.dropout!r}: must be in [0, 1)")
        require(self.bn_momentum is None or 0.0 < self.bn_momentum < 1.0,
                 f"bn_momentum={self.bn_momentum!r}: must be in (0, 1) or None")


@dataclass(frozen=True)
class AugmentConfig:
    """What augment.augment_batch does; all magnitudes are half-widths of uniform ranges."""

    crop_height: int | None = None  # None: no crop (full input height)
    crop_width: int | None = None
    hflip: bool = True
    vflip: bool = True
    brightness: float = 0.1  # max additive delta, in [0, 1] units of full scale
    contrast: float = 0.1  # factor in [1 - c, 1 + c] around each image's mean
    gamma: float = 0.1  # exponent in [1 - g, 1 + g]
    cutout: int = 0  # number of zeroed boxes per image; 0 = off
    cutout_size: tuple[int, int] = (32, 32)  # (height, width) of each box
    label_from_crop: bool = True  # classifier labels from the augmented (cropped) mask
    # Probability that an image with a defect is cropped around one of its defect pixels (0: uniform crops).
    defect_crop_prob: float = 0.0
    # Relative chance of each class being the one the crop centres on, among the classes the image has.
    defect_crop_weights: tuple = (1.0,) * NUM_CLASSES

    def __post_init__(self):
        fields.check(self)
        stride_multiple(self, "crop_height", "crop_width")
        unit(self, "brightness", "contrast")
        require(0.0 <= self.gamma < 1.0, f"gamma={self.gamma!r}: must be in [0, 1) (the exponent must stay > 0)")
        require(self.cutout >= 0, f"cutout={self.cutout!r}: must be >= 0")
        require(min(self.cutout_size) > 0, f"cutout_size={self.cutout_size!r}: must be two positive ints (h, w)")
        unit(self, "defect_crop_prob")
        require(len(self.defect_crop_weights) == NUM_CLASSES
                and all(isinstance(w, (int, float)) and not isinstance(w, bool) and w > 0
                        for w in self.defect_crop_weights),
                f"defect_crop_weights={self.defect_crop_weights!r}: must be {NUM_CLASSES} numbers > 0")
        object.__setattr__(self, "defect_crop_weights", tuple(float(w) for w in self.defect_crop_weights))


def _positive_number(w):
    return isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w) and w > 0


@dataclass
class TrainConfig:
    epochs: int = 10
    steps_per_epoch: int | None = None  # None: one pass over the (re)sampled training folds
    learning_rate: float = 1e-3  # at a global batch of reference_batch (resolve.py scales it to the slice's)
    # The global batch learning_rate and steps_per_execution were chosen for; None: both used as given.
    reference_batch: int | None = None
    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.01  # cosine decay ends at learning_rate * min_lr_ratio
    loss: dict = field(default_factory=lambda: {"bce": 0.75, "dice": 0.25})
    # Per-class BCE positive weights, or "auto": from the training folds' class frequencies (losses.auto_pos_weight).
    pos_weight: tuple | str | None = None
    # Per-class cce weights, background first (NUM_CLASSES + 1 numbers); None: all 1.
    class_weights: tuple | None = None
    label_smoothing: float = 0.0
    steps_per_execution: int = 1  # >1 keeps a TPU busy between host round trips
    # None: XLA everywhere but the CPU (distribute.use_xla says why). Tests set True: XLA on CPU is the cheapest
    # check that a step compiles for TPU.
    jit_compile: bool | None = None
    eval_threshold: float = 0.5  # pixel / label threshold for validation metrics
    # Exponential moving average of the weights (e.g. 0.99), updated every step: validation, OOF, the kept best
    # weights and export use the average (averaging.WeightAverage). None: the weights as trained.
    ema_decay: float | None = None

    def __post_init__(self):
        fields.check(self)
        positive(self, "epochs", "steps_per_epoch", "learning_rate", "steps_per_execution", "reference_batch")
        require(self.warmup_epochs >= 0, f"warmup_epochs={self.warmup_epochs!r}: must be >= 0")
        unit(self, "min_lr_ratio", "label_smoothing", "eval_threshold")
        require(self.loss and set(self.loss) <= set(choices.LOSS_TERMS)
                 and all(_positive_number(w) for w in self.loss.values()),
                 f"loss={self.loss!r}: must map terms from {', '.join(choices.LOSS_TERMS)} to finite weights > 0")
        require(self.ema_decay is None or (_positive_number(self.ema_decay) and self.ema_decay < 1.0),
                 f"ema_decay={self.ema_decay!r}: must be in (0, 1) or None")
        require(self.pos_weight in (None, "auto") or (
                    not isinstance(self.pos_weight, str) and len(self.pos_weight) == NUM_CLASSES
                    and all(map(_positive_number, self.pos_weight))),
                 f"pos_weight={self.pos_weight!r}: must be None, \"auto\" or {NUM_CLASSES} finite numbers > 0")
        require(self.class_weights is None or (len(self.class_weights) == NUM_CLASSES + 1
                                               and all(map(_positive_number, self.class_weights))),
                f"class_weights={self.class_weights!r}: must be None or {NUM_CLASSES + 1} finite numbers > 0 "
                "(background first)")
        require(self.class_weights is None or "cce" in self.loss,
                f"class_weights={self.class_weights!r}: weights the cce loss term, which loss={self.loss!r} lacks")


@dataclass
class TaskConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self):
        fields.check(self)
        for side, size in (("height", self.data.image_height), ("width", self.data.image_width)):
            crop = getattr(self.augment, f"crop_{side}")
            require(crop is None or crop <= size, f"augment.crop_{side}={crop}: larger than data.image_{side}={size}")


@dataclass
class Config:
    name: str = "custom"
    seed: int = 0
    folds: tuple = (0, 1, 2, 3, 4)
    # auto: a TPU when the host shows one (stopping if it cannot be reached), else local GPUs, else the CPU;
    # tpu: a TPU or stop (the TPU presets); gpu | cpu: that, explicitly (a TPU preset run elsewhere on purpose).
    device: str = "auto"
    tpu: str | None = None  # None: detect; "local" on Colab / TPU VMs; a name or grpc:// address otherwise
    gpu_float16: bool = False
    oof_scale: int = 4  # out-of-fold probability maps are stored at full resolution / oof_scale
    # The models this workdir trains: seed 000's classifiers and per-class segmenters are workdirs of one task
    # each, ensembled (a workdir without a segmenter only gates).
    tasks: tuple = _TASKS
    classify: TaskConfig = field(default_factory=TaskConfig)
    segment: TaskConfig = field(default_factory=TaskConfig)

    def __post_init__(self):
        fields.check(self)
        self.tasks = tuple(self.tasks)
        require(len(self.tasks) > 0 and set(self.tasks) <= set(_TASKS) and len(set(self.tasks)) == len(self.tasks),
                f"tasks={list(self.tasks)!r}: must be classify, segment or both, each once")
        self.tasks = tuple(t for t in _TASKS if t in self.tasks)
        check_folds(self.folds, name="folds")
        require(self.seed >= 0, f"seed={self.seed!r}: must be >= 0 (as --seed is)")
        one_of("device", self.device, choices.DEVICES)
        require(self.oof_scale >= 1 and HEIGHT % self.oof_scale == 0 and WIDTH % self.oof_scale == 0,
                 f"oof_scale={self.oof_scale}: must divide {HEIGHT} and {WIDTH}")
        # The classifier builds on the keras.applications encoders whatever its (ignored) arch says.
        require(self.classify.model.encoder in choices.ENCODERS,
                 f"classify.model.encoder={self.classify.model.encoder!r}: choose one of {', '.join(choices.ENCODERS)}")
        require(self.classify.model.classes == CLASS_IDS,
                f"classify.model.classes={list(self.classify.model.classes)!r}: a classifier gates every class "
                f"(a per-class model is a segmenter: segment.model.classes)")
        require(self.classify.model.head == "sigmoid",
                f"classify.model.head={self.classify.model.head!r}: the softmax head is the segmenter's "
                "(segment.model.head); the classifier's outputs are chosen by classify.model.heads")
        for task in _TASKS:
            tcfg = getattr(self, task)
            head, usable = tcfg.model.head, choices.HEAD_LOSS_TERMS[tcfg.model.head]
            wrong = sorted(set(tcfg.train.loss) - set(usable))
            require(not wrong, f"{task}.train.loss={tcfg.train.loss!r}: model.head={head} trains with "
                    f"{', '.join(usable)} only; {' and '.join(wrong)} need{'s' * (len(wrong) == 1)} model.head="
                    f"{'softmax' if head == 'sigmoid' else 'sigmoid'}")
            require(head == "sigmoid" or (tcfg.train.pos_weight is None and tcfg.train.label_smoothing == 0),
                    f"{task}.train: pos_weight={tcfg.train.pos_weight!r}, label_smoothing="
                    f"{tcfg.train.label_smoothing!r}: bce options, and model.head=softmax trains without bce "
                    "(class_weights weight its cce)")


def check_folds(folds, *, name="--folds"):
    """Raise unless `folds` is a non-empty sequence of distinct non-negative ints."""
    require(len(folds) > 0 and all(isinstance(f, int) and not isinstance(f, bool) and f >= 0 for f in folds),
             f"{name}={list(folds)}: must be non-negative integers")
    duplicates = sorted({f for f in folds if list(folds).count(f) > 1})
    require(not duplicates, f"{name}={list(folds)}: fold(s) {duplicates} given twice")


def _task(*, model=None, data=None, augment=None, train=None):
    return TaskConfig(
        model=model or ModelConfig(),
        data=data or DataConfig(),
        augment=augment or AugmentConfig(),
        train=train or TrainConfig(),
    )


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
        classify=_task(
            model=ModelConfig(encoder="plaincnn", heads="multilabel", **weights),
            data=DataConfig(**data, oversample={1: 3, 2: 4, 4: 3}, clean_keep=0.6),
            train=TrainConfig(epochs=16, learning_rate=2e-3, reference_batch=8, warmup_epochs=0.5, loss={"bce": 1.0}),
        ),
        segment=_task(
            model=ModelConfig(arch="unetpp", encoder="plaincnn", decoder_filters=(64, 32, 16, 16, 8), **weights),
            data=DataConfig(**data, oversample={1: 4, 2: 6, 4: 4}, clean_keep=0.3),
            augment=AugmentConfig(crop_height=64, crop_width=192),
            train=TrainConfig(epochs=30, learning_rate=2e-3, reference_batch=8, warmup_epochs=0.5,
                              loss={"bce": 0.5, "dice": 0.5}),
        ),
    )


def colab_tpu():
    """steel-tpu train --shards gs://BUCKET/shards --workdir gs://BUCKET/work --config colab-tpu

    Any TPU slice: Colab's v5e-1 (1 replica) and v2-8, Cloud v3-8 / v4-8 / v5e-8 (8) and larger. B0 classifier and
    B0 UNet++ at 256x800, trained on 256x512 crops in bfloat16, ImageNet weights required. Batches are per replica
    (sized for a v2 core's 8 GiB, the smallest HBM of these); learning rates and steps per execution were set for
    8 replicas (reference_batch) and follow the slice (resolve.py). Elsewhere on purpose: --set device=gpu|cpu.
    """
    return Config(
        name="colab-tpu",
        device="tpu",
        classify=_task(
            model=ModelConfig(encoder="efficientnetb0", allow_random_weights=False),
            data=DataConfig(image_height=256, image_width=800, batch_per_replica=16, shuffle_buffer=2048),
            train=TrainConfig(epochs=15, learning_rate=1e-3, reference_batch=128, steps_per_execution=8,
                              label_smoothing=0.05, loss={"bce": 1.0}),
        ),
        segment=_task(
            model=ModelConfig(arch="unetpp", encoder="efficientnetb0", allow_random_weights=False),
            data=DataConfig(image_height=256, image_width=1600, batch_per_replica=8, shuffle_buffer=2048,
                            oversample={1: 2, 2: 4, 4: 2}, clean_keep=0.2),
            augment=AugmentConfig(crop_height=256, crop_width=512),
            # 8 steps of 64 images a host call on 8 replicas; 64 steps of 8 on one chip (the same images a call).
            train=TrainConfig(epochs=30, learning_rate=1e-3, reference_batch=64, steps_per_execution=8),
        ),
    )


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


# The seed write-ups (../shared/seeds, README "Seed systems as presets") as presets: what each trained, in this tool's
# options (`tasks`: the models the seed had); what differs from the seed is said in each docstring.


def seed001():
    """steel-tpu train --shards S --workdir W --config seed001

    Seed 001: a U-Net with a ResNet34 encoder (segmentation-models, the [sm] extra), one sigmoid per class, BCE +
    Dice, 128x800 inputs, no classifier. Its hand-set rule "a mask under 250 px at 128x800 (1,000 at full size) is
    empty" is what `steel-tpu tune` chooses per class here (min area), on out-of-fold data.
    """
    return Config(
        name="seed001",
        tasks=("segment",),
        segment=_task(
            model=ModelConfig(arch="sm-unet", encoder="resnet34"),
            data=DataConfig(image_height=128, image_width=800, batch_per_replica=8),
            train=TrainConfig(epochs=30, learning_rate=1e-3, reference_batch=8, loss={"bce": 1.0, "dice": 1.0}),
        ),
    )


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
        segment=_task(
            model=ModelConfig(arch="sm-unet", encoder="resnet34", head="softmax"),
            data=DataConfig(image_height=128, image_width=800, batch_per_replica=8),
            train=TrainConfig(epochs=30, learning_rate=1e-3, reference_batch=8, loss={"cce": 1.0, "dice": 1.0},
                              class_weights=(0.5, 2.0, 4.0, 1.0, 2.0)),
        ),
    )


def seed003():
    """steel-tpu train --shards S --workdir W --config seed003

    Seed 003: U-Net + ResNet (ResNet34 here), BCE + Dice, with the two improvements its slides list done: flips and
    photometric augmentation, and "a pipeline to reject defect-free images" — a binary classifier gates each image
    (`tune` chooses the gate), and the segmenter trains on defect images only (clean_keep=0).
    """
    return Config(
        name="seed003",
        classify=_task(
            model=ModelConfig(encoder="efficientnetb0", heads="binary"),
            data=DataConfig(image_height=128, image_width=800, batch_per_replica=16),
            train=TrainConfig(epochs=15, learning_rate=1e-3, reference_batch=16, loss={"bce": 1.0}),
        ),
        segment=_task(
            model=ModelConfig(arch="sm-unet", encoder="resnet34"),
            data=DataConfig(image_height=128, image_width=800, batch_per_replica=8, clean_keep=0.0),
            train=TrainConfig(epochs=30, learning_rate=1e-3, reference_batch=8, loss={"bce": 1.0, "dice": 1.0}),
        ),
    )


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
        classify=_task(
            model=ModelConfig(encoder="efficientnetb0", heads="binary", allow_random_weights=False),
            data=DataConfig(image_height=128, image_width=800, batch_per_replica=16, shuffle_buffer=2048),
            train=TrainConfig(epochs=20, learning_rate=1e-3, reference_batch=128, steps_per_execution=8,
                              loss={"bce": 1.0}),
        ),
        segment=_task(
            model=ModelConfig(arch="unetpp", encoder="efficientnetb0", allow_random_weights=False),
            data=DataConfig(image_height=128, image_width=800, batch_per_replica=16, shuffle_buffer=2048,
                            oversample={2: 4, 1: 3, 4: 2}),
            train=TrainConfig(epochs=30, learning_rate=1e-3, reference_batch=128, steps_per_execution=8),
        ),
    )


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
        return Config(name="seed000", tasks=("classify",), classify=_task(
            model=ModelConfig(encoder="efficientnetb0", heads=heads),
            data=DataConfig(**data, batch_per_replica=16, clean_keep=clean_keep),
            train=TrainConfig(**train, loss={"bce": 1.0})))

    def segmenter(class_id):
        return Config(name="seed000", tasks=("segment",), segment=_task(
            model=ModelConfig(arch="unet", encoder="efficientnetb0", classes=(class_id,)),
            data=DataConfig(**data, batch_per_replica=16, clean_keep=0.0),
            train=TrainConfig(**train, loss={"bce": 1.0, "dice": 1.0})))

    return {"binary": classifier("binary", 1.0), "multilabel": classifier("multilabel", 0.0),
            **{f"class{c}": segmenter(c) for c in CLASS_IDS}}


PRESETS = {"tiny": tiny, "colab-tpu": colab_tpu, "full": full,
           "seed001": seed001, "seed002": seed002, "seed003": seed003, "seed004": seed004}
# Presets of several models trained as member workdirs of one system folder (system.py): {member: Config}.
SYSTEMS = {"seed000": seed000}

# Any preset at a size a CPU trains in seconds (tests; a first look at a preset on a laptop): small inputs, one
# step, no pretrained weights, the CPU. `steel-tpu train --config NAME --set KEY=VALUE ...` with these does the same.
# No reference batch: resolve.py would otherwise scale one step per execution up to the preset's images per call
# (seed 004: 32 steps of 4 images).
TINY_SCALE = tuple(f"{task}.{key}" for task in _TASKS for key in (
    "data.image_height=64", "data.image_width=320", "data.batch_per_replica=4", "train.epochs=1",
    "train.steps_per_epoch=1", "train.steps_per_execution=1", "train.reference_batch=None",
    "model.weights=None")) + ("device=cpu",)


def check_presets(names, *, name="--configs"):
    """`names` as a tuple, refused unless two or more distinct presets (what `steel-tpu compare` trains)."""
    names = tuple(names)
    require(len(names) >= 2, f"{name}: give two or more comma-separated presets to compare, e.g. seed001,seed004")
    unknown = [n for n in names if n not in PRESETS and n not in SYSTEMS]
    require(not unknown, f"{name}: unknown preset {unknown[0]!r}; choose from {', '.join([*PRESETS, *SYSTEMS])}"
            if unknown else "")
    twice = sorted({n for n in names if names.count(n) > 1})
    require(not twice, f"{name}: {', '.join(twice)} named twice; each preset is trained once, into OUT/<preset>")
    return names


def preset(name):
    if name in SYSTEMS:
        raise ValueError(f"config {name!r} is a system of member workdirs ({', '.join(SYSTEMS[name]())}): "
                         "`steel-tpu train --config` trains it, one member at a time")
    if name not in PRESETS:
        raise ValueError(f"unknown config {name!r}; choose from {', '.join([*PRESETS, *SYSTEMS])}")
    return PRESETS[name]()


def members_of(name, overrides=()):
    """{member: validated Config} of preset `name` with the `--set` overrides applied to each member; a plain
    preset is one member, None (its workdir is the one given)."""
    if name in SYSTEMS:
        return {member: apply_overrides(cfg, overrides) for member, cfg in SYSTEMS[name]().items()}
    return {None: apply_overrides(preset(name), overrides)}


def _set(values, cls, path, text, *, item):
    """Put the parsed `text` at `path` of the dict form `values` of dataclass `cls`."""
    head, rest = path[0], path[1:]
    if head not in {f.name for f in dataclasses.fields(cls)}:
        raise ValueError(f"--set {item}: no config key {head!r} in {cls.__name__}")
    hint = fields.hint(cls, head)
    if rest:
        if not dataclasses.is_dataclass(hint):
            raise ValueError(f"--set {item}: {head!r} has no keys below it")
        _set(values[head], hint, rest, text, item=item)
    elif dataclasses.is_dataclass(hint):
        raise ValueError(f"--set {item}: {head!r} is a section; set one of its keys")
    else:
        values[head] = fields.parse(text, hint)


def apply_overrides(cfg, overrides):
    """A validated copy of `cfg` with `key.path=value` strings applied, e.g. `segment.train.epochs=5`.

    Validated once all are applied, so their order does not matter (arch and encoder change together)."""
    values, given = to_dict(cfg), set()
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep:
            raise ValueError(f"--set {item}: expected key=value")
        _set(values, Config, key.strip().split("."), text, item=item)
        given.add(key.strip())
    for task in _TASKS:
        # The two batch keys are alternatives: setting one (and not the other) replaces the preset's choice.
        for key, other in (("batch_size", "batch_per_replica"), ("batch_per_replica", "batch_size")):
            if f"{task}.data.{key}" in given and f"{task}.data.{other}" not in given \
                    and values[task]["data"][key] is not None:
                values[task]["data"][other] = None
    try:
        return from_dict(values)
    except ValueError as error:
        raise ValueError(f"--set {error}") from None


def to_dict(cfg):
    return dataclasses.asdict(cfg)


def to_json(cfg):
    return json.dumps(to_dict(cfg), indent=2, sort_keys=True)


def _build(cls, values, *, where):
    if not isinstance(values, dict):
        raise ValueError(f"{where or 'config'}: expected an object, got {values!r}")
    names = [f.name for f in dataclasses.fields(cls)]
    unknown, missing = sorted(set(values) - set(names)), [n for n in names if n not in values]
    if unknown or missing:
        raise ValueError(f"{where or 'config'}: " + "; ".join(
            part for part in (unknown and f"unknown keys {unknown}", missing and f"missing keys {missing}") if part))
    kwargs = {}
    for name in names:
        sub, value = fields.hint(cls, name), values[name]
        if dataclasses.is_dataclass(sub):
            value = _build(sub, value, where=f"{where}{name}.")
        elif name == "oversample" and isinstance(value, dict):
            value = {int(k) if str(k).isdigit() else k: n for k, n in value.items()}  # JSON keys are strings
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except ValueError as error:
        raise ValueError(f"{where}{error}") from None


# Keys added since config.json files were first written, one group per change, each with the values under which a
# file written before that change means what it meant. Per-replica batches: a fixed global batch, the learning rate
# as given, the device detected. The learning options: uniform crops, no weight average. The segmenter head:
# per-class sigmoids, unweighted losses. Pseudo-labels: none. Model subsets: both tasks, every class.
_ADDED = (
    {(): {"device": "auto"},
     **{(task, "data"): {"batch_per_replica": None} for task in _TASKS},
     **{(task, "train"): {"reference_batch": None} for task in _TASKS}},
    {**{(task, "augment"): {"defect_crop_prob": 0.0, "defect_crop_weights": [1.0] * NUM_CLASSES} for task in _TASKS},
     **{(task, "train"): {"ema_decay": None} for task in _TASKS}},
    {**{(task, "model"): {"head": "sigmoid"} for task in _TASKS},
     **{(task, "train"): {"class_weights": None} for task in _TASKS}},
    {(task, "data"): {"pseudo_share": 0.0} for task in _TASKS},
    {(): {"tasks": list(_TASKS)}, **{(task, "model"): {"classes": list(CLASS_IDS)} for task in _TASKS}},
)


def _section(values, path):
    for key in path:
        values = values.get(key) if isinstance(values, dict) else None
    return values if isinstance(values, dict) else None


def _upgrade(d):
    """`d` with each _ADDED group's keys filled in when it holds none of that group (a file from before it); a file
    holding only some keys of a group is left as is, so loading it is an error naming the missing ones."""
    d = copy.deepcopy(d)
    for added in _ADDED:
        sections = {path: _section(d, path) for path in added}
        if all(s is not None for s in sections.values()) and not any(
                key in sections[path] for path, keys in added.items() for key in keys):
            for path, keys in added.items():
                sections[path].update(keys)
    return d


def from_dict(d):
    """A validated Config from `to_dict` output (JSON turns tuples into lists and int keys into strings); unknown
    or missing keys are errors naming them. A config.json from before a change that added keys loads as it meant."""
    return _build(Config, _upgrade(d), where="")
