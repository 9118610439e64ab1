"""The replicated train step equals one-device training for every loss; predict/eval steps keep row order."""

import functools

import numpy as np
import pytest
import tensorflow as tf

from steel_tpu.device import augment, distribute, losses, step
# The package's Keras: tests/test_legacy_keras.py reruns this module under tf-keras (TF_USE_LEGACY_KERAS=1).
from steel_tpu.keras_api import keras

BATCH, H, W, C = 16, 32, 64, 4
LR = 0.5
RNG = np.random.default_rng(3)
IMAGES = RNG.integers(0, 256, size=(4 * BATCH, H, W, 3), dtype=np.uint8)
MASKS = (RNG.uniform(size=(4 * BATCH, H, W, C)) > 0.7).astype(np.uint8)
LABELS = MASKS.max(axis=(1, 2)).astype(np.float32)

LOSSES = {
    "bce": losses.bce,
    "bce_pos_weight": functools.partial(losses.bce, pos_weight=[2.0, 4.0, 1.0, 3.0]),
    "bce_smoothed": functools.partial(losses.bce, label_smoothing=0.1),
    "dice": losses.soft_dice,
    "focal": losses.focal,
    "lovasz": losses.lovasz_hinge,
    "bce+dice": losses.make_loss("bce+dice"),
    "batch_dice": losses.batch_dice,
    "bce+batch_dice": losses.make_loss("bce+batch_dice"),
}


def segmenter():
    inputs = keras.Input((H, W, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    # The regulariser checks the 1/replicas scaling of model.losses.
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", kernel_regularizer=keras.regularizers.L2(1e-2))(x)
    return keras.Model(inputs, keras.layers.Conv2D(C, 3, padding="same", activation="sigmoid")(x))


def softmax_segmenter():
    inputs = keras.Input((H, W, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(x)
    return keras.Model(inputs, keras.layers.Conv2D(C + 1, 3, padding="same", activation="softmax")(x))


# The softmax head's targets: one-hot over background + the classes (tasks/segment.py's rule for overlaps).
ONE_HOT = np.eye(C + 1, dtype=np.float32)[(MASKS * np.arange(1, C + 1)).max(axis=-1)]
SOFTMAX_LOSSES = {
    "cce_weighted": functools.partial(losses.cce, class_weights=[0.5, 2.0, 4.0, 1.0, 3.0]),
    "cce+dice": losses.make_loss("cce+dice"),
}


def classifier():
    inputs = keras.Input((H, W, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, {"binary": keras.layers.Dense(1, activation="sigmoid", name="binary")(x),
                                "multilabel": keras.layers.Dense(C, activation="sigmoid", name="multilabel")(x)})


def classifier_loss(y, p):
    return losses.bce(y, p["multilabel"], pos_weight=[2.0] * C) + losses.bce(tf.reduce_max(y, -1, keepdims=True),
                                                                             p["binary"])


INITIAL = {build: build().get_weights() for build in (segmenter, softmax_segmenter, classifier)}


def flip_augment(images, targets, *, seed):
    """A trivial XLA-safe augmentation: flip the whole replica batch left-right with probability 1/2."""
    flip = tf.random.stateless_uniform([], seed=seed) < 0.5
    return tf.where(flip, tf.reverse(images, [2]), images), tf.where(flip, tf.reverse(targets, [2]), targets)


def setup(device, build, *, make_optimizer=lambda: keras.optimizers.SGD(LR)):
    with device.strategy.scope():
        model = build()
        model.set_weights(INITIAL[build])
        optimizer = make_optimizer()
    return model, optimizer


def iterator(device, targets, *, batches=1):
    def dataset_fn(input_context):
        ds = tf.data.Dataset.from_tensor_slices((IMAGES[:batches * BATCH], targets[:batches * BATCH]))
        return ds.batch(input_context.get_per_replica_batch_size(BATCH), drop_remainder=True).repeat()

    return iter(distribute.distribute_dataset(device, dataset_fn, global_batch_size=BATCH))


def one_step(device, build, loss_fn, targets, *, jit_compile):
    model, optimizer = setup(device, build)
    train_step = step.make_train_step(model=model, loss_fn=loss_fn, optimizer=optimizer, global_batch_size=BATCH,
                                      strategy=device.strategy, jit_compile=jit_compile)
    loss = float(train_step(iterator(device, targets), step=0, seed=0))
    return loss, [w - w0 for w, w0 in zip(model.get_weights(), INITIAL[build])]


def assert_same_step(a, b):
    (loss_a, delta_a), (loss_b, delta_b) = a, b
    np.testing.assert_allclose(loss_a, loss_b, rtol=1e-5)
    assert max(np.abs(d).max() for d in delta_a) > 1e-3  # the step really moved the weights
    for da, db in zip(delta_a, delta_b):
        np.testing.assert_allclose(da, db, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_eight_replicas_equal_one_device(mirrored, single, name):
    runs = [one_step(d, segmenter, LOSSES[name], MASKS, jit_compile=False) for d in (mirrored, single)]
    assert_same_step(*runs)


@pytest.mark.parametrize("name", sorted(SOFTMAX_LOSSES))
def test_eight_replicas_equal_one_device_for_a_softmax_head(mirrored, single, name):
    runs = [one_step(d, softmax_segmenter, SOFTMAX_LOSSES[name], ONE_HOT, jit_compile=False) for d in (mirrored, single)]
    assert_same_step(*runs)


def test_eight_replicas_equal_one_device_for_a_two_head_classifier(mirrored, single):
    runs = [one_step(d, classifier, classifier_loss, LABELS, jit_compile=False) for d in (mirrored, single)]
    assert_same_step(*runs)


def test_compiled_step_equals_one_device_and_a_hand_computed_sgd_step(mirrored, single):
    loss_fn = LOSSES["bce+dice"]
    compiled = one_step(mirrored, segmenter, loss_fn, MASKS, jit_compile=True)
    assert_same_step(compiled, one_step(single, segmenter, loss_fn, MASKS, jit_compile=True))
    model = segmenter()
    model.set_weights(INITIAL[segmenter])
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(loss_fn(MASKS[:BATCH], model(IMAGES[:BATCH], training=True))) + tf.add_n(model.losses)
    by_hand = [-LR * g.numpy() for g in tape.gradient(loss, model.trainable_variables)]
    assert_same_step(compiled, (float(loss), by_hand))


def test_a_compiled_batch_dice_step_is_the_hand_computed_step_and_mirrored_cpus_refuse_to_compile_it(mirrored,
                                                                                                     single):
    loss_fn = LOSSES["bce+batch_dice"]
    compiled = one_step(single, segmenter, loss_fn, MASKS, jit_compile=True)
    model = segmenter()
    model.set_weights(INITIAL[segmenter])
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(loss_fn(MASKS[:BATCH], model(IMAGES[:BATCH], training=True))) + tf.add_n(model.losses)
    assert_same_step(compiled, (float(loss), [-LR * g.numpy() for g in tape.gradient(loss, model.trainable_variables)]))
    model, optimizer = setup(mirrored, segmenter)
    with pytest.raises(ValueError, match="all-reduces over replicas .* jit_compile=False"):
        step.make_train_step(model=model, loss_fn=loss_fn, optimizer=optimizer, global_batch_size=BATCH,
                             strategy=mirrored.strategy, jit_compile=True)


def test_a_batch_mean_loss_would_train_eight_times_too_fast(mirrored):
    """The trap the per-example contract avoids: Keras-style per-replica means, summed by the all-reduce."""
    model, optimizer = setup(mirrored, segmenter)
    optimizer.build(model.trainable_variables)

    def keras_style(batch):
        images, masks = batch
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(losses.bce(masks, model(images, training=True))) + tf.add_n(model.losses)
        optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))

    tf.function(lambda batch: mirrored.strategy.run(keras_style, args=(batch,)))(next(iterator(mirrored, MASKS)))
    naive = [w - w0 for w, w0 in zip(model.get_weights(), INITIAL[segmenter])]
    _, right = one_step(mirrored, segmenter, losses.bce, MASKS, jit_compile=False)
    for n, r in zip(naive, right):
        np.testing.assert_allclose(n, 8 * r, rtol=1e-3, atol=1e-6)


def test_scalar_losses_clipping_and_foreign_optimizers_are_refused(mirrored):
    model, optimizer = setup(mirrored, segmenter)
    scalar = step.make_train_step(model=model, loss_fn=lambda y, p: tf.reduce_mean(losses.bce(y, p)),
                                  optimizer=optimizer, global_batch_size=BATCH, strategy=mirrored.strategy,
                                  jit_compile=False)
    with pytest.raises(ValueError, match=r"one value per example \(shape \[B\]\)"):
        scalar(iterator(mirrored, MASKS), step=0, seed=0)
    with mirrored.strategy.scope():
        clipped = keras.optimizers.SGD(0.1, global_clipnorm=1.0)
    with pytest.raises(ValueError, match="global_clipnorm"):
        step.make_train_step(model=model, loss_fn=losses.bce, optimizer=clipped, global_batch_size=BATCH,
                             strategy=mirrored.strategy)
    with pytest.raises(ValueError, match="outside strategy.scope"):
        step.make_train_step(model=model, loss_fn=losses.bce, optimizer=keras.optimizers.Adam(),
                             global_batch_size=BATCH, strategy=mirrored.strategy)


# XLA compiles once per device: 8 compilations of the augmenting step make the Mirrored case slow on 2 cores.
@pytest.mark.parametrize("device_name", ["single", pytest.param("mirrored", marks=pytest.mark.slow)])
def test_compiled_step_with_augment_batch_is_reproducible_per_seed(request, device_name):
    device = request.getfixturevalue(device_name)
    model, optimizer = setup(device, segmenter)  # plain SGD keeps no state between the reruns below
    config = augment.AugmentConfig(cutout=1, cutout_size=(8, 8))
    train_step = step.make_train_step(
        model=model, loss_fn=LOSSES["bce+dice"], optimizer=optimizer, global_batch_size=BATCH,
        strategy=device.strategy, augment_fn=functools.partial(augment.augment_batch, config=config),
        jit_compile=True)

    def weights_after(*, step_index, seed):
        model.set_weights(INITIAL[segmenter])
        loss = float(train_step(iterator(device, MASKS), step=step_index, seed=seed))
        assert np.isfinite(loss)
        return np.concatenate([w.ravel() for w in model.get_weights()])

    first = weights_after(step_index=0, seed=1)
    np.testing.assert_array_equal(first, weights_after(step_index=0, seed=1))
    assert not np.allclose(first, weights_after(step_index=0, seed=2))
    assert not np.allclose(first, weights_after(step_index=1, seed=1))


def test_replica_seeds_differ_across_replicas_and_steps_and_repeat_on_rerun():
    seeds = [tuple(step.replica_seed(7, s, r).numpy()) for s in range(3) for r in range(8)]
    assert len(set(seeds)) == len(seeds)
    assert seeds[0] == tuple(step.replica_seed(7, 0, 0).numpy())
    assert seeds[0] != tuple(step.replica_seed(8, 0, 0).numpy())


def test_steps_per_execution_equals_separate_calls(mirrored):
    def run(steps_per_execution, calls):
        model, optimizer = setup(mirrored, segmenter, make_optimizer=lambda: keras.optimizers.Adam(1e-2))
        train_step = step.make_train_step(model=model, loss_fn=LOSSES["bce+dice"], optimizer=optimizer,
                                          global_batch_size=BATCH, strategy=mirrored.strategy,
                                          augment_fn=flip_augment, steps_per_execution=steps_per_execution,
                                          jit_compile=False)
        data = iterator(mirrored, MASKS, batches=4)
        losses_ = [float(train_step(data, step=10 + i * steps_per_execution, seed=5)) for i in range(calls)]
        return np.mean(losses_), model.get_weights()

    (loss4, weights4), (loss1, weights1) = run(4, 1), run(1, 4)
    np.testing.assert_allclose(loss4, loss1, rtol=1e-5)
    for a, b in zip(weights4, weights1):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("build", [segmenter, classifier])
def test_predict_step_returns_rows_in_order(mirrored, build):
    model, _ = setup(mirrored, build)
    predict = step.make_predict_step(forward=lambda images: model(images, training=False),
                                     strategy=mirrored.strategy)
    got = predict(IMAGES[:BATCH])
    expected = model(IMAGES[:BATCH], training=False)
    tf.nest.map_structure(lambda g, e: np.testing.assert_allclose(g, e.numpy(), rtol=1e-5, atol=1e-6), got, expected)
    with pytest.raises(ValueError, match="12 rows is not divisible by 8 replicas"):
        predict(IMAGES[:12])


@pytest.fixture
def policy():
    before = keras.mixed_precision.global_policy().name
    yield distribute.set_precision
    keras.mixed_precision.set_global_policy(before)


@pytest.mark.parametrize("kind,gpu_float16", [("tpu", False), ("gpu", True)])
def test_mixed_precision_step_tracks_float32(single, policy, kind, gpu_float16):
    reference = one_step(single, segmenter, LOSSES["bce+dice"], MASKS, jit_compile=True)
    name = policy(kind, gpu_float16=gpu_float16)
    model, _ = setup(single, segmenter)
    assert model.compute_dtype != "float32"
    optimizer = distribute.wrap_optimizer(keras.optimizers.SGD(LR), name)
    train_step = step.make_train_step(model=model, loss_fn=LOSSES["bce+dice"], optimizer=optimizer,
                                      global_batch_size=BATCH, strategy=single.strategy, jit_compile=kind == "tpu")
    loss = train_step(iterator(single, MASKS), step=0, seed=0)
    assert loss.dtype == tf.float32
    np.testing.assert_allclose(float(loss), reference[0], rtol=2e-2)
    delta = np.concatenate([(w - w0).ravel() for w, w0 in zip(model.get_weights(), INITIAL[segmenter])])
    expected = np.concatenate([d.ravel() for d in reference[1]])
    # Low-precision compute: the update points the same way and has about the same size.
    cosine = delta @ expected / np.linalg.norm(delta) / np.linalg.norm(expected)
    assert cosine > 0.99 and 0.9 < np.linalg.norm(delta) / np.linalg.norm(expected) < 1.1
