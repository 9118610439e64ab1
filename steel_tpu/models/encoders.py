"""Encoder backbones as keras Models mapping a 0..255 image to its skip features at strides 2/4/8/16/32."""

import dataclasses
from collections.abc import Callable, Sequence

from steel_tpu.config.choices import RANDOM_INIT_ENCODERS, WEIGHTS
from steel_tpu.keras_api import keras

STRIDES = (2, 4, 8, 16, 32)


@dataclasses.dataclass(frozen=True)
class EncoderFamily:
    """Constructors of one encoder family (keras.applications' signature) and its skip layers, one per STRIDES."""

    constructors: dict[str, Callable[..., keras.Model]]
    skips: tuple[str, ...]


# The same layer names hold in every EfficientNet size; the expand activations are the widest
# features at each resolution, before the stride-2 depthwise conv of the next stage.
EFFICIENTNET = EncoderFamily(
    constructors={f"efficientnetb{i}": getattr(keras.applications, f"EfficientNetB{i}") for i in range(8)},
    skips=(
        "block2a_expand_activation",
        "block3a_expand_activation",
        "block4a_expand_activation",
        "block6a_expand_activation",
        "top_activation",
    ),
)


def _plain_cnn(widths: Sequence[int]) -> Callable[..., keras.Model]:
    """A constructor in keras.applications' signature for a small residual CNN with `widths` channels per stage."""

    def construct(*, include_top: bool, weights: str | None, input_shape: Sequence[int]) -> keras.Model:
        del include_top, weights  # no top and no pretrained weights: build_encoder refused "imagenet" already
        images = keras.Input(tuple(input_shape))
        # Scaled like the EfficientNets' input (0..255 in), so one data pipeline feeds every encoder.
        x = keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="rescale")(images)
        for stage, width in enumerate(widths, start=1):
            # Each stage halves the resolution once, then one residual block: shallow enough to train from random
            # init in a few hundred CPU steps, which EfficientNet-B0 (~240 layers, SE, depthwise) rarely does.
            x = _conv_bn(x, width, strides=2, name=f"stage{stage}_down")
            shortcut = x
            x = _conv_bn(x, width, strides=1, name=f"stage{stage}_conv1")
            x = _conv_bn(x, width, strides=1, name=f"stage{stage}_conv2", activate=False)
            x = keras.layers.Add(name=f"stage{stage}_add")([shortcut, x])
            x = keras.layers.ReLU(name=f"stage{stage}_out")(x)
        return keras.Model(images, x)

    return construct


def _conv_bn(x, filters: int, *, strides: int, name: str, activate: bool = True):
    x = keras.layers.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False, name=name)(x)
    x = keras.layers.BatchNormalization(name=f"{name}_bn")(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x) if activate else x


PLAIN = EncoderFamily(
    constructors={"plaincnn": _plain_cnn((16, 32, 64, 96, 128))},
    skips=tuple(f"stage{stage}_out" for stage in range(1, len(STRIDES) + 1)),
)


FAMILIES = (EFFICIENTNET, PLAIN)


def encoder_names() -> tuple[str, ...]:
    """Every encoder name build_encoder accepts."""
    return tuple(name for family in FAMILIES for name in family.constructors)


def _family(name: str) -> EncoderFamily:
    for family in FAMILIES:
        if name in family.constructors:
            return family
    raise ValueError(f"unknown encoder {name!r}; choose one of {', '.join(encoder_names())}")


def check_input_shape(input_shape: Sequence[int]) -> None:
    """Raise unless input_shape is (H, W, C) with H and W multiples of the deepest stride (32) or None (any)."""
    if len(input_shape) != 3:
        raise ValueError(f"input_shape must be (height, width, channels), got {tuple(input_shape)}")
    height, width, _ = input_shape
    deepest = STRIDES[-1]
    if height is None or width is None:
        # Fully convolutional: one set of weights trains on crops and predicts on whole images.
        return
    if height % deepest or width % deepest:
        raise ValueError(
            f"input height and width must be multiples of {deepest} (decoder skips must align), got "
            f"{height}x{width}; e.g. {height - height % deepest or deepest}x{width - width % deepest or deepest}"
        )


def resolve_weights(
    requested: str | None, *, name: str, build: Callable[[str | None], keras.Model], allow_random: bool
) -> keras.Model:
    """Return build(requested); if the imagenet fetch fails, fall back to build(None) or raise.

    Called while building, so a run that cannot get its pretrained weights stops (or says so) before
    training starts rather than silently training from scratch.
    """
    if requested not in WEIGHTS:
        raise ValueError(f"weights must be one of {WEIGHTS} for {name}, got {requested!r}")
    if requested is None:
        return build(None)
    try:
        return build(requested)
    except Exception as error:
        # keras' get_file raises a plain Exception for URL failures (and OSError for broken transfers);
        # anything more specific is a real bug and propagates.
        if type(error) is not Exception and not isinstance(error, OSError):
            raise
        if not allow_random:
            raise RuntimeError(
                f"could not fetch {requested} weights for {name} ({error}); pass weights=None to train "
                "from random init, or make the weights reachable (network or keras cache ~/.keras/models)"
            ) from error
        print(f"steel_tpu: WARNING: could not fetch {requested} weights for {name} ({error}); using random init")
        return build(None)


def build_encoder(
    name: str, *, input_shape: Sequence[int], weights: str | None = None, allow_random: bool = True
) -> keras.Model:
    """Keras Model: image [B, H, W, C] in 0..255 -> list of 5 features at strides 2, 4, 8, 16, 32."""
    family = _family(name)
    constructor = family.constructors[name]
    if weights is not None and name in RANDOM_INIT_ENCODERS:
        raise ValueError(f"{name} has no pretrained weights: weights must be None (random init), got {weights!r}")

    def build(resolved: str | None) -> keras.Model:
        return constructor(include_top=False, weights=resolved, input_shape=tuple(input_shape))

    backbone = resolve_weights(weights, name=name, build=build, allow_random=allow_random)
    features = [backbone.get_layer(layer).output for layer in family.skips]
    return keras.Model(backbone.input, features, name=f"{name}_encoder")
