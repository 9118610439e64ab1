"""Image-level defect classifier: encoder -> global average pooling -> dropout -> sigmoid head(s)."""

# Annotations stay unevaluated: tf-keras (TF_USE_LEGACY_KERAS=1) has no public keras.KerasTensor.
from __future__ import annotations

from collections.abc import Sequence

from steel_tpu.config.choices import CLASSIFIER_HEADS
from steel_tpu.constants import NUM_CLASSES
from steel_tpu.keras_api import keras
from steel_tpu.models.encoders import build_encoder

HEAD_UNITS = {"binary": 1, "multilabel": NUM_CLASSES}


def _head(features: keras.KerasTensor, *, name: str) -> keras.KerasTensor:
    # The head runs in float32 whatever the policy: it is tiny, and bfloat16 logits would round
    # probabilities near the label thresholds that tune searches.
    logits = keras.layers.Dense(HEAD_UNITS[name], dtype="float32", name=f"{name}_logits")(features)
    return keras.layers.Activation("sigmoid", dtype="float32", name=name)(logits)


def build_classifier(
    *,
    encoder: str = "efficientnetb0",
    input_shape: Sequence[int],
    heads: str = "binary",
    dropout: float = 0.3,
    weights: str | None = None,
    allow_random: bool = True,
) -> keras.Model:
    """Classifier on 0..255 images; heads "binary" -> [B, 1] (any defect), "multilabel" -> [B, 4],
    "both" -> {"binary": [B, 1], "multilabel": [B, 4]}; probabilities in float32."""
    if heads not in CLASSIFIER_HEADS:
        raise ValueError(f"heads must be one of {CLASSIFIER_HEADS}, got {heads!r}")
    backbone = build_encoder(encoder, input_shape=input_shape, weights=weights, allow_random=allow_random)
    images = keras.Input(tuple(input_shape), name="images")
    deepest = backbone(images)[-1]
    pooled = keras.layers.GlobalAveragePooling2D(name="pool")(deepest)
    pooled = keras.layers.Dropout(dropout, name="dropout")(pooled)
    if heads == "both":
        outputs = {name: _head(pooled, name=name) for name in HEAD_UNITS}
    else:
        outputs = _head(pooled, name=heads)
    return keras.Model(images, outputs, name=f"classifier_{encoder}_{heads}")
