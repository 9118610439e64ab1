"""Defect-biased crops: every crop finds a defect at probability 1, class weights steer, seeded, XLA == eager."""

import numpy as np
import pytest
import tensorflow as tf

from steel_tpu.device.augment import AugmentConfig, augment_batch

B, H, W, C = 8, 64, 256, 4
CROP = dict(crop_height=32, crop_width=64, brightness=0.0, contrast=0.0, gamma=0.0)


def _batch():
    """Each example has one small defect somewhere different (example 0 has none); example 1 has two classes
    far apart so no 64-wide crop holds both."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (B, H, W, 3), dtype=np.uint8)
    masks = np.zeros((B, H, W, C), np.uint8)
    for b in range(2, B):
        r, c = rng.integers(0, H - 3), rng.integers(0, W - 3)
        masks[b, r:r + 3, c:c + 3, b % C] = 1
    masks[1, 60:62, 2:4, 0] = 1  # class 1: 4 pixels at the left edge
    masks[1, 0:30, 150:250, 2] = 1  # class 3: a large block at the right
    return images, masks


def _run(config, seed, jit=False):
    images, masks = _batch()
    fn = tf.function(lambda i, m, s: augment_batch(i, m, seed=s, config=config), jit_compile=True) if jit else \
        (lambda i, m, s: augment_batch(i, m, seed=s, config=config))
    out_images, out_masks = fn(tf.constant(images), tf.constant(masks), tf.constant(seed, tf.int32))
    return out_images.numpy(), out_masks.numpy()


def test_probability_one_puts_a_defect_in_every_crop_of_an_image_that_has_one():
    config = AugmentConfig(**CROP, defect_crop_prob=1.0)
    _, masks = _batch()
    for seed in range(20):
        _, out = _run(config, [seed, 3])
        assert (out[1:].max(axis=(1, 2, 3)) > 0).all(), seed
        assert out[0].max() == 0  # a clean image still gets a (uniform) crop
    # Uniform crops of the same images miss most of these 9-pixel defects: the test can fail.
    hits = [(_run(AugmentConfig(**CROP), [s, 3])[1][2:].max(axis=(1, 2, 3)) > 0).mean() for s in range(10)]
    assert np.mean(hits) < 0.6


def _class1_share(weights, seeds=60):
    config = AugmentConfig(**CROP, defect_crop_prob=1.0, defect_crop_weights=weights)
    found = [_run(config, [s, 11])[1][1] for s in range(seeds)]
    assert all(m[..., 0].any() != m[..., 2].any() for m in found)  # exactly one of the two classes per crop
    return np.mean([m[..., 0].any() for m in found])


def test_class_weights_choose_the_rare_class_more_often():
    # Equal weights: half the crops go to the 4-pixel class 1 although class 3 has 750 times its pixels.
    even, favoured = _class1_share((1, 1, 1, 1)), _class1_share((9, 1, 1, 1))
    assert 0.3 < even < 0.7
    assert favoured > 0.8 and favoured > even + 0.2


def test_same_seed_same_crop_and_unbiased_examples_keep_the_uniform_crop():
    config = AugmentConfig(**CROP, defect_crop_prob=0.5)
    first, again, other = (_run(config, s) for s in ([5, 6], [5, 6], [5, 7]))
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    assert not np.array_equal(first[0], other[0])
    # The row/column streams are shared with defect_crop_prob=0: examples not drawn for a biased crop (and every
    # clean one) get exactly today's crop; at 0.5 some, not all, do.
    uniform = _run(AugmentConfig(**CROP), [5, 6])[0]
    same = [np.array_equal(first[0][b], uniform[b]) for b in range(B)]
    assert same[0] and 1 < sum(same) < B


def test_xla_compiles_and_matches_eager():
    config = AugmentConfig(**CROP, defect_crop_prob=0.7, defect_crop_weights=(3, 1, 1, 2))
    for seed in ([3, 4], [-9, 2**31 - 1]):
        xla, eager = _run(config, seed, jit=True), _run(config, seed)
        np.testing.assert_array_equal(xla[0], eager[0])
        np.testing.assert_array_equal(xla[1], eager[1])


@pytest.mark.parametrize("kwargs", [dict(defect_crop_prob=1.5), dict(defect_crop_prob=-0.1),
                                    dict(defect_crop_weights=(1, 1, 1)), dict(defect_crop_weights=(1, 0, 1, 1))])
def test_config_rejects_bad_values(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        AugmentConfig(**kwargs)
