"""Exponential moving average of a model's weights (train.ema_decay): what validation, OOF, the kept best weights
and export use, updated after every optimizer step and identical under any replica count and either backend."""

import contextlib

import numpy as np
import tensorflow as tf

from steel_tpu.keras_api import backend, ops


def averaged_weights(model):
    """The weights an average keeps, in model.weights order."""
    # Float weights only: BatchNorm's moving statistics are averaged with the kernels they normalise for (as timm's
    # ModelEmaV2 does with its buffers); integer state (seed generators, counters) is not a weight to average.
    return [w for w in model.weights if "float" in getattr(w.dtype, "name", str(w.dtype))]


def blend(shadow, weight, *, count, decay):
    """One update of one shadow s <- d s + (1 - d) w, d = min(decay, (1 + n) / (10 + n)) at update n (0-based), so
    the first updates follow the weights closely instead of averaging in the random initialisation (Keras ops)."""
    n = ops.cast(count, "float32")
    d = ops.minimum(ops.convert_to_tensor(decay, "float32"), (1.0 + n) / (10.0 + n))
    return d * shadow + (1.0 - d) * ops.cast(weight, "float32")


def _check_decay(decay):
    if not 0.0 < decay < 1.0:
        raise ValueError(f"ema_decay={decay!r}: must be in (0, 1)")
    return float(decay)


@contextlib.contextmanager
def _swapped_in(model, shadow):
    """`model` holds `shadow` (numpy arrays) inside the block and its own (training's) weights again after."""
    weights = averaged_weights(model)
    live = [np.asarray(w) for w in weights]
    try:
        for w, s in zip(weights, shadow):
            w.assign(np.asarray(s).astype(np.asarray(w).dtype))
        yield model
    finally:
        for w, value in zip(weights, live):
            w.assign(value)


def weight_average(model, *, decay):
    """The backend's average of `model`'s weights (under TensorFlow, build it inside the strategy's scope)."""
    return ArrayAverage(model, decay=decay) if backend() == "jax" else WeightAverage(model, decay=decay)


class WeightAverage(tf.Module):
    """The TensorFlow backend's average: shadow tf.Variables updated by update() in the replica context of a train
    step; it checkpoints (a resumed fold continues its average)."""

    def __init__(self, model, *, decay):
        super().__init__(name="weight_average")
        self.decay = _check_decay(decay)
        # ONLY_FIRST_REPLICA: every replica computes the same value from mirrored weights; the first one's is
        # written everywhere, without an all-reduce.
        kw = dict(trainable=False, synchronization=tf.VariableSynchronization.ON_WRITE,
                  aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        self.count = tf.Variable(0, dtype=tf.int64, **kw)
        self.shadow = [tf.Variable(np.asarray(w), dtype=tf.float32, **kw) for w in averaged_weights(model)]

    def update(self, model):
        """One averaging step from `model`'s current weights."""
        for s, w in zip(self.shadow, averaged_weights(model)):
            s.assign(blend(s, tf.convert_to_tensor(w), count=self.count, decay=self.decay))
        self.count.assign_add(1)

    def values(self):
        return [s.numpy() for s in self.shadow]

    def applied(self, model):
        return _swapped_in(model, self.values())


class ArrayAverage:
    """The JAX backend's average: shadow arrays the jitted train step carries as state (jax_step.py)."""

    def __init__(self, model, *, decay):
        self.decay = _check_decay(decay)
        self.count = np.zeros((), np.int32)
        self.shadow = [np.asarray(w, np.float32) for w in averaged_weights(model)]

    def advanced(self, shadow, count, weights):
        """(shadow, count) after one update from `weights` (traced values of averaged_weights' variables)."""
        return [blend(s, w, count=count, decay=self.decay) for s, w in zip(shadow, weights)], count + 1

    def values(self):
        return [np.asarray(s) for s in self.shadow]

    def applied(self, model):
        return _swapped_in(model, self.values())
