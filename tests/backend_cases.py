"""What the cross-backend tests compute, importable under either Keras backend: a tiny model, a batch, train steps
and replayed augmentation draws (tests/jax_side.py runs them under JAX, the tests under TensorFlow)."""

import numpy as np

from steel_tpu.config import AugmentConfig
from steel_tpu.device import augment, losses
from steel_tpu.device import steps as device_steps
from steel_tpu.keras_api import keras

BATCH, H, W, C = 8, 64, 96, 4
CROP = AugmentConfig(crop_height=32, crop_width=64, cutout=1, cutout_size=(8, 16), defect_crop_prob=0.5)
RNG = np.random.default_rng(11)
IMAGES = RNG.integers(0, 256, size=(3 * BATCH, H, W, 3), dtype=np.uint8)
MASKS = (RNG.uniform(size=(3 * BATCH, H, W, C)) > 0.8).astype(np.uint8)


def segmenter():
    """Convolutions, BatchNormalization (moving statistics: non-trainable state) and an L2 regulariser."""
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    # No bias before BatchNormalization, as the models have none: its gradient is 0 up to rounding.
    x = keras.layers.Conv2D(8, 3, padding="same", use_bias=False, kernel_regularizer=keras.regularizers.L2(1e-3))(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    return keras.Model(inputs, keras.layers.Conv2D(C, 3, padding="same", activation="sigmoid")(x))


def train(device, *, weights, loss, steps, augmented=False, ema=None):
    """(losses, weights after, EMA values or None) of `steps` SGD steps from `weights` on IMAGES/MASKS."""
    from steel_tpu.training import averaging

    with device.strategy.scope():
        model = segmenter()
        model.set_weights(weights)
        opt = keras.optimizers.SGD(0.1)
        opt.build(model.trainable_variables)
        average = averaging.weight_average(model, decay=ema) if ema else None

    def crop(images, masks, *, seed):
        out_images, out_masks = augment.augment_batch(images, masks, seed=seed, config=CROP)
        return out_images, out_masks

    step = device_steps.train_step(device=device, model=model, loss_fn=losses.make_loss(loss), optimizer=opt,
                                   global_batch_size=BATCH, augment_fn=crop if augmented else None,
                                   jit_compile=False, average=average)
    batches = [(IMAGES[i * BATCH:(i + 1) * BATCH], MASKS[i * BATCH:(i + 1) * BATCH]) for i in range(steps)]
    if not augmented:
        batches = [(i.astype(np.float32), m.astype(np.float32)) for i, m in batches]
    iterator = _iterator(device, batches)
    got = [step(iterator, step=s, seed=5) for s in range(steps)]
    return got, model.get_weights(), None if average is None else average.values()


def _iterator(device, batches):
    if device.backend == "jax":
        return iter(batches)
    import tensorflow as tf

    assert device.replicas == 1, "the TensorFlow side of these cases runs on one device"
    return iter(tf.data.Dataset.from_tensor_slices(tuple(np.concatenate(x) for x in zip(*batches))).batch(BATCH))


class Recording:
    """Draws that record every array the backend's draws hand out, in call order."""

    def __init__(self, inner, log):
        self.inner, self.log = inner, log

    def split(self, num):
        return [Recording(d, self.log) for d in self.inner.split(num)]

    def ints(self, shape, low, high):
        out = self.inner.ints(shape, low, high)
        self.log.append(np.asarray(out))
        return out


class Replay:
    """Draws that hand out recorded arrays in the same call order (the augmentation's code is the same on both)."""

    def __init__(self, arrays):
        self.arrays = arrays

    def split(self, num):
        return [self] * num

    def ints(self, shape, low, high):
        out = self.arrays.pop(0)
        assert tuple(out.shape) == tuple(shape) and out.min() >= low and out.max() < high
        return out
