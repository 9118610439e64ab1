"""Per-example losses (one float32 value per example, shape [B]) for segmentation and classification, in Keras
ops: the same code on the TensorFlow and the JAX backend."""

import re

from steel_tpu.keras_api import backend, ops

# Smallest probability margin float32 resolves just below 1.0 (ulp there is 6e-8): log(1e-7) ~ -16.1,
# so a confident wrong pixel costs a finite, bounded loss instead of inf.
EPS = 1e-7


def _float32(y_true, y_pred):
    # bfloat16 has 8 mantissa bits: sums over 256x1600 pixels and log() near 0/1 must happen in float32.
    return ops.cast(y_true, "float32"), ops.cast(y_pred, "float32")


def per_example(loss_fn, y_true, y_pred):
    """`loss_fn(y_true, y_pred)`, refused unless it is one value per example (shape [B]): a batch-mean scalar would be
    summed over replicas (an N-replica run would train with N x the gradient) and cannot be scaled to the global
    batch. What both backends' train steps call."""
    values = loss_fn(y_true, y_pred)
    if _rank(values) != 1:
        raise ValueError(f"loss {getattr(loss_fn, '__name__', loss_fn)} must return one value per example "
                         f"(shape [B]), got shape {tuple(values.shape)}")
    return values


def _rank(x):
    return len(x.shape)


def _mean_per_example(values):
    return ops.mean(values, axis=list(range(1, _rank(values))))


def _check_shapes(y_true, y_pred):
    if _rank(y_pred) < 2:
        raise ValueError(f"y_pred must be [B, ..., C], got shape {tuple(y_pred.shape)}")
    # Dimensions unknown while tracing (None) match anything.
    if _rank(y_true) != _rank(y_pred) or any(a is not None and b is not None and a != b
                                              for a, b in zip(y_true.shape, y_pred.shape)):
        raise ValueError(f"y_true shape {tuple(y_true.shape)} does not match y_pred shape {tuple(y_pred.shape)}")


def bce(y_true, y_pred, *, pos_weight=None, label_smoothing=0.0, from_logits=False):
    """Binary cross-entropy averaged over pixels and classes; `pos_weight` ([C]) scales the positive term."""
    y_true, y_pred = _float32(y_true, y_pred)
    _check_shapes(y_true, y_pred)
    if label_smoothing:
        y_true = y_true * (1.0 - label_smoothing) + 0.5 * label_smoothing
    if from_logits:
        log_p, log_not_p = ops.log_sigmoid(y_pred), ops.log_sigmoid(-y_pred)
    else:
        p = ops.clip(y_pred, EPS, 1.0 - EPS)
        log_p, log_not_p = ops.log(p), ops.log(1.0 - p)
    positive = y_true * log_p
    if pos_weight is not None:
        positive = positive * ops.convert_to_tensor(pos_weight, "float32")
    return _mean_per_example(-(positive + (1.0 - y_true) * log_not_p))


def cce(y_true, y_pred, *, class_weights=None):
    """Categorical cross-entropy of softmax maps over one-hot targets, averaged over pixels; `class_weights` ([C])
    scale each pixel's term by the weight of its true class (as Keras' class_weight does per sample)."""
    y_true, y_pred = _float32(y_true, y_pred)
    _check_shapes(y_true, y_pred)
    per_channel = y_true * ops.log(ops.clip(y_pred, EPS, 1.0))
    if class_weights is not None:
        per_channel = per_channel * ops.convert_to_tensor(class_weights, "float32")
    return _mean_per_example(-ops.sum(per_channel, axis=-1))


AUTO_POS_WEIGHT_MAX = 10.0


def auto_pos_weight(class_counts):
    """Per-class BCE positive weights from how many training images hold each class (`class_counts`):
    sqrt(n_max / n_c), clipped to 1..AUTO_POS_WEIGHT_MAX, so the commonest class keeps
    weight 1 and a class 10x rarer gets ~3.2 (the square root: full inverse frequency over-predicts rare classes)."""
    counts = [float(c) for c in class_counts]
    if not counts or max(counts) <= 0:
        raise ValueError(f"pos_weight auto: no training image holds a defect (class counts {class_counts})")
    weights = [(max(counts) / c) ** 0.5 if c > 0 else AUTO_POS_WEIGHT_MAX for c in counts]
    return tuple(min(AUTO_POS_WEIGHT_MAX, max(1.0, w)) for w in weights)


def soft_dice(y_true, y_pred, *, smooth=1.0):
    """Mean over classes of 1 - soft Dice, each class summed over the example's pixels (0 when perfect)."""
    y_true, y_pred = _float32(y_true, y_pred)
    _check_shapes(y_true, y_pred)
    spatial = list(range(1, _rank(y_pred) - 1))
    intersection = ops.sum(y_true * y_pred, axis=spatial)
    total = ops.sum(y_true, axis=spatial) + ops.sum(y_pred, axis=spatial)
    dice = (2.0 * intersection + smooth) / (total + smooth)
    return ops.mean(1.0 - dice, axis=-1)


def batch_dice(y_true, y_pred, *, smooth=1.0):
    """Mean over classes of 1 - soft Dice, each class summed over the pixels of the whole GLOBAL batch, given to
    every example (shape [B], all equal), so compute_average_loss over the global batch returns it once.

    Per-example Dice saturates at 1 - smooth / (predicted area + smooth) for a class an image lacks, so false
    positives there cost next to nothing; summed over the batch, they lower the Dice of the batch's defects.
    Under a tf.distribute strategy the sums are all-reduced over replicas (whose backward pass is an all-reduce
    too), so every replica count trains alike; under JAX the step sees the global batch (Keras' DataParallel
    shards it, XLA inserts the all-reduce), so the sums are already global."""
    y_true, y_pred = _float32(y_true, y_pred)
    _check_shapes(y_true, y_pred)
    pixels = list(range(_rank(y_pred) - 1))
    sums = [ops.sum(y_true * y_pred, axis=pixels), ops.sum(y_true + y_pred, axis=pixels)]
    if backend() == "tf":
        sums = _all_reduced(sums)
    intersection, total = sums
    dice = (2.0 * intersection + smooth) / (total + smooth)
    return ops.ones((ops.shape(y_pred)[0],), "float32") * ops.mean(1.0 - dice)


def _all_reduced(sums):
    import tensorflow as tf

    context = tf.distribute.get_replica_context()
    if context is None:
        raise ValueError("batch_dice sums over every replica's batch: call it in a replica context (strategy.run)")
    if context.num_replicas_in_sync > 1:
        return context.all_reduce(tf.distribute.ReduceOp.SUM, sums)
    return sums


batch_dice.all_reduces = True  # step.make_train_step reads it: not every strategy can all-reduce inside XLA


def focal(y_true, y_pred, *, gamma=2.0, alpha=0.25):
    """Binary focal loss (Lin et al. 2017) averaged over pixels and classes."""
    y_true, y_pred = _float32(y_true, y_pred)
    _check_shapes(y_true, y_pred)
    p = ops.clip(y_pred, EPS, 1.0 - EPS)
    positive = -alpha * y_true * ops.power(1.0 - p, gamma) * ops.log(p)
    negative = -(1.0 - alpha) * (1.0 - y_true) * ops.power(p, gamma) * ops.log(1.0 - p)
    return _mean_per_example(positive + negative)


def _lovasz_gradient(truth_sorted):
    """[..., P] gradient of the Lovasz extension of the Jaccard loss at pixels sorted by decreasing error
    (Berman et al. 2018, Alg. 1); the union is >= 1 at every position, so no division by zero."""
    positives = ops.sum(truth_sorted, axis=-1, keepdims=True)
    intersection = positives - ops.cumsum(truth_sorted, axis=-1)
    union = positives + ops.cumsum(1.0 - truth_sorted, axis=-1)
    jaccard = 1.0 - intersection / union
    return ops.concatenate([jaccard[..., :1], jaccard[..., 1:] - jaccard[..., :-1]], axis=-1)


def lovasz_hinge(y_true, y_pred):
    """Lovasz hinge (Berman et al. 2018) per example and class over the example's pixels, averaged over classes.

    The models end in a sigmoid: the hinge reads the logit log(p / (1 - p)) of the clipped probability."""
    y_true, y_pred = _float32(y_true, y_pred)
    _check_shapes(y_true, y_pred)
    p = ops.clip(y_pred, EPS, 1.0 - EPS)
    logits = ops.log(p) - ops.log(1.0 - p)
    classes = y_pred.shape[-1]
    # [B, C, P]: one Lovasz term per (example, class), so the loss stays per example.
    to_rows = lambda x: ops.transpose(ops.reshape(x, (ops.shape(x)[0], -1, classes)), (0, 2, 1))  # noqa: E731
    truth, logits = to_rows(y_true), to_rows(logits)
    errors = 1.0 - logits * (2.0 * truth - 1.0)
    # Decreasing error; the order among equal errors does not change the Lovasz extension's value.
    order = ops.argsort(-errors, axis=-1)
    errors_sorted = ops.take_along_axis(errors, order, axis=-1)
    grad = ops.stop_gradient(_lovasz_gradient(ops.take_along_axis(truth, order, axis=-1)))
    return ops.mean(ops.sum(ops.relu(errors_sorted) * grad, axis=-1), axis=-1)


TERMS = {"bce": bce, "cce": cce, "dice": soft_dice, "batch_dice": batch_dice, "focal": focal, "lovasz": lovasz_hinge}


def combined(weights, *, options=None):
    """A loss summing `weight * term(y_true, y_pred, **options[name])` over `weights` ({name: weight})."""
    options = options or {}
    unknown = sorted(set(weights) - set(TERMS)) + sorted(set(options) - set(weights))
    if unknown or not weights:
        raise ValueError(f"loss terms {unknown or '(none)'} not usable: choose from {sorted(TERMS)} "
                         f"(options only for terms that have a weight)")
    terms = [(name, float(w), TERMS[name], dict(options.get(name, {}))) for name, w in weights.items()]

    def loss(y_true, y_pred):
        return sum(w * fn(y_true, y_pred, **kwargs) for _, w, fn, kwargs in terms)

    loss.__name__ = "+".join(f"{w:g}*{name}" for name, w, _, _ in terms)
    loss.all_reduces = any(getattr(fn, "all_reduces", False) for _, _, fn, _ in terms)
    return loss


_TERM = re.compile(r"^\s*(?:(?P<weight>[0-9]*\.?[0-9]+)\s*\*\s*)?(?P<name>[a-z_]+)\s*$")


def parse_spec(spec):
    """`{"bce": 0.75, "dice": 0.25}`, `"bce+dice"` (weights 1) or `"0.75*bce+0.25*dice"` -> {name: weight}."""
    if isinstance(spec, dict):
        return {str(k): float(v) for k, v in spec.items()}
    weights = {}
    for part in str(spec).split("+"):
        match = _TERM.match(part)
        if not match:
            raise ValueError(f"loss spec {spec!r}: cannot parse term {part!r} (expected name or weight*name)")
        weights[match["name"]] = weights.get(match["name"], 0.0) + float(match["weight"] or 1.0)
    return weights


def make_loss(spec, *, options=None):
    """The per-example loss named by `spec` (see parse_spec); `options` = {term: kwargs}, e.g. pos_weight."""
    return combined(parse_spec(spec), options=options)
