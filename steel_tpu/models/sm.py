"""segmentation-models (qubvel) Unet / FPN / Linknet behind the steel_tpu builder interface (optional extra)."""

import importlib
import os
from collections.abc import Sequence
from types import ModuleType

import tensorflow as tf

from steel_tpu.config.choices import SM_PREPROCESSING
from steel_tpu.constants import NUM_CLASSES
from steel_tpu.keras_api import keras
from steel_tpu.models import heads
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


# Each backbone's preprocessing is rebuilt here instead of calling sm.get_preprocessing: keras_applications caches
# its mean as a constant of the first graph that calls it, which breaks every later graph (tf.function, XLA).
PREPROCESSING = SM_PREPROCESSING
_TORCH_MEAN, _TORCH_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
_CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)


def preprocessing_mode(backbone: str) -> str:
    """The PREPROCESSING mode of a segmentation-models backbone."""
    for mode, backbones in PREPROCESSING.items():
        if backbone in backbones:
            return mode
    names = ", ".join(name for names in PREPROCESSING.values() for name in names)
    raise ValueError(f"unknown segmentation-models backbone {backbone!r}; choose one of {names}")


@keras.saving.register_keras_serializable(package="steel_tpu")
class SmPreprocess(keras.layers.Layer):
    """A backbone's input preprocessing (a PREPROCESSING mode) applied in-graph to 0..255 images."""

    def __init__(self, mode: str, **kwargs):
        if mode not in PREPROCESSING:
            raise ValueError(f"mode must be one of {tuple(PREPROCESSING)}, got {mode!r}")
        # float32 whatever the policy: ImageNet mean/std scaling of 0..255 values is where bfloat16 hurts.
        super().__init__(**{**kwargs, "dtype": "float32"})
        self.mode = mode

    def call(self, images):
        if self.mode == "torch":
            return (images / 255.0 - tf.constant(_TORCH_MEAN)) / tf.constant(_TORCH_STD)
        if self.mode == "tf":
            return images / 127.5 - 1.0
        if self.mode == "caffe":
            return tf.reverse(images, axis=[-1]) - tf.constant(_CAFFE_BGR_MEAN)
        return images

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


def build_sm(
    *,
    arch: str,
    backbone: str,
    input_shape: Sequence[int],
    num_classes: int = NUM_CLASSES,
    head: str = "sigmoid",
    weights: str | None = None,
    allow_random: bool = True,
) -> keras.Model:
    """sm.Unet / sm.FPN / sm.Linknet: images [B, H, W, C] in 0..255 -> float32 probabilities
    [B, H, W, heads.channels(head, num_classes)]."""
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {tuple(ARCHS)}, got {arch!r}")
    heads.check_head(head)
    check_input_shape(input_shape)
    mode = preprocessing_mode(backbone)
    sm = import_sm()

    def build(resolved: str | None) -> keras.Model:
        # Linear head: the activation runs below in float32 (a bfloat16 sigmoid keeps ~3 significant digits).
        return getattr(sm, ARCHS[arch])(backbone, input_shape=tuple(input_shape),
                                        classes=heads.channels(head, num_classes), activation="linear",
                                        encoder_weights=resolved)

    network = resolve_weights(weights, name=f"sm-{arch}/{backbone}", build=build, allow_random=allow_random)
    images = keras.Input(tuple(input_shape), name="images")
    logits = network(SmPreprocess(mode, name="preprocess")(images))
    output = heads.activate(logits, head, name="masks")
    return keras.Model(images, output, name=f"sm_{arch}_{backbone}")
