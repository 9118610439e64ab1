"""Batched, XLA-compilable, stateless-seeded augmentation run on the device inside the replicated step."""

import tensorflow as tf

# Defined in config (importable without TensorFlow); re-exported because augment_batch takes one.
from steel_tpu.config import AugmentConfig  # noqa: F401

_MAX_PIXEL = 255.0


def eval_preprocess(images):
    """uint8 [B,H,W,3] -> float32 0..255, no augmentation (the encoders normalise inside)."""
    return tf.cast(images, tf.float32)


def labels_from_masks(masks):
    """float32 [B, C]: 1 where class c has any pixel > 0.5 in the (possibly cropped) mask."""
    present = tf.reduce_max(tf.cast(masks, tf.float32), axis=[1, 2]) > 0.5
    return tf.cast(present, tf.float32)


def classifier_labels(masks, augmented_masks, *, config):
    """[B, C] classifier targets: from the augmented mask if config.label_from_crop, else the original."""
    # From the crop by default: a crop that misses every defect pixel is a clean image as far as the model
    # can see, and keeping the full image's positive label would train it on targets its input cannot support.
    return labels_from_masks(augmented_masks if config.label_from_crop else masks)


def augment_batch(images, masks, *, seed, config):
    """Augment uint8 images [B,H,W,K] (K = 1, the luma plane training batches carry, or 3) and masks [B,H,W,C] with
    a [2] int seed -> float32 [B,ch,cw,K], [B,ch,cw,C]; every channel gets the same draws."""
    images, masks = tf.convert_to_tensor(images), tf.convert_to_tensor(masks)
    batch, height, width, crop_h, crop_w = _check_inputs(images, masks, config)
    geometry_seed, photometric_seed, cutout_seed = _split(_check_seed(seed), num=3)
    channels = images.shape[-1]
    # One gather per axis over image and mask together: they cannot get different windows or flips.
    both = tf.concat([images, masks], axis=-1)
    both = _crop_and_flip(both, seed=geometry_seed, crop=(crop_h, crop_w), size=(height, width), config=config,
                          masks_at=channels)
    both = tf.cast(both, tf.float32)
    out_images, out_masks = both[..., :channels], both[..., channels:]
    out_images = _photometric(out_images, seed=photometric_seed, batch=batch, config=config)
    if config.cutout:
        out_images = _cutout(out_images, seed=cutout_seed, batch=batch, config=config)
    return out_images, out_masks


def _check_inputs(images, masks, config):
    if images.dtype != tf.uint8 or masks.dtype != tf.uint8:
        raise TypeError(f"augment_batch: images and masks must be uint8, got {images.dtype} and {masks.dtype}")
    if images.shape.rank != 4 or not images.shape.is_fully_defined():
        raise ValueError(f"augment_batch: images need a static [B,H,W,K] shape (TPU), got {images.shape}")
    if masks.shape[:3] != images.shape[:3] or not masks.shape.is_fully_defined():
        raise ValueError(f"augment_batch: masks {masks.shape} must be static and match images {images.shape}")
    batch, height, width, _ = images.shape
    crop_h = height if config.crop_height is None else config.crop_height
    crop_w = width if config.crop_width is None else config.crop_width
    if crop_h > height or crop_w > width:
        raise ValueError(f"augment_batch: crop {crop_h}x{crop_w} is larger than the input {height}x{width}")
    if config.cutout and (config.cutout_size[0] > crop_h or config.cutout_size[1] > crop_w):
        raise ValueError(f"augment_batch: cutout_size {config.cutout_size} exceeds the crop {crop_h}x{crop_w}")
    return batch, height, width, crop_h, crop_w


def _check_seed(seed):
    seed = tf.convert_to_tensor(seed)
    if seed.shape != [2] or not seed.dtype.is_integer:
        raise ValueError(f"augment_batch: seed must be an integer tensor of shape [2], got {seed.dtype} {seed.shape}")
    return _canonical(seed)


def _canonical(seed):
    """The [2] seed with each element reduced to 31 bits (int64)."""
    # The TF and XLA kernels of the stateless RNG ops agree only for seed elements in [0, 2**31) (measured on
    # CPU: negative or wider elements give different streams); keeping seeds there lets an eager debugging
    # run reproduce the jitted step exactly.
    return tf.bitwise.bitwise_and(tf.cast(seed, tf.int64), 0x7FFFFFFF)


def _split(seed, *, num):
    """`num` independent canonical [2] seeds derived from one."""
    return tf.unstack(_canonical(tf.random.experimental.stateless_split(seed, num=num)))


def _axis_indices(*, seed, batch, crop, size, flip, start=None):
    """[B, crop] source indices along one axis: a random window start (or `start` [B, 1] where the example's
    crop is biased toward a defect), reversed where the example flips."""
    start_seed, flip_seed = _split(seed, num=2)
    uniform = tf.random.stateless_uniform([batch, 1], seed=start_seed, minval=0, maxval=size - crop + 1,
                                          dtype=tf.int32)
    start = uniform if start is None else tf.where(start >= 0, start, uniform)
    steps = tf.range(crop, dtype=tf.int32)[None, :]
    if flip:
        flipped = tf.random.stateless_uniform([batch, 1], seed=flip_seed, minval=0, maxval=2, dtype=tf.int32) > 0
        steps = tf.where(flipped, crop - 1 - steps, steps)
    return start + steps


def _crop_and_flip(both, *, seed, crop, size, config, masks_at=None):
    """Per-example window + flips as index gathers: static output shape, exact pixels, XLA kernels everywhere
    (unlike ImageProjectiveTransform or crop_and_resize, which interpolates)."""
    batch = both.shape[0]
    # A prefix of stateless_split's output does not depend on `num`: the row and column streams are those of
    # an unbiased run, so defect_crop_prob=0 reproduces the crops of before the option existed.
    row_seed, col_seed, bias_seed = _split(seed, num=3)
    starts = (None, None)
    if config.defect_crop_prob > 0 and crop != size:
        starts = _defect_starts(both[..., masks_at:], seed=bias_seed, crop=crop, size=size, config=config)
    rows = _axis_indices(seed=row_seed, batch=batch, crop=crop[0], size=size[0], flip=config.vflip, start=starts[0])
    cols = _axis_indices(seed=col_seed, batch=batch, crop=crop[1], size=size[1], flip=config.hflip, start=starts[1])
    both = tf.gather(both, rows, axis=1, batch_dims=1)
    return tf.gather(both, cols, axis=2, batch_dims=1)


def _unit(seed, shape):
    """float32 draws in [0, 1) from 24-bit integer draws (see _uniform: integer draws agree under XLA)."""
    bits = tf.random.stateless_uniform(shape, seed=seed, minval=0, maxval=1 << 24, dtype=tf.int32)
    return tf.cast(bits, tf.float32) * (1.0 / (1 << 24))


def _defect_starts(masks, *, seed, crop, size, config):
    """([B, 1] row starts, [B, 1] col starts) or None per axis: for an example drawn with probability
    config.defect_crop_prob that has a defect, a window around one pixel of one of its classes (classes drawn
    in proportion to config.defect_crop_weights among those present, the pixel uniformly among the class's);
    -1 elsewhere, where _crop_and_flip keeps the uniform start."""
    batch, height, width, classes = masks.shape
    use_seed, class_seed, pixel_seed, row_seed, col_seed = _split(seed, num=5)
    present = tf.reduce_max(tf.cast(masks, tf.float32), axis=[1, 2]) > 0.5  # [B, C]
    weights = tf.where(present, tf.constant(config.defect_crop_weights, tf.float32)[None, :], 0.0)
    total = tf.reduce_sum(weights, axis=1, keepdims=True)
    biased = (_unit(use_seed, [batch, 1]) < config.defect_crop_prob) & (total > 0)
    # Inverse-CDF draw of the class: the first class whose cumulative weight exceeds u * total.
    u = _unit(class_seed, [batch, 1]) * total
    cls = tf.reduce_sum(tf.cast(tf.cumsum(weights, axis=1) <= u, tf.int32), axis=1)
    cls = tf.minimum(cls, classes - 1)
    chosen = tf.gather(tf.reshape(tf.cast(masks, tf.float32), [batch, height * width, classes]), cls, axis=2,
                       batch_dims=1) > 0.5  # [B, H*W]
    # A uniformly chosen pixel of the class: the argmax of integer noise over its pixels (static shapes, no
    # where()/nonzero, which XLA cannot size).
    noise = tf.random.stateless_uniform([batch, height * width], seed=pixel_seed, minval=0, maxval=1 << 24,
                                        dtype=tf.int32)
    pixel = tf.argmax(tf.where(chosen, noise, -1), axis=1, output_type=tf.int32)[:, None]
    starts = []
    for center, length, window, axis_seed in ((pixel // width, height, crop[0], row_seed),
                                              (pixel % width, width, crop[1], col_seed)):
        low = tf.maximum(center - window + 1, 0)
        span = tf.minimum(center, length - window) - low + 1  # >= 1: every window through `center` fits
        offset = tf.minimum(tf.cast(_unit(axis_seed, [batch, 1]) * tf.cast(span, tf.float32), tf.int32), span - 1)
        starts.append(tf.where(biased, low + offset, -1))
    return starts


def _uniform(seed, batch, half_width, center=0.0):
    """[B,1,1,1] per-example draws in center ± half_width, broadcastable over pixels."""
    # Built from 24-bit integer draws: float stateless_uniform's XLA kernel turns bits into floats
    # differently from the TF kernel (measured on CPU), integer draws agree, so a jitted step and an
    # eager debugging run see the same numbers. 2**24 values are exact in float32.
    bits = tf.random.stateless_uniform([batch, 1, 1, 1], seed=seed, minval=0, maxval=1 << 24, dtype=tf.int32)
    unit = tf.cast(bits, tf.float32) * (1.0 / (1 << 24))
    return center + half_width * (2.0 * unit - 1.0)


def _photometric(images, *, seed, batch, config):
    """Gamma, then contrast around the image mean, then brightness; one draw per example for all channels."""
    gamma_seed, contrast_seed, brightness_seed = _split(seed, num=3)
    if config.gamma:
        # Gamma first, while the input is still inside 0..255, so the power never sees a negative base.
        images = _MAX_PIXEL * tf.pow(images / _MAX_PIXEL, _uniform(gamma_seed, batch, config.gamma, center=1.0))
    if config.contrast:
        mean = tf.reduce_mean(images, axis=[1, 2, 3], keepdims=True)
        images = (images - mean) * _uniform(contrast_seed, batch, config.contrast, center=1.0) + mean
    if config.brightness:
        images = images + _MAX_PIXEL * _uniform(brightness_seed, batch, config.brightness)
    return tf.clip_by_value(images, 0.0, _MAX_PIXEL)


def _cutout(images, *, seed, batch, config):
    """Zero config.cutout boxes of config.cutout_size per image, each fully inside the image."""
    # The mask is left unchanged: as in the Cutout paper the box is an occlusion, not a removal. The steel
    # and its defect are still there, so the target keeps them and the model learns to complete a defect
    # from the context around the box (removal is what a crop does, and there the target follows).
    _, height, width, _ = images.shape
    box_h, box_w = config.cutout_size
    row_seed, col_seed = _split(seed, num=2)
    shape = [batch, config.cutout, 1, 1]
    top = tf.random.stateless_uniform(shape, seed=row_seed, minval=0, maxval=height - box_h + 1, dtype=tf.int32)
    left = tf.random.stateless_uniform(shape, seed=col_seed, minval=0, maxval=width - box_w + 1, dtype=tf.int32)
    rows = tf.range(height, dtype=tf.int32)[None, None, :, None]
    cols = tf.range(width, dtype=tf.int32)[None, None, None, :]
    # Comparisons against iota instead of scatter: dense, static-shaped, cheap for the TPU's vector units.
    inside = (rows >= top) & (rows < top + box_h) & (cols >= left) & (cols < left + box_w)
    covered = tf.reduce_any(inside, axis=1)[..., None]
    return tf.where(covered, tf.zeros_like(images), images)
