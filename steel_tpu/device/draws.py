"""The random numbers of on-device augmentation, one small class per backend behind one interface (split, ints)."""

from steel_tpu.keras_api import backend


class TFDraws:
    """TensorFlow's stateless RNG from a [2] integer seed (the seed of one replica at one step)."""

    def __init__(self, seed):
        import tensorflow as tf

        self._tf = tf
        seed = tf.convert_to_tensor(seed)
        if seed.shape != [2] or not seed.dtype.is_integer:
            raise ValueError(f"augment_batch: seed must be an integer tensor of shape [2], got {seed.dtype} "
                             f"{seed.shape}")
        # The TF and XLA kernels of the stateless RNG ops agree only for seed elements in [0, 2**31) (measured on
        # CPU: negative or wider elements give different streams); keeping seeds there lets an eager debugging
        # run reproduce the jitted step exactly.
        self.seed = tf.bitwise.bitwise_and(tf.cast(seed, tf.int64), 0x7FFFFFFF)

    def split(self, num):
        """`num` independent draws; a prefix does not depend on `num` (stateless_split's property)."""
        seeds = self._tf.random.experimental.stateless_split(self.seed, num=num)
        return [TFDraws(s) for s in self._tf.unstack(seeds)]

    def ints(self, shape, low, high):
        """int32 uniform in [low, high) of `shape`."""
        return self._tf.random.stateless_uniform(shape, seed=self.seed, minval=low, maxval=high,
                                                 dtype=self._tf.int32)


class JaxDraws:
    """JAX's threefry keys: from a [2] integer seed (its key data) or a key the JAX step folded the step into."""

    def __init__(self, seed=None, *, key=None):
        import jax
        import numpy as np

        self._jax = jax
        if key is None:
            shape = np.shape(seed)
            if shape != (2,):
                raise ValueError(f"augment_batch: seed must be an integer tensor of shape [2], got shape {shape}")
            key = jax.random.wrap_key_data(jax.numpy.asarray(seed).astype("uint32"), impl="threefry2x32")
        self.key = key

    def split(self, num):
        return [JaxDraws(key=k) for k in self._jax.random.split(self.key, num)]

    def ints(self, shape, low, high):
        return self._jax.random.randint(self.key, tuple(shape), low, high, dtype="int32")


def make(seed):
    """The active backend's draws: `seed` is a [2] integer seed, or already draws (anything with split and ints,
    passed through)."""
    if hasattr(seed, "ints") and hasattr(seed, "split"):
        return seed
    return JaxDraws(seed) if backend() == "jax" else TFDraws(seed)
