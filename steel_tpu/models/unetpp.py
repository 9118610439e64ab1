"""UNet++ (Zhou et al. 2018) and plain U-Net decoders over an encoder's 5 skip levels, float32 masks (heads.py).

Levels i = 0..4 are the encoder features at strides 2, 4, 8, 16, 32 (X^{i,0}). decoder_filters[k] is the
width of the decoder at stride 16 / 2^k: levels 3, 2, 1, 0, then one last block at full resolution
(stride 1, no skip) before the 1x1 head, so both decoders share the meaning of decoder_filters.
"""

# Annotations stay unevaluated: tf-keras (TF_USE_LEGACY_KERAS=1) has no public keras.KerasTensor.
from __future__ import annotations

from collections.abc import Sequence

from steel_tpu.constants import NUM_CLASSES
from steel_tpu.keras_api import keras, ops
from steel_tpu.models import heads
from steel_tpu.models.encoders import build_encoder, check_input_shape

DEFAULT_DECODER_FILTERS = (256, 128, 64, 32, 16)
_LEVELS = 5


def _conv_block(x: keras.KerasTensor, filters: int, *, name: str) -> keras.KerasTensor:
    for k in (1, 2):
        # No bias: BatchNormalization right after supplies the offset.
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv{k}")(x)
        x = keras.layers.BatchNormalization(name=f"{name}_bn{k}")(x)
        x = keras.layers.ReLU(name=f"{name}_relu{k}")(x)
    return x


@keras.saving.register_keras_serializable(package="steel_tpu")
class Upsample2x(keras.layers.Layer):
    """Nearest-neighbour 2x upsampling as a broadcast and a reshape, for any (even unknown) height and width.

    Not keras.layers.UpSampling2D: under tf-keras that is tf.image.resize, whose gradient
    (ResizeNearestNeighborGrad) has no XLA kernel, so a jit-compiled train step would not build. Keras ops, so the
    same layer traces under JAX (where every dimension is static) and TensorFlow (where height and width may not be).
    """

    def call(self, x):
        batch, height, width, channels = ops.shape(x)
        tiled = ops.broadcast_to(x[:, :, None, :, None, :], (batch, height, 2, width, 2, channels))
        return ops.reshape(tiled, (batch, 2 * height, 2 * width, channels))

    def compute_output_shape(self, input_shape):
        batch, height, width, channels = input_shape
        return (batch, None if height is None else 2 * height, None if width is None else 2 * width, channels)


def _up(x: keras.KerasTensor, *, name: str) -> keras.KerasTensor:
    return Upsample2x(name=name)(x)


def _mask_head(x: keras.KerasTensor, *, filters: int, num_classes: int, head: str, name: str) -> keras.KerasTensor:
    """Stride-2 decoder node -> full-resolution block -> 1x1 conv -> float32 sigmoid or softmax."""
    x = _conv_block(_up(x, name=f"{name}_up"), filters, name=f"{name}_block")
    # float32 logits: bfloat16 would round probabilities near the pixel threshold tune searches.
    logits = keras.layers.Conv2D(heads.channels(head, num_classes), 1, dtype="float32", name=f"{name}_logits")(x)
    return heads.activate(logits, head, name=name)


def _check_filters(decoder_filters: Sequence[int]) -> None:
    if len(decoder_filters) != _LEVELS:
        raise ValueError(f"decoder_filters needs {_LEVELS} widths (strides 16..1), got {tuple(decoder_filters)}")


def _encode(
    encoder: str, input_shape: Sequence[int], weights: str | None, allow_random: bool
) -> tuple[keras.KerasTensor, list[keras.KerasTensor]]:
    check_input_shape(input_shape)
    backbone = build_encoder(encoder, input_shape=input_shape, weights=weights, allow_random=allow_random)
    images = keras.Input(tuple(input_shape), name="images")
    return images, list(backbone(images))


def build_unetpp(
    *,
    encoder: str,
    input_shape: Sequence[int],
    num_classes: int = NUM_CLASSES,
    decoder_filters: Sequence[int] = DEFAULT_DECODER_FILTERS,
    deep_supervision: bool = False,
    head: str = "sigmoid",
    weights: str | None = None,
    allow_random: bool = True,
) -> keras.Model:
    """UNet++: images [B, H, W, C] in 0..255 -> float32 probabilities [B, H, W, heads.channels(head, num_classes)].

    Node X^{i,j} (j >= 1) = conv block over concat(X^{i,0}, ..., X^{i,j-1}, up(X^{i+1,j-1})).
    deep_supervision=True puts a full-resolution head on each of X^{0,1..4} and outputs the MEAN of the
    four probability maps (the paper's "accurate mode"): one output keeps the per-example loss and train
    step unchanged, and each head still gets its own gradient through the mean (a mean of softmax maps is still a
    distribution over the channels). The heads are the layers
    named "masks_x01".."masks_x04"; False uses only X^{0,4}. The output layer is "masks" either way.
    """
    _check_filters(decoder_filters)
    heads.check_head(head)
    images, features = _encode(encoder, input_shape, weights, allow_random)
    nodes = {(i, 0): x for i, x in enumerate(features)}
    for j in range(1, _LEVELS):
        for i in range(_LEVELS - j):
            inputs = [nodes[i, k] for k in range(j)] + [_up(nodes[i + 1, j - 1], name=f"x{i}{j}_up")]
            merged = keras.layers.Concatenate(name=f"x{i}{j}_concat")(inputs)
            nodes[i, j] = _conv_block(merged, decoder_filters[_LEVELS - 2 - i], name=f"x{i}{j}")
    options = dict(filters=decoder_filters[-1], num_classes=num_classes, head=head)
    if deep_supervision:
        maps = [_mask_head(nodes[0, j], **options, name=f"masks_x0{j}") for j in range(1, _LEVELS)]
        output = keras.layers.Average(dtype="float32", name="masks")(maps)
    else:
        output = _mask_head(nodes[0, _LEVELS - 1], **options, name="masks")
    return keras.Model(images, output, name=f"unetpp_{encoder}")


def build_unet(
    *,
    encoder: str,
    input_shape: Sequence[int],
    num_classes: int = NUM_CLASSES,
    decoder_filters: Sequence[int] = DEFAULT_DECODER_FILTERS,
    head: str = "sigmoid",
    weights: str | None = None,
    allow_random: bool = True,
) -> keras.Model:
    """Plain U-Net decoder on the same encoder: images in 0..255 -> float32 probabilities [B, H, W, C']."""
    _check_filters(decoder_filters)
    heads.check_head(head)
    images, features = _encode(encoder, input_shape, weights, allow_random)
    x = features[-1]
    for i in reversed(range(_LEVELS - 1)):
        merged = keras.layers.Concatenate(name=f"d{i}_concat")([_up(x, name=f"d{i}_up"), features[i]])
        x = _conv_block(merged, decoder_filters[_LEVELS - 2 - i], name=f"d{i}")
    output = _mask_head(x, filters=decoder_filters[-1], num_classes=num_classes, head=head, name="masks")
    return keras.Model(images, output, name=f"unet_{encoder}")
