"""The segmenter's final activation: a sigmoid per class, or a softmax over background + the classes, in float32."""

from steel_tpu.config.choices import SEGMENTER_HEADS as HEADS
from steel_tpu.keras_api import keras

# sigmoid: one independent probability per class (channels = classes). softmax: one distribution per pixel over
# background then the classes (channels = classes + 1, background first), as seed 002's residual U-Net.


def check_head(head: str) -> None:
    if head not in HEADS:
        raise ValueError(f"segmenter head must be one of {HEADS}, got {head!r}")


def channels(head: str, num_classes: int) -> int:
    """Output channels of a `head` segmenter of `num_classes` defect classes."""
    check_head(head)
    return num_classes + (head == "softmax")


def activate(logits, head: str, *, name: str):
    # float32 whatever the policy: bfloat16 would round probabilities near the pixel threshold tune searches.
    return keras.layers.Activation(head, dtype="float32", name=name)(logits)
