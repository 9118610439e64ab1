"""Keras model builders; know nothing of data or devices."""

from collections.abc import Sequence

from steel_tpu.keras_api import keras
from steel_tpu.models.classifier import build_classifier
from steel_tpu.models.sm import build_sm
from steel_tpu.models.unetpp import build_unet, build_unetpp



def _sm(family):
    """A builder of segmentation-models' `family` (an optional extra, imported only when one is built)."""

    def build(*, encoder, **options):
        return build_sm(arch=family, backbone=encoder, **options)

    return build


# What builds each segmenter architecture a config may name (config.choices.SEGMENTER_ARCHS, in its order).
BUILDERS = {"unetpp": build_unetpp, "unet": build_unet, "sm-unet": _sm("unet"), "sm-fpn": _sm("fpn"),
            "sm-linknet": _sm("linknet")}

__all__ = [
    "BUILDERS",
    "build_classifier",
    "build_segmenter",
    "build_sm",
    "build_unet",
    "build_unetpp",
    "set_batchnorm_momentum",
]


def build_segmenter(*, arch: str = "unetpp", encoder: str, input_shape: Sequence[int], **options) -> keras.Model:
    """Segmenter by arch name (BUILDERS); `encoder` is the backbone name for sm-* archs; options go to the builder."""
    if arch not in BUILDERS:
        raise ValueError(f"segmenter arch must be one of {tuple(BUILDERS)}, got {arch!r}")
    return BUILDERS[arch](encoder=encoder, input_shape=input_shape, **options)


def set_batchnorm_momentum(model: keras.Model, momentum: float) -> int:
    """Set the moving-average momentum of every BatchNormalization layer, nested models included; returns the count.

    keras.applications' 0.99 suits fine-tuning pretrained encoders; trained from scratch for a few hundred steps,
    the moving statistics lag the weights so far that inference-mode outputs are noise (measured: held-out AUC
    0.47 with moving statistics vs 0.95 with batch statistics after 100 steps at 0.99).
    """
    count = 0
    stack = list(model.layers)
    while stack:
        layer = stack.pop()
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = momentum
            count += 1
        stack.extend(getattr(layer, "layers", []))
    return count
