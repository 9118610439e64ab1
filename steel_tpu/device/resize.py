"""Exact area (box-average) resizing on the device in Keras ops: Keras' own "area" exists on TensorFlow only."""

import math

import numpy as np

from steel_tpu.data.decode import area_weights
from steel_tpu.keras_api import ops


def area(x, size):
    """float [B, H, W, C] -> [B, h, w, C] by exact box averaging (tf.image.resize's "area", up to rounding)."""
    return _along(_along(x, axis=2, size=size[1]), axis=1, size=size[0])


def _along(x, *, axis, size):
    # An n -> m resize repeats every p = n/g inputs, q = m/g outputs (g = gcd): one small [p, q] matrix product
    # per period, which the TPU's matrix unit does in one pass.
    n = x.shape[axis]
    if n == size:
        return x
    g = math.gcd(n, size)
    p, q = n // g, size // g
    shape = [-1 if d is None else d for d in x.shape]
    periods = ops.reshape(x, (*shape[:axis], g, p, *shape[axis + 1:]))
    weights = ops.convert_to_tensor(area_weights(p, q).astype(np.float32))
    out = ops.moveaxis(ops.tensordot(periods, weights, axes=[[axis + 1], [0]]), -1, axis + 1)
    return ops.reshape(out, (*shape[:axis], size, *shape[axis + 1:]))
