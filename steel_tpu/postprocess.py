"""Probability maps to masks: full-resolution uint8 maps on the device, thresholds and areas on the host.

Validation, out-of-fold predictions, tuning and scoring all go through these functions, so a threshold tuned on
out-of-fold predictions means the same thing when `predict` applies it.
"""

import numpy as np
import tensorflow as tf

from steel_tpu.constants import HEIGHT, WIDTH

QUANT = 255.0  # probabilities travel as uint8: a quarter of the device-to-host bytes of float32


def to_full_resolution(probs, *, height=HEIGHT, width=WIDTH):
    """[B, h, w, C] probabilities -> [B, height, width, C] uint8 (p * 255, rounded), in the graph."""
    full = tf.image.resize(tf.cast(probs, tf.float32), (height, width), method="bilinear")
    return tf.cast(tf.round(tf.clip_by_value(full, 0.0, 1.0) * QUANT), tf.uint8)


def binarize(quantized, thresholds):
    """uint8 probability maps [..., C] -> bool masks, with one threshold (in 0..1) per class or one for all."""
    levels = np.asarray(thresholds, dtype=np.float32) * QUANT
    return quantized.astype(np.float32) > levels


def downsample(quantized, *, scale):
    """Block-mean [N, H, W, C] uint8 maps by an integer `scale` (compact out-of-fold storage)."""
    n, h, w, c = quantized.shape
    if h % scale or w % scale:
        raise ValueError(f"scale {scale} does not divide the {h}x{w} maps")
    blocks = quantized.reshape(n, h // scale, scale, w // scale, scale, c).astype(np.float32)
    return np.round(blocks.mean(axis=(2, 4))).astype(np.uint8)
