"""segmentation-models (qubvel) Unet / FPN / Linknet behind the steel_tpu builder interface (optional extra)."""

import importlib
import os
from collections.abc import Sequence
from types import ModuleType

import keras

from steel_tpu.constants import NUM_CLASSES
from steel_tpu.models.encoders import check_input_shape, resolve_weights

ARCHS = {"unet": "Unet", "fpn": "FPN", "linknet": "Linknet"}


def import_sm() -> ModuleType:
    """Import segmentation_models on the tf.keras framework, or say which extra installs it."""
    # Its default "keras" framework reaches for keras.utils.generic_utils, which Keras 3 no longer has;
    # under Keras 3 tf.keras is the same Keras, so this is the one framework that works.
    os.environ["SM_FRAMEWORK"] = "tf.keras"
    try:
        return importlib.import_module("segmentation_models")
    except ImportError as error:
        raise ImportError(
            "the sm-* architectures need segmentation-models: pip install steel_tpu[sm] "
            "(segmentation-models==1.0.1 with efficientnet==1.0.0)"
        ) from error


@keras.saving.register_keras_serializable(package="steel_tpu")
class SmPreprocess(keras.layers.Layer):
    """The backbone's own input preprocessing (sm.get_preprocessing) applied to 0..255 images in-graph."""

    def __init__(self, backbone: str, **kwargs):
        # float32 whatever the policy: ImageNet mean/std scaling of 0..255 values is where bfloat16 hurts.
        super().__init__(dtype="float32", **{k: v for k, v in kwargs.items() if k != "dtype"})
        self.backbone = backbone
        self._preprocess = import_sm().get_preprocessing(backbone)

    def call(self, images):
        return self._preprocess(images)

    def get_config(self):
        return {**super().get_config(), "backbone": self.backbone}


def build_sm(
    *,
    arch: str,
    backbone: str,
    input_shape: Sequence[int],
    num_classes: int = NUM_CLASSES,
    weights: str | None = None,
    allow_random: bool = True,
) -> keras.Model:
    """sm.Unet / sm.FPN / sm.Linknet: images [B, H, W, C] in 0..255 -> float32 probabilities [B, H, W, C']."""
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {tuple(ARCHS)}, got {arch!r}")
    check_input_shape(input_shape)
    sm = import_sm()
    backbones = sm.get_available_backbone_names()
    if backbone not in backbones:
        raise ValueError(f"unknown segmentation-models backbone {backbone!r}; choose one of {', '.join(backbones)}")

    def build(resolved: str | None) -> keras.Model:
        # Linear head: the sigmoid runs below in float32 so bfloat16 does not round the probabilities.
        return getattr(sm, ARCHS[arch])(
            backbone, input_shape=tuple(input_shape), classes=num_classes, activation="linear", encoder_weights=resolved
        )

    network = resolve_weights(weights, name=f"sm-{arch}/{backbone}", build=build, allow_random=allow_random)
    images = keras.Input(tuple(input_shape), name="images")
    logits = network(SmPreprocess(backbone, name="preprocess")(images))
    output = keras.layers.Activation("sigmoid", dtype="float32", name="masks")(logits)
    return keras.Model(images, output, name=f"sm_{arch}_{backbone}")
