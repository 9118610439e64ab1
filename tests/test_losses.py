"""Per-example losses: shapes, float32 under bfloat16, values against hand computations, spec parsing."""

import math

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

from steel_tpu.device import losses

RNG = np.random.default_rng(7)
SEG_TRUE = (RNG.uniform(size=(3, 8, 16, 4)) > 0.6).astype(np.float32)
SEG_PRED = RNG.uniform(0.01, 0.99, size=(3, 8, 16, 4)).astype(np.float32)
CLS_TRUE = np.array([[1, 0, 0, 1], [0, 0, 0, 0]], np.float32)
CLS_PRED = np.array([[0.9, 0.2, 0.1, 0.6], [0.3, 0.1, 0.05, 0.2]], np.float32)

ALL = {
    "bce": losses.bce,
    "bce_pos_weight": lambda t, p: losses.bce(t, p, pos_weight=[2.0, 1.0, 1.0, 3.0]),
    "bce_smoothed": lambda t, p: losses.bce(t, p, label_smoothing=0.1),
    "dice": losses.soft_dice,
    "batch_dice": losses.batch_dice,
    "focal": losses.focal,
    "lovasz": losses.lovasz_hinge,
    "bce+dice": losses.make_loss("bce+dice"),
    "cce": losses.cce,
    "cce_weighted": lambda t, p: losses.cce(t, p, class_weights=[2.0, 1.0, 1.0, 3.0]),
}


@pytest.mark.parametrize("name", sorted(ALL))
@pytest.mark.parametrize("y_true,y_pred", [(SEG_TRUE, SEG_PRED), (CLS_TRUE, CLS_PRED)], ids=["seg", "cls"])
def test_one_float32_value_per_example_even_from_bfloat16(name, y_true, y_pred):
    out = ALL[name](tf.constant(y_true, tf.bfloat16), tf.constant(y_pred, tf.bfloat16))
    assert out.shape == (y_true.shape[0],)
    assert out.dtype == tf.float32
    reference = ALL[name](y_true, y_pred).numpy()
    # bfloat16 rounds the inputs (8 mantissa bits), but every sum runs in float32.
    np.testing.assert_allclose(out.numpy(), reference, rtol=0.03, atol=2e-3)


def test_bce_by_hand():
    y = np.array([[1.0, 0.0]], np.float32)
    p = np.array([[0.8, 0.3]], np.float32)
    expected = -(math.log(0.8) + math.log(0.7)) / 2
    np.testing.assert_allclose(losses.bce(y, p).numpy(), [expected], rtol=1e-6)
    weighted = -(3.0 * math.log(0.8) + math.log(0.7)) / 2
    np.testing.assert_allclose(losses.bce(y, p, pos_weight=[3.0, 5.0]).numpy(), [weighted], rtol=1e-6)
    # Smoothing 0.2 moves the targets to 0.9 / 0.1.
    smoothed = -(0.9 * math.log(0.8) + 0.1 * math.log(0.2) + 0.1 * math.log(0.3) + 0.9 * math.log(0.7)) / 2
    np.testing.assert_allclose(losses.bce(y, p, label_smoothing=0.2).numpy(), [smoothed], rtol=1e-6)


def test_bce_from_logits_matches_probabilities_and_survives_saturation():
    logits = RNG.normal(scale=3.0, size=(2, 8, 16, 4)).astype(np.float32)
    probs = tf.sigmoid(logits)
    y = SEG_TRUE[:2]
    np.testing.assert_allclose(losses.bce(y, logits, from_logits=True).numpy(), losses.bce(y, probs).numpy(),
                               rtol=1e-4)
    hopeless = losses.bce(np.ones((1, 4), np.float32), np.zeros((1, 4), np.float32)).numpy()
    np.testing.assert_allclose(hopeless, [-math.log(losses.EPS)], rtol=1e-3)
    far = losses.bce(np.ones((1, 4), np.float32), np.full((1, 4), -200.0, np.float32), from_logits=True).numpy()
    np.testing.assert_allclose(far, [200.0], rtol=1e-5)


def test_soft_dice_by_hand():
    perfect = losses.soft_dice(SEG_TRUE, SEG_TRUE).numpy()
    np.testing.assert_allclose(perfect, np.zeros(3), atol=1e-6)
    empty = np.zeros((1, 4, 4, 2), np.float32)
    np.testing.assert_allclose(losses.soft_dice(empty, empty).numpy(), [0.0], atol=1e-7)  # empty/empty is right
    y = np.zeros((1, 4, 4, 1), np.float32)
    y[0, :2] = 1.0  # 8 pixels
    p = np.zeros_like(y)
    p[0, 1:3] = 1.0  # 8 pixels, 4 shared
    expected = 1.0 - (2 * 4 + 1.0) / (16 + 1.0)
    np.testing.assert_allclose(losses.soft_dice(y, p).numpy(), [expected], rtol=1e-6)


def test_batch_dice_by_hand_and_false_positives_in_an_image_that_lacks_the_class_cost():
    y = np.zeros((2, 4, 4, 1), np.float32)
    y[0, :2] = 1.0  # image 0: 8 defect pixels, found exactly; image 1 has none
    p = y.copy()
    p[1, :1] = 1.0  # 4 false-positive pixels in image 1
    expected = 1.0 - (2 * 8 + 1.0) / (8 + 12 + 1.0)
    np.testing.assert_allclose(losses.batch_dice(y, p).numpy(), [expected, expected], rtol=1e-6)
    np.testing.assert_allclose(losses.batch_dice(y, y).numpy(), [0.0, 0.0], atol=1e-7)

    def false_positive_gradient(loss_fn, area):
        # Image 1 already holds `area` false-positive pixels: what one more (a pixel at probability 0.5) costs.
        pred = y.copy()
        pred[1].flat[:area] = 1.0
        pred[1, 3, 3] = 0.5
        pred = tf.constant(pred)
        with tf.GradientTape() as tape:
            tape.watch(pred)
            loss = tf.reduce_mean(loss_fn(y, pred))
        return float(tape.gradient(loss, pred)[1, 3, 3, 0])

    # Per-example Dice saturates once an image that lacks the class holds a blob: the next pixel costs ~nothing.
    # By hand: 1/(12.5 + 1)^2 / 2 examples = 0.0027; over the batch 17/(8 + 8 + 12.5 + 1)^2 = 0.0195.
    np.testing.assert_allclose(false_positive_gradient(losses.soft_dice, 12), 1 / 13.5 ** 2 / 2, rtol=1e-4)
    np.testing.assert_allclose(false_positive_gradient(losses.batch_dice, 12), 17 / 29.5 ** 2, rtol=1e-4)


def test_batch_dice_sums_over_replicas_and_needs_a_replica_context(mirrored):
    strategy = mirrored.strategy
    replicas = strategy.num_replicas_in_sync
    y = (RNG.uniform(size=(replicas, 8, 16, 4)) > 0.7).astype(np.float32)
    p = RNG.uniform(0.01, 0.99, size=y.shape).astype(np.float32)
    whole = losses.batch_dice(y, p).numpy()
    rows = strategy.experimental_distribute_values_from_function(
        lambda ctx: tuple(tf.constant(a[ctx.replica_id_in_sync_group][None]) for a in (y, p)))
    per_replica = strategy.run(tf.function(lambda yp: losses.batch_dice(*yp)), args=(rows,))
    np.testing.assert_allclose(np.concatenate([t.numpy() for t in strategy.experimental_local_results(per_replica)]),
                               whole, rtol=1e-5)
    with strategy.scope(), pytest.raises(ValueError, match="replica context"):
        losses.batch_dice(y, p)


def test_cce_by_hand_per_example_with_class_weights():
    # Two examples of 2 pixels over background + 2 classes: one-hot targets, softmax-like rows.
    y = np.array([[[1, 0, 0], [0, 0, 1]], [[0, 1, 0], [0, 1, 0]]], np.float32)
    p = np.array([[[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]], [[0.5, 0.4, 0.1], [0.2, 0.2, 0.6]]], np.float32)
    np.testing.assert_allclose(losses.cce(y, p).numpy(), [-(math.log(0.7) + math.log(0.6)) / 2,
                                                         -(math.log(0.4) + math.log(0.2)) / 2], rtol=1e-6)
    # Each pixel's term is scaled by its true class's weight; example 2 alone changes only with class 1's.
    weighted = losses.cce(y, p, class_weights=[0.5, 3.0, 2.0]).numpy()
    np.testing.assert_allclose(weighted, [-(0.5 * math.log(0.7) + 2.0 * math.log(0.6)) / 2,
                                          -3.0 * (math.log(0.4) + math.log(0.2)) / 2], rtol=1e-6)
    hopeless = losses.cce(np.array([[0.0, 1.0]], np.float32), np.array([[1.0, 0.0]], np.float32)).numpy()
    np.testing.assert_allclose(hopeless, [-math.log(losses.EPS)], rtol=1e-3)  # finite, not inf
    spec = losses.make_loss({"cce": 1.0, "dice": 0.5}, options={"cce": {"class_weights": [0.5, 3.0, 2.0]}})
    np.testing.assert_allclose(spec(y, p).numpy(), weighted + 0.5 * losses.soft_dice(y, p).numpy(), rtol=1e-6)


def test_focal_reduces_to_half_bce_and_down_weights_easy_pixels():
    half = losses.focal(SEG_TRUE, SEG_PRED, gamma=0.0, alpha=0.5).numpy()
    np.testing.assert_allclose(half, 0.5 * losses.bce(SEG_TRUE, SEG_PRED).numpy(), rtol=1e-5)
    y = np.array([[1.0]], np.float32)
    easy, hard = losses.focal(y, np.array([[0.9]], np.float32)), losses.focal(y, np.array([[0.1]], np.float32))
    np.testing.assert_allclose(easy.numpy(), [-0.25 * 0.01 * math.log(0.9)], rtol=1e-5)
    np.testing.assert_allclose(hard.numpy(), [-0.25 * 0.81 * math.log(0.1)], rtol=1e-5)


def _lovasz_reference(truth, logits):
    """Berman et al.'s lovasz_hinge_flat, in float64 numpy, for one example and class."""
    signs = 2.0 * truth - 1.0
    errors = 1.0 - logits * signs
    order = np.argsort(-errors, kind="stable")
    gt = truth[order]
    intersection = gt.sum() - np.cumsum(gt)
    union = gt.sum() + np.cumsum(1.0 - gt)
    jaccard = 1.0 - intersection / union
    jaccard[1:] = jaccard[1:] - jaccard[:-1]
    return float(np.dot(np.maximum(errors[order], 0.0), jaccard))


def test_lovasz_hinge_is_the_reference_per_example_and_the_jaccard_loss_at_unit_margins():
    probs = SEG_PRED.astype(np.float64)
    logits = np.log(probs) - np.log1p(-probs)
    want = [np.mean([_lovasz_reference(SEG_TRUE[b, ..., c].ravel(), logits[b, ..., c].ravel()) for c in range(4)])
            for b in range(len(SEG_TRUE))]
    np.testing.assert_allclose(losses.lovasz_hinge(SEG_TRUE, SEG_PRED).numpy(), want, rtol=1e-4)
    # At hinge errors of exactly 0 (logit +-1 on the right side) and 1 (logit 0: wrong), the Lovasz extension
    # equals the Jaccard loss of the wrong pixels M: |M| / |truth | M|.
    rng = np.random.default_rng(5)
    truth = (rng.uniform(size=(2, 6, 8, 1)) > 0.5).astype(np.float32)
    wrong = rng.uniform(size=truth.shape) > 0.7
    logit = np.where(wrong, 0.0, 2.0 * truth - 1.0)
    p = (1.0 / (1.0 + np.exp(-logit))).astype(np.float32)
    jaccard = [wrong[b].sum() / np.logical_or(truth[b] > 0, wrong[b]).sum() for b in range(2)]
    np.testing.assert_allclose(losses.lovasz_hinge(truth, p).numpy(), jaccard, rtol=1e-4)
    confident = np.where(truth > 0, 0.99, 0.01).astype(np.float32)  # every margin above 1: no loss
    np.testing.assert_allclose(losses.lovasz_hinge(truth, confident).numpy(), [0.0, 0.0], atol=1e-7)


def test_auto_pos_weight_from_class_counts():
    assert losses.auto_pos_weight([100, 25, 400, 4]) == pytest.approx((2.0, 4.0, 1.0, 10.0))
    assert losses.auto_pos_weight([7, 0, 7, 7]) == pytest.approx((1.0, losses.AUTO_POS_WEIGHT_MAX, 1.0, 1.0))
    with pytest.raises(ValueError, match="no training image"):
        losses.auto_pos_weight([0, 0, 0, 0])


def test_pos_weight_auto_in_a_task_loss_is_bce_with_the_counts_weights():
    from steel_tpu import config, tasks

    cfg = config.apply_overrides(config.preset("tiny"), ["segment.train.pos_weight=auto",
                                                          "segment.train.loss={'bce': 1.0}"])
    task = tasks.make("segment", cfg)
    np.testing.assert_allclose(task.loss(class_counts=[100, 25, 400, 4])(SEG_TRUE, SEG_PRED).numpy(),
                               losses.bce(SEG_TRUE, SEG_PRED, pos_weight=[2.0, 4.0, 1.0, 10.0]).numpy(), rtol=1e-6)
    with pytest.raises(ValueError, match="pos_weight=auto needs"):
        task.loss()


def test_class_weights_in_a_task_loss_are_cce_with_those_weights():
    from steel_tpu import config, tasks

    cfg = config.apply_overrides(config.preset("tiny"), [
        "segment.model.head=softmax", "segment.train.loss={'cce': 1.0, 'dice': 0.25}",
        "segment.train.class_weights=[0.5, 2, 3, 1, 4]"])
    y = np.eye(5, dtype=np.float32)[RNG.integers(0, 5, size=(2, 8, 16))]
    p = RNG.dirichlet(np.ones(5), size=(2, 8, 16)).astype(np.float32)
    want = (losses.cce(y, p, class_weights=[0.5, 2.0, 3.0, 1.0, 4.0]) + 0.25 * losses.soft_dice(y, p)).numpy()
    np.testing.assert_allclose(tasks.make("segment", cfg).loss()(y, p).numpy(), want, rtol=1e-6)


def test_a_two_headed_classifier_loss_keeps_the_all_reduce_mark_that_step_checks():
    from steel_tpu import config, tasks

    cfg = config.apply_overrides(config.preset("tiny"), ["classify.model.heads=both",
                                                          "classify.train.loss={'bce': 1.0, 'batch_dice': 1.0}"])
    loss = tasks.make("classify", cfg).loss()
    assert loss.all_reduces and not losses.make_loss("bce+dice").all_reduces
    y = {"binary": CLS_TRUE.max(axis=1, keepdims=True), "multilabel": CLS_TRUE}
    p = {"binary": CLS_PRED.max(axis=1, keepdims=True), "multilabel": CLS_PRED}
    want = sum(losses.bce(y[k], p[k]) + losses.batch_dice(y[k], p[k]) for k in y)
    np.testing.assert_allclose(loss(y, p).numpy(), want.numpy(), rtol=1e-6)


def test_make_loss_specs_and_options():
    bce, dice = losses.bce(SEG_TRUE, SEG_PRED).numpy(), losses.soft_dice(SEG_TRUE, SEG_PRED).numpy()
    np.testing.assert_allclose(losses.make_loss("bce+dice")(SEG_TRUE, SEG_PRED).numpy(), bce + dice, rtol=1e-6)
    for spec in ({"bce": 0.75, "dice": 0.25}, "0.75*bce + 0.25*dice"):
        np.testing.assert_allclose(losses.make_loss(spec)(SEG_TRUE, SEG_PRED).numpy(), 0.75 * bce + 0.25 * dice,
                                   rtol=1e-6)
    weighted = losses.make_loss({"bce": 1.0}, options={"bce": {"pos_weight": [2.0] * 4, "label_smoothing": 0.1}})
    np.testing.assert_allclose(weighted(SEG_TRUE, SEG_PRED).numpy(),
                               losses.bce(SEG_TRUE, SEG_PRED, pos_weight=[2.0] * 4, label_smoothing=0.1).numpy(),
                               rtol=1e-6)
    assert losses.make_loss("0.5*focal").__name__ == "0.5*focal"


@pytest.mark.parametrize("spec,options,match", [
    ("bce+tversky", None, "tversky"),
    ("bce*0.5", None, "cannot parse"),
    ({}, None, "none"),
    ("bce", {"dice": {"smooth": 2.0}}, "dice"),
])
def test_make_loss_rejects_bad_specs(spec, options, match):
    with pytest.raises(ValueError, match=match):
        losses.make_loss(spec, options=options)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError):
        losses.bce(SEG_TRUE, SEG_PRED[..., :3])


@settings(max_examples=25, deadline=None)
@given(st.integers(min_value=0, max_value=2**31 - 1))
def test_bounds_on_random_inputs(seed):
    rng = np.random.default_rng(seed)
    y = (rng.uniform(size=(2, 4, 8, 4)) > rng.uniform()).astype(np.float32)
    p = rng.uniform(size=(2, 4, 8, 4)).astype(np.float32)
    dice = losses.soft_dice(y, p).numpy()
    assert np.all((dice >= 0) & (dice <= 1))
    for fn in (losses.bce, losses.focal):
        value = fn(y, p).numpy()
        assert np.all(np.isfinite(value) & (value >= 0))
    assert np.all(losses.focal(y, p).numpy() <= losses.bce(y, p).numpy())
