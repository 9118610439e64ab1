"""The config's dataclasses, validated when built: shared data, augment and train sections, a classifier config and a
segmenter config, and the run-wide Config holding them. Importable without TensorFlow."""

import math
from dataclasses import dataclass, field

from steel_tpu.config import choices, fields
from steel_tpu.config.fields import one_of, positive, require, stride_multiple, unit
from steel_tpu.constants import CLASS_IDS, HEIGHT, NUM_CLASSES, WIDTH

TASKS = ("classify", "segment")  # tasks.NAMES, without importing TensorFlow here


@dataclass
class DataConfig:
    image_height: int = 128  # the model's input height: images are decoded to it; a multiple of 32
    image_width: int = 800  # the model's input width, likewise
    # Set one of the two. batch_per_replica (the presets): the global batch is it x the replicas, so a preset fits
    # any slice. batch_size: a fixed GLOBAL batch split over the replicas (what workdirs written before hold).
    batch_per_replica: int | None = 8
    batch_size: int | None = None  # a fixed global batch (see batch_per_replica)
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
class EncoderConfig:
    """What both models build on: the encoder, its weights and its BatchNorm momentum."""

    encoder: str = "efficientnetb0"  # efficientnetb0..b7 or plaincnn (sm-* archs: a segmentation-models backbone)
    weights: str | None = "imagenet"  # imagenet: pretrained encoder weights, fetched when built; None: random init
    allow_random_weights: bool = True  # offline fallback to random init; set False on a real TPU run
    bn_momentum: float | None = None  # None keeps the builders' 0.99; ~0.9 when training from scratch briefly

    def _check_encoder(self, names):
        one_of("encoder", self.encoder, names)
        one_of("weights", self.weights, choices.WEIGHTS)
        require(self.weights is None or self.encoder not in choices.RANDOM_INIT_ENCODERS,
                f"encoder={self.encoder!r} has no pretrained weights: set model.weights=None (random init)")
        require(self.bn_momentum is None or 0.0 < self.bn_momentum < 1.0,
                f"bn_momentum={self.bn_momentum!r}: must be in (0, 1) or None")


@dataclass
class ClassifierModel(EncoderConfig):
    """The image-level classifier: an encoder (keras.applications' or plaincnn), pooled, dropout, sigmoid heads."""

    heads: str = "binary"  # binary (any defect) | multilabel (each class) | both (gates on the binary one)
    dropout: float = 0.3  # before the heads, in [0, 1)

    # A classifier gates every class: what sampling counts as a defect image is any class.
    classes = CLASS_IDS

    def __post_init__(self):
        fields.check(self)
        self._check_encoder(choices.ENCODERS)
        one_of("heads", self.heads, choices.CLASSIFIER_HEADS)
        require(0.0 <= self.dropout < 1.0, f"dropout={self.dropout!r}: must be in [0, 1)")


@dataclass
class SegmenterModel(EncoderConfig):
    """The segmenter: an architecture over an encoder, its decoder and its head, for some or all classes."""

    arch: str = "unetpp"  # unetpp | unet | sm-unet | sm-fpn | sm-linknet
    # encoder: for sm-* archs a segmentation-models backbone (choices.SM_BACKBONES)
    decoder_filters: tuple = (256, 128, 64, 32, 16)
    deep_supervision: bool = False  # UNet++: the mean of heads on X^{0,1..4} (the paper's "accurate mode")
    # sigmoid (a probability per class) | softmax (background + the classes, background first; its task trains on
    # one-hot targets and hands the class channels on, so OOF, tune and predict are unchanged)
    head: str = "sigmoid"
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
        self._check_encoder(choices.encoders_for(self.arch))
        one_of("head", self.head, choices.SEGMENTER_HEADS)
        require(len(self.decoder_filters) == 5 and all(isinstance(n, int) and n > 0 for n in self.decoder_filters),
                f"decoder_filters={self.decoder_filters!r}: must be 5 positive integers (strides 16..1)")


@dataclass(frozen=True)
class AugmentConfig:
    """What augment.augment_batch does; all magnitudes are half-widths of uniform ranges."""

    crop_height: int | None = None  # None: no crop (full input height)
    crop_width: int | None = None  # None: no crop (full input width)
    hflip: bool = True  # a random horizontal flip per example
    vflip: bool = True  # a random vertical flip per example
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
    epochs: int = 10  # passes over the (re)sampled training folds
    steps_per_epoch: int | None = None  # None: one pass over the (re)sampled training folds
    learning_rate: float = 1e-3  # at a global batch of reference_batch (resolve.py scales it to the slice's)
    # The global batch learning_rate and steps_per_execution were chosen for; None: both used as given.
    reference_batch: int | None = None
    warmup_epochs: float = 1.0  # linear warm-up from 1% of the learning rate, then cosine decay
    min_lr_ratio: float = 0.01  # cosine decay ends at learning_rate * min_lr_ratio
    # {term: weight} summed, each term one value per example: bce, cce, dice, batch_dice, focal, lovasz
    loss: dict = field(default_factory=lambda: {"bce": 0.75, "dice": 0.25})
    # Per-class BCE positive weights, or "auto": from the training folds' class frequencies (losses.auto_pos_weight).
    pos_weight: tuple | str | None = None
    # Per-class cce weights, background first (NUM_CLASSES + 1 numbers); None: all 1.
    class_weights: tuple | None = None
    label_smoothing: float = 0.0  # BCE targets pulled toward 0.5 by this much
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
class _TaskConfig:
    """What both task configs hold (the data, augment and train sections) and check: crops inside the input, and
    loss terms the head can train with."""

    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def _check_task(self, *, head):
        fields.check(self)
        for side, size in (("height", self.data.image_height), ("width", self.data.image_width)):
            crop = getattr(self.augment, f"crop_{side}")
            require(crop is None or crop <= size, f"augment.crop_{side}={crop}: larger than data.image_{side}={size}")
        usable = choices.HEAD_LOSS_TERMS[head]
        wrong = sorted(set(self.train.loss) - set(usable))
        require(not wrong, f"train.loss={self.train.loss!r}: model.head={head} trains with {', '.join(usable)} only; "
                f"{' and '.join(wrong)} need{'s' * (len(wrong) == 1)} model.head="
                f"{'softmax' if head == 'sigmoid' else 'sigmoid'}")
        require(head == "sigmoid" or (self.train.pos_weight is None and self.train.label_smoothing == 0),
                f"train: pos_weight={self.train.pos_weight!r}, label_smoothing={self.train.label_smoothing!r}: bce "
                "options, and model.head=softmax trains without bce (class_weights weight its cce)")


@dataclass
class ClassifyConfig(_TaskConfig):
    model: ClassifierModel = field(default_factory=ClassifierModel)

    def __post_init__(self):
        self._check_task(head="sigmoid")


@dataclass
class SegmentConfig(_TaskConfig):
    model: SegmenterModel = field(default_factory=SegmenterModel)

    def __post_init__(self):
        self._check_task(head=self.model.head)


@dataclass
class Config:
    name: str = "custom"  # the preset's name, recorded in the workdir
    seed: int = 0  # seeds the data order, augmentation and initialisation of every fold
    folds: tuple = (0, 1, 2, 3, 4)  # the folds `train` trains (each validated on itself, trained on the others)
    # auto: a TPU when the host shows one (stopping if it cannot be reached), else local GPUs, else the CPU;
    # tpu: a TPU or stop (the TPU presets); gpu | cpu: that, explicitly (a TPU preset run elsewhere on purpose).
    device: str = "auto"
    tpu: str | None = None  # None: detect; "local" on Colab / TPU VMs; a name or grpc:// address otherwise
    # auto: JAX on a TPU host whose TensorFlow cannot drive the TPU (Colab, Kaggle), else TensorFlow; KERAS_BACKEND,
    # when set, is the user's choice. tf | jax: that backend, whatever the host.
    backend: str = "auto"
    gpu_float16: bool = False  # mixed float16 on GPUs (tensor cores), with loss scaling
    oof_scale: int = 4  # out-of-fold probability maps are stored at full resolution / oof_scale
    # The models this workdir trains: seed 000's classifiers and per-class segmenters are workdirs of one task
    # each, ensembled (a workdir without a segmenter only gates).
    tasks: tuple = TASKS
    classify: ClassifyConfig = field(default_factory=ClassifyConfig)
    segment: SegmentConfig = field(default_factory=SegmentConfig)

    def __post_init__(self):
        fields.check(self)
        self.tasks = tuple(self.tasks)
        require(len(self.tasks) > 0 and set(self.tasks) <= set(TASKS) and len(set(self.tasks)) == len(self.tasks),
                f"tasks={list(self.tasks)!r}: must be classify, segment or both, each once")
        self.tasks = tuple(t for t in TASKS if t in self.tasks)
        check_folds(self.folds, name="folds")
        require(self.seed >= 0, f"seed={self.seed!r}: must be >= 0 (as --seed is)")
        one_of("device", self.device, choices.DEVICES)
        one_of("backend", self.backend, choices.BACKENDS)
        require(self.oof_scale >= 1 and HEIGHT % self.oof_scale == 0 and WIDTH % self.oof_scale == 0,
                 f"oof_scale={self.oof_scale}: must divide {HEIGHT} and {WIDTH}")


def check_folds(folds, *, name="--folds"):
    """Raise unless `folds` is a non-empty sequence of distinct non-negative ints."""
    require(len(folds) > 0 and all(isinstance(f, int) and not isinstance(f, bool) and f >= 0 for f in folds),
             f"{name}={list(folds)}: must be non-negative integers")
    duplicates = sorted({f for f in folds if list(folds).count(f) > 1})
    require(not duplicates, f"{name}={list(folds)}: fold(s) {duplicates} given twice")


