"""Task objects: the softmax head's one-hot targets (and their overlap rule), the class maps its probs hand on, a
segmenter of some classes, and the augmentation that makes the model's 3 channels from training batches' luma plane."""

import numpy as np
import pytest
import tensorflow as tf

from steel_tpu import config, metrics, tasks

from steel_tpu.device import losses
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


def test_augmenting_the_luma_plane_is_augmenting_its_three_channels():
    # Training batches carry one channel (pipeline.train_dataset); the task's augmentation makes the three on the
    # device. Every augmentation option on, each task: the same images and targets as from the 3-channel batch.
    overrides = [f"{t}.augment.{k}" for t in ("classify", "segment") for k in (
        "hflip=True", "vflip=True", "defect_crop_prob=0.5", "gamma=0.2", "contrast=0.2", "brightness=0.1", "cutout=2", "cutout_size=(8,16)",
        "crop_height=32", "crop_width=64")]
    cfg = config.apply_overrides(config.preset("tiny"), overrides)
    rng = np.random.default_rng(3)
    luma = tf.constant(rng.integers(0, 256, (4, 64, 128, 1), dtype=np.uint8))
    masks = tf.constant((rng.random((4, 64, 128, 4)) > 0.7).astype(np.uint8))
    for name in ("classify", "segment"):
        fn = tasks.make(name, cfg).augment_fn()
        images, targets = fn(luma, masks, seed=tf.constant([5, 6]))
        want_images, want_targets = fn(tf.broadcast_to(luma, (4, 64, 128, 3)), masks, seed=tf.constant([5, 6]))
        assert images.shape == (4, 32, 64, 3) == want_images.shape
        np.testing.assert_allclose(images.numpy(), want_images.numpy(), atol=1e-3)  # the contrast mean's sum order
        np.testing.assert_array_equal(targets.numpy(), want_targets.numpy())
        assert not np.array_equal(images.numpy()[..., 0], tf.cast(luma[:, :32, :64, 0], tf.float32).numpy())


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


@pytest.mark.parametrize("head", ["sigmoid", "softmax"])
def test_a_segmenter_of_some_classes_learns_theirs_and_hands_on_zeros_for_the_others(head):
    # Seed 000's one segmenter per class: its targets are its classes' masks, its maps go to their places among
    # the 4 and the others are zeros (ensemble.make_forward divides each class by the models predicting it).
    loss = "{'cce': 1.0}" if head == "softmax" else "{'bce': 1.0}"
    cfg = config.apply_overrides(config.preset("tiny"), [
        "segment.model.classes=[2, 4]", f"segment.model.head={head}", f"segment.train.loss={loss}",
        "segment.train.pos_weight=None" if head == "softmax" else "segment.train.pos_weight=[1, 2, 3, 4]",
        "segment.train.class_weights=[0.5, 1, 2, 3, 4]" if head == "softmax" else "segment.train.class_weights=None"])
    task = tasks.make("segment", cfg)
    masks = (np.random.default_rng(4).random((2, 4, 8, 4)) > 0.5).astype(np.float32)
    targets = task.targets(masks, tf.constant(masks)).numpy()
    if head == "sigmoid":
        np.testing.assert_array_equal(targets, masks[..., [1, 3]])
    else:
        np.testing.assert_array_equal(targets, one_hot_targets(tf.constant(masks[..., [1, 3]])).numpy())
    model = task.build_model(pretrained=False)
    assert model.output_shape[-1] == 2 + (head == "softmax")
    x = tf.constant(np.random.default_rng(5).uniform(0, 255, (2, 64, 96, 3)).astype(np.float32))
    own = tf.cast(model(x, training=False), tf.float32).numpy()
    own = own[..., 1:] if head == "softmax" else own
    probs = task.probs(model, x).numpy()
    assert probs.shape == (2, 64, 96, 4)
    np.testing.assert_array_equal(probs[..., [1, 3]], own)
    np.testing.assert_array_equal(probs[..., [0, 2]], 0.0)
    # Per-class loss weights are given for all 4 classes; the model's take theirs (background first for cce).
    y = task.targets(masks, tf.constant(masks))
    p = tf.constant(np.full(y.shape, 1.0 / y.shape[-1], np.float32))
    if head == "sigmoid":
        want = losses.make_loss({"bce": 1.0}, options={"bce": dict(label_smoothing=0.0, pos_weight=(2, 4))})
    else:
        want = losses.make_loss({"cce": 1.0}, options={"cce": dict(class_weights=(0.5, 2, 4))})
    np.testing.assert_allclose(task.loss()(y, p).numpy(), want(y, p).numpy(), rtol=1e-6)
    # Validation selects on the model's own classes.
    oof = {"dice": np.array([[0.0, 1.0, 0.0, 0.5], [0.0, 0.5, 0.0, 0.0]], np.float32)}
    assert task.scores(oof) == {"dice": 0.5, "dice_c2": 0.75, "dice_c4": 0.25}
