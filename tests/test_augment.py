"""On-device augmentation: image/mask alignment, exact crops, XLA == eager, seeding, labels, replicas."""

import numpy as np
import pytest
import tensorflow as tf

from steel_tpu.device import distribute

from steel_tpu.device.augment import (
    AugmentConfig,
    augment_batch,
    classifier_labels,
    eval_preprocess,
    labels_from_masks,
)

B, H, W, C = 4, 64, 128, 4
CROP_H, CROP_W = 32, 64
GEOMETRY = AugmentConfig(crop_height=CROP_H, crop_width=CROP_W, brightness=0.0, contrast=0.0, gamma=0.0)
FULL = AugmentConfig(crop_height=CROP_H, crop_width=CROP_W, cutout=2, cutout_size=(8, 16))


def _coordinate_batch(batch=B):
    """Pixels encode (row, col, example); mask channel k is a fixed function of the same three numbers."""
    b, r, c = np.meshgrid(np.arange(batch), np.arange(H), np.arange(W), indexing="ij")
    images = np.stack([r, c, 10 * b + 1], axis=-1).astype(np.uint8)
    masks = np.stack([_mask_of(r, c, b, k) for k in range(C)], axis=-1).astype(np.uint8)
    return images, masks


def _mask_of(rows, cols, example, k):
    return (rows * 3 + cols + 5 * example + k) % 7 < 2


def _window(image):
    """(row indices, col indices) of an augmented coordinate image; asserts it is one contiguous window."""
    rows, cols = image[..., 0].astype(int), image[..., 1].astype(int)
    assert (rows == rows[:, :1]).all() and (cols == cols[:1, :]).all()
    row_idx, col_idx = rows[:, 0], cols[0, :]
    for idx, size in ((row_idx, H), (col_idx, W)):
        step = np.diff(idx)
        assert (step == 1).all() or (step == -1).all()
        assert 0 <= idx.min() and idx.max() < size
    return row_idx, col_idx


def _run(images, masks, seed, config):
    out_images, out_masks = augment_batch(images, masks, seed=tf.constant(seed), config=config)
    return out_images.numpy(), out_masks.numpy()


@pytest.fixture(scope="module")
def coordinates():
    return _coordinate_batch()


@pytest.mark.parametrize("seed", [[0, 0], [7, 3], [-5, 123456789]])
def test_mask_follows_image_and_crops_are_exact_subwindows(coordinates, seed):
    images, masks = coordinates
    out_images, out_masks = _run(images, masks, seed, GEOMETRY)
    assert out_images.shape == (B, CROP_H, CROP_W, 3) and out_masks.shape == (B, CROP_H, CROP_W, C)
    assert out_images.dtype == np.float32 and out_masks.dtype == np.float32
    for b in range(B):
        rows, cols = _window(out_images[b])
        np.testing.assert_array_equal(out_images[b], images[b][rows][:, cols])
        np.testing.assert_array_equal(out_masks[b], masks[b][rows][:, cols])
        # Derived independently of the gather: the mask agrees with the coordinates the image pixel carries.
        r, c, e = out_images[b, ..., 0], out_images[b, ..., 1], (out_images[b, ..., 2] - 1) / 10
        assert (e == b).all()
        for k in range(C):
            np.testing.assert_array_equal(out_masks[b, ..., k], _mask_of(r, c, e, k))


def _transforms(images, masks, seeds, config):
    """(row start, vflip, col start, hflip) for every example under every seed."""
    found = []
    for seed in seeds:
        out_images, _ = _run(images, masks, seed, config)
        for b in range(B):
            rows, cols = _window(out_images[b])
            found.append((rows.min(), rows[0] > rows[-1], cols.min(), cols[0] > cols[-1]))
    return found


def test_transforms_differ_per_example_and_cover_all_flips(coordinates):
    images, masks = coordinates
    found = _transforms(images, masks, [[s, 1] for s in range(8)], GEOMETRY)
    assert {(v, h) for _, v, _, h in found} == {(False, False), (False, True), (True, False), (True, True)}
    assert len({(r, c) for r, _, c, _ in found}) > len(found) // 2
    for start in range(0, len(found), B):
        assert len(set(found[start : start + B])) > 1, "every example of a batch got the same transform"


def test_flips_off_never_flip(coordinates):
    images, masks = coordinates
    config = AugmentConfig(
        crop_height=CROP_H, crop_width=CROP_W, hflip=False, vflip=False, brightness=0, contrast=0, gamma=0
    )
    found = _transforms(images, masks, [[s, 2] for s in range(4)], config)
    assert not any(v or h for _, v, _, h in found)


def test_no_crop_keeps_the_full_image(coordinates):
    images, masks = coordinates
    config = AugmentConfig(hflip=False, vflip=False, brightness=0, contrast=0, gamma=0)
    out_images, out_masks = _run(images, masks, [1, 2], config)
    np.testing.assert_array_equal(out_images, images.astype(np.float32))
    np.testing.assert_array_equal(out_masks, masks.astype(np.float32))
    flipped, _ = _run(images, masks, [1, 2], AugmentConfig(brightness=0, contrast=0, gamma=0))
    assert flipped.shape == (B, H, W, 3)


@pytest.mark.parametrize("config", [GEOMETRY, FULL], ids=["geometry", "photometric+cutout"])
def test_xla_compiles_with_static_shapes_and_matches_eager(coordinates, config):
    images, masks = coordinates
    step = tf.function(lambda i, m, s: augment_batch(i, m, seed=s, config=config), jit_compile=True)
    for seed in ([3, 4], [-9, 2**31 - 1]):
        seed = tf.constant(seed, tf.int32)
        xla_images, xla_masks = (t.numpy() for t in step(images, masks, seed))
        eager_images, eager_masks = _run(images, masks, seed, config)
        np.testing.assert_array_equal(xla_masks, eager_masks)
        if config is GEOMETRY:
            np.testing.assert_array_equal(xla_images, eager_images)
        else:
            np.testing.assert_allclose(xla_images, eager_images, atol=1e-3, rtol=0)
    outputs = step.get_concrete_function(images, masks, seed).structured_outputs
    assert [o.shape.as_list() for o in outputs] == [[B, CROP_H, CROP_W, 3], [B, CROP_H, CROP_W, C]]


def test_same_seed_same_batch_different_seed_different(coordinates):
    images, masks = coordinates
    first, again, other = (_run(images, masks, s, FULL) for s in ([5, 6], [5, 6], [5, 7]))
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    assert not np.array_equal(first[0], other[0])


@pytest.fixture(scope="module")
def gray():
    """Grayscale (equal channels) pixels in 30..225 so that mild jitter never reaches the clip."""
    values = np.random.default_rng(0).integers(30, 226, size=(B, H, W, 1), dtype=np.uint8)
    return np.repeat(values, 3, axis=-1), np.zeros((B, H, W, C), np.uint8)


def _photometric_only(**magnitudes):
    zero = dict(brightness=0.0, contrast=0.0, gamma=0.0)
    return AugmentConfig(crop_height=CROP_H, crop_width=CROP_W, **{**zero, **magnitudes})


def _per_example_parameter(before, after, kind):
    """The one number per example that maps `before` to `after` under a single brightness/contrast/gamma op."""
    if kind == "brightness":
        estimate = (after - before) / 255.0
    elif kind == "contrast":
        mean = before.mean(axis=(1, 2, 3), keepdims=True)
        centred = before - mean
        keep = np.abs(centred) > 20
        estimate = np.where(keep, (after - mean) / np.where(keep, centred, 1.0), np.nan)
    else:
        estimate = np.log(after / 255.0) / np.log(before / 255.0)
    flat = estimate.reshape(B, -1)
    values = np.nanmedian(flat, axis=1)
    assert np.nanmax(np.abs(flat - values[:, None])) < 1e-3
    return values


@pytest.mark.parametrize(
    "kind, low, high", [("brightness", -0.1, 0.1), ("contrast", 0.9, 1.1), ("gamma", 0.9, 1.1)]
)
def test_each_photometric_op_draws_one_parameter_per_example_within_range(gray, kind, low, high):
    images, masks = gray
    seed = [11, 12]
    before, _ = _run(images, masks, seed, GEOMETRY)
    after, _ = _run(images, masks, seed, _photometric_only(**{kind: 0.1}))
    values = _per_example_parameter(before, after, kind)
    assert ((values >= low - 1e-4) & (values <= high + 1e-4)).all()
    assert len(np.unique(values.round(4))) == B


def test_photometric_stays_in_range_keeps_gray_and_leaves_masks_alone(coordinates):
    _, masks = coordinates
    images = np.repeat(np.random.default_rng(1).integers(0, 256, size=(B, H, W, 1), dtype=np.uint8), 3, axis=-1)
    images[:, :4] = 0
    images[:, -4:] = 255
    strong = AugmentConfig(crop_height=CROP_H, crop_width=CROP_W, brightness=0.5, contrast=1.0, gamma=0.9)
    for seed in ([1, 1], [2, 2], [3, 3]):
        out_images, out_masks = _run(images, masks, seed, strong)
        plain_images, plain_masks = _run(images, masks, seed, GEOMETRY)
        assert out_images.min() >= 0.0 and out_images.max() <= 255.0
        assert not np.array_equal(out_images, plain_images)
        np.testing.assert_array_equal(out_masks, plain_masks)
        np.testing.assert_array_equal(out_images[..., 0], out_images[..., 2])


def test_cutout_zeroes_boxes_in_the_image_only(coordinates):
    _, masks = coordinates
    images = np.full((B, H, W, 3), 200, np.uint8)
    geometry_only = dict(crop_height=CROP_H, crop_width=CROP_W, brightness=0, contrast=0, gamma=0)
    plain_images, plain_masks = _run(images, masks, [4, 4], AugmentConfig(**geometry_only))
    one = AugmentConfig(**geometry_only, cutout=1, cutout_size=(8, 16))
    two = AugmentConfig(**geometry_only, cutout=2, cutout_size=(8, 16))
    for config, low, high in ((one, 128, 128), (two, 128, 256)):
        out_images, out_masks = _run(images, masks, [4, 4], config)
        np.testing.assert_array_equal(out_masks, plain_masks)
        zero = out_images[..., 0] == 0
        assert ((out_images == 0) | (out_images == plain_images)).all()
        counts = zero.sum(axis=(1, 2))
        assert ((counts >= low) & (counts <= high)).all()
    for b in range(B):
        zero = _run(images, masks, [4, 4], one)[0][b, ..., 0] == 0
        rows, cols = np.nonzero(zero)
        assert (rows.max() - rows.min() + 1, cols.max() - cols.min() + 1) == (8, 16)


def test_labels_are_recomputed_from_the_crop(coordinates):
    images, _ = coordinates
    masks = np.zeros((B, H, W, C), np.uint8)
    masks[:, :16, :40, 0] = 1  # a class-1 defect in the top-left corner only
    masks[:, :, :, 2] = 1  # class 3 everywhere: every crop keeps it
    seen = []
    for seed in ([s, 9] for s in range(6)):
        out_images, out_masks = _run(images, masks, seed, GEOMETRY)
        labels = labels_from_masks(tf.constant(out_masks)).numpy()
        for b in range(B):
            rows, cols = _window(out_images[b])
            hits = bool(rows.min() < 16 and cols.min() < 40)
            assert labels[b].tolist() == [float(hits), 0.0, 1.0, 0.0]
            seen.append(hits)
        np.testing.assert_array_equal(
            classifier_labels(masks, out_masks, config=GEOMETRY).numpy(), labels
        )
        unchanged = AugmentConfig(crop_height=CROP_H, crop_width=CROP_W, label_from_crop=False)
        np.testing.assert_array_equal(
            classifier_labels(masks, out_masks, config=unchanged).numpy(), np.tile([1.0, 0, 1, 0], (B, 1))
        )
    assert True in seen and False in seen


def test_labels_from_masks():
    masks = np.zeros((3, 32, 32, C), np.float32)
    masks[0, 5, 5, 1] = 0.6
    masks[1, 7, 9, 3] = 0.4  # below the 0.5 presence threshold
    masks[2, 0, 0, 0] = masks[2, 31, 31, 2] = 1.0
    np.testing.assert_array_equal(
        labels_from_masks(masks).numpy(), [[0, 1, 0, 0], [0, 0, 0, 0], [1, 0, 1, 0]]
    )
    np.testing.assert_array_equal(labels_from_masks((masks > 0.5).astype(np.uint8)).numpy()[2], [1, 0, 1, 0])


def test_eval_preprocess_only_casts(coordinates):
    images, _ = coordinates
    out = eval_preprocess(tf.constant(images))
    assert out.dtype == tf.float32
    np.testing.assert_array_equal(out.numpy(), images.astype(np.float32))


@pytest.mark.parametrize(
    "kwargs", [dict(crop_height=40), dict(crop_width=0), dict(gamma=1.0), dict(brightness=-0.1), dict(cutout=-1),
               dict(cutout_size=(0, 8))]
)
def test_config_rejects_bad_values(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        AugmentConfig(**kwargs)


def test_augment_batch_rejects_bad_inputs(coordinates):
    images, masks = coordinates
    with pytest.raises(ValueError, match="larger than the input"):
        augment_batch(images, masks, seed=[1, 2], config=AugmentConfig(crop_height=96))
    with pytest.raises(ValueError, match="cutout_size"):
        augment_batch(images, masks, seed=[1, 2], config=AugmentConfig(crop_height=32, cutout=1, cutout_size=(64, 8)))
    with pytest.raises(TypeError, match="uint8"):
        augment_batch(images.astype(np.float32), masks, seed=[1, 2], config=GEOMETRY)
    with pytest.raises(ValueError, match="seed"):
        augment_batch(images, masks, seed=[1, 2, 3], config=GEOMETRY)
    with pytest.raises(ValueError, match="static"):
        tf.function(lambda i: augment_batch(i, masks, seed=[1, 2], config=GEOMETRY)).get_concrete_function(
            tf.TensorSpec([None, H, W, 3], tf.uint8)
        )


# Jitted per replica, every logical device compiles its own copy (about 14 s here): the slow variant.
@pytest.mark.parametrize("jit_compile", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_runs_replicated_with_distinct_per_replica_seeds(logical_cpus, jit_compile):
    strategy = distribute.select_strategy(prefer="mirrored", verbose=False).strategy  # one per process
    assert strategy.num_replicas_in_sync == len(logical_cpus)
    images, masks = _coordinate_batch(batch=2)
    replicated = strategy.experimental_distribute_values_from_function(
        lambda _: (tf.constant(images), tf.constant(masks))
    )
    augment = tf.function(lambda i, m, s: augment_batch(i, m, seed=s, config=GEOMETRY), jit_compile=jit_compile)

    def replica_step(batch, step):
        replica = tf.distribute.get_replica_context().replica_id_in_sync_group
        seed = tf.random.experimental.stateless_fold_in(tf.stack([step, 0]), replica)
        return augment(*batch, seed)

    @tf.function
    def step_fn(batch, step):
        return strategy.run(replica_step, args=(batch, step))

    out_images, out_masks = step_fn(replicated, tf.constant(3, tf.int64))
    per_replica = [(i.numpy(), m.numpy()) for i, m in zip(strategy.experimental_local_results(out_images),
                                                          strategy.experimental_local_results(out_masks))]
    assert len(per_replica) == len(logical_cpus)
    for replica_images, replica_masks in per_replica:
        for b in range(2):
            rows, cols = _window(replica_images[b])
            np.testing.assert_array_equal(replica_masks[b], masks[b][rows][:, cols])
    assert len({replica_images.tobytes() for replica_images, _ in per_replica}) == len(per_replica)
