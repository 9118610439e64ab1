"""Weight averaging: the hand-computed EMA of the weights after each step, equal under 8 replicas and one device,
swapped in and out of the model, and carried by a checkpoint."""

import numpy as np
import pytest
import tensorflow as tf

from steel_tpu.training import averaging

from steel_tpu.device import step
from steel_tpu.keras_api import keras
from tests.test_step import BATCH, LOSSES, MASKS, iterator, segmenter, setup

DECAY = 0.9


def _train(device, *, steps=4):
    """(model, average, the weights after each step, the initial weights) of `steps` Adam steps with an average."""
    model, optimizer = setup(device, segmenter, make_optimizer=lambda: keras.optimizers.Adam(1e-2))
    with device.strategy.scope():
        average = averaging.WeightAverage(model, decay=DECAY)
    train_step = step.make_train_step(model=model, loss_fn=LOSSES["bce+dice"], optimizer=optimizer,
                                      global_batch_size=BATCH, strategy=device.strategy, jit_compile=False,
                                      average=average)
    initial, data, after = model.get_weights(), iterator(device, MASKS, batches=4), []
    for s in range(steps):
        train_step(data, step=s, seed=1)
        after.append(model.get_weights())
    return model, average, after, initial


def _by_hand(initial, after):
    shadow = [w.astype(np.float64) for w in initial]
    for n, weights in enumerate(after):
        d = min(DECAY, (1 + n) / (10 + n))
        shadow = [d * s + (1 - d) * w for s, w in zip(shadow, weights)]
    return shadow


def test_average_is_the_hand_computed_ema_and_eight_replicas_equal_one_device(mirrored, single):
    runs = {name: _train(device) for name, device in (("mirrored", mirrored), ("single", single))}
    for model, average, after, initial in runs.values():
        want = _by_hand(initial, after)
        assert int(average.count.numpy()) == len(after)
        for got, w, last in zip(average.values(), want, after[-1]):
            np.testing.assert_allclose(got, w, rtol=1e-5, atol=1e-6)
        # The average lags the weights: it is not a copy of them.
        assert max(np.abs(g - x).max() for g, x in zip(average.values(), after[-1])) > 1e-3
    for a, b in zip(runs["mirrored"][1].values(), runs["single"][1].values()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_applied_swaps_the_average_in_and_training_weights_back_and_checkpoints_carry_it(single, tmp_path):
    model, average, after, _ = _train(single, steps=2)
    with average.applied(model):
        for w, s in zip(model.get_weights(), average.values()):
            np.testing.assert_array_equal(w, s)
    for w, live in zip(model.get_weights(), after[-1]):
        np.testing.assert_array_equal(w, live)
    path = tf.train.Checkpoint(average=average).save(str(tmp_path / "ckpt"))
    fresh = averaging.WeightAverage(segmenter(), decay=DECAY)
    tf.train.Checkpoint(average=fresh).restore(path).assert_existing_objects_matched()
    assert int(fresh.count.numpy()) == 2
    for a, b in zip(fresh.values(), average.values()):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="ema_decay"):
        averaging.WeightAverage(model, decay=1.0)
