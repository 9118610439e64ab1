"""Task objects: the softmax head's one-hot targets (and their overlap rule) and the class maps its probs hand on."""

import numpy as np
import tensorflow as tf

from steel_tpu import config, metrics, tasks
from steel_tpu.keras_api import keras
from steel_tpu.tasks.segment import one_hot_targets


def _softmax_task():
    cfg = config.apply_overrides(config.preset("tiny"), ["segment.model.head=softmax",
                                                          "segment.train.loss={'cce': 1.0, 'dice': 1.0}"])
    return tasks.make("segment", cfg)


def test_one_hot_targets_background_first_and_the_higher_class_wins_an_overlap():
    masks = np.zeros((1, 2, 3, 4), np.float32)
    masks[0, 0, 1, 0] = 1.0                # class 1 alone
    masks[0, 0, 2, [1, 2]] = 1.0           # classes 2 and 3 claim it: 3
    masks[0, 1, 0, [0, 3]] = 1.0           # classes 1 and 4: 4
    masks[0, 1, 1, 3] = 1.0                # class 4 alone
    got = _softmax_task().targets(masks, tf.constant(masks)).numpy()
    assert got.shape == (1, 2, 3, 5) and got.dtype == np.float32
    np.testing.assert_array_equal(got.sum(axis=-1), 1.0)
    np.testing.assert_array_equal(got.argmax(axis=-1), [[[0, 1, 3], [4, 4, 0]]])
    # The report counts truth pixels by the same rule.
    rng = np.random.default_rng(2)
    random = (rng.random((2, 8, 16, 4)) > 0.6).astype(np.float32)
    np.testing.assert_array_equal(one_hot_targets(tf.constant(random)).numpy().argmax(axis=-1),
                                  metrics.class_labels(random))


def test_sigmoid_targets_are_the_augmented_masks():
    masks = (np.random.default_rng(1).random((2, 4, 8, 4)) > 0.5).astype(np.float32)
    task = tasks.make("segment", config.preset("tiny"))
    np.testing.assert_array_equal(task.targets(masks, tf.constant(masks)).numpy(), masks)


def test_softmax_probs_are_the_class_channels_without_background():
    task = _softmax_task()
    inputs = keras.Input((None, None, 5))
    model = keras.Model(inputs, keras.layers.Activation("softmax")(inputs))
    logits = np.random.default_rng(3).normal(size=(2, 4, 8, 5)).astype(np.float32)
    probs = task.probs(model, tf.constant(logits)).numpy()
    assert probs.shape == (2, 4, 8, 4) and probs.dtype == np.float32
    np.testing.assert_allclose(probs, tf.nn.softmax(logits)[..., 1:].numpy(), rtol=1e-6)
