"""Exponential moving average of a model's weights (train.ema_decay): what validation, OOF, the kept best weights
and export use, updated after every optimizer step and identical under any replica count."""

import contextlib

import numpy as np
import tensorflow as tf


def averaged_weights(model):
    """The weights an average keeps, in model.weights order."""
    # Float weights only: BatchNorm's moving statistics are averaged with the kernels they normalise for (as timm's
    # ModelEmaV2 does with its buffers); integer state (seed generators, counters) is not a weight to average.
    return [w for w in model.weights if tf.as_dtype(w.dtype).is_floating]


class WeightAverage(tf.Module):
    """Shadow copies s of a model's float weights w, s <- d s + (1 - d) w after each step with
    d = min(decay, (1 + n) / (10 + n)) at update n (0-based), so the first updates follow the weights closely
    instead of averaging in the random initialisation. Build it inside the strategy's scope; it checkpoints
    (a resumed fold continues its average)."""

    def __init__(self, model, *, decay):
        super().__init__(name="weight_average")
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema_decay={decay!r}: must be in (0, 1)")
        self.decay = float(decay)
        # ONLY_FIRST_REPLICA: every replica computes the same value from mirrored weights; the first one's is
        # written everywhere, without an all-reduce.
        kw = dict(trainable=False, synchronization=tf.VariableSynchronization.ON_WRITE,
                  aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        self.count = tf.Variable(0, dtype=tf.int64, **kw)
        self.shadow = [tf.Variable(np.asarray(w), dtype=tf.float32, **kw) for w in averaged_weights(model)]

    def update(self, model):
        """One averaging step from `model`'s current weights (in the replica context of a train step)."""
        n = tf.cast(self.count, tf.float32)
        d = tf.minimum(tf.constant(self.decay, tf.float32), (1.0 + n) / (10.0 + n))
        for s, w in zip(self.shadow, averaged_weights(model)):
            s.assign(d * s + (1.0 - d) * tf.cast(tf.convert_to_tensor(w), tf.float32))
        self.count.assign_add(1)

    def values(self):
        return [s.numpy() for s in self.shadow]

    @contextlib.contextmanager
    def applied(self, model):
        """`model` holds the averaged weights inside the block and its own (training's) weights again after."""
        weights = averaged_weights(model)
        live = [np.asarray(w) for w in weights]
        try:
            for w, s in zip(weights, self.shadow):
                w.assign(s.numpy().astype(np.asarray(w).dtype))
            yield model
        finally:
            for w, value in zip(weights, live):
                w.assign(value)
