"""Encoder backbones as keras Models mapping a 0..255 image to its skip features at strides 2/4/8/16/32."""

import dataclasses
from collections.abc import Callable, Sequence

from steel_tpu.keras_api import keras

STRIDES = (2, 4, 8, 16, 32)
WEIGHT_CHOICES = (None, "imagenet")


@dataclasses.dataclass(frozen=True)
class EncoderFamily:
    """Constructors of one keras.applications family and its skip layers, one per entry of STRIDES."""

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

FAMILIES = (EFFICIENTNET,)


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
    if requested not in WEIGHT_CHOICES:
        raise ValueError(f"weights must be one of {WEIGHT_CHOICES} for {name}, got {requested!r}")
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

    def build(resolved: str | None) -> keras.Model:
        return constructor(include_top=False, weights=resolved, input_shape=tuple(input_shape))

    backbone = resolve_weights(weights, name=name, build=build, allow_random=allow_random)
    features = [backbone.get_layer(layer).output for layer in family.skips]
    return keras.Model(backbone.input, features, name=f"{name}_encoder")
