"""Batched, XLA-compilable, stateless-seeded augmentation run on the device inside the train step, in Keras ops (the
same arithmetic on TensorFlow and JAX; only the random draws are the backend's own, device/draws.py)."""

# Defined in config (importable without TensorFlow); re-exported because augment_batch takes one.
from steel_tpu.config import AugmentConfig  # noqa: F401
from steel_tpu.constants import CHANNELS
from steel_tpu.device import draws as draws_lib
from steel_tpu.keras_api import ops

_MAX_PIXEL = 255.0
_BITS = 1 << 24


def eval_preprocess(images):
    """uint8 [B,H,W,3] -> float32 0..255, no augmentation (the encoders normalise inside)."""
    return ops.cast(images, "float32")


def to_channels(images):
    """[..., 1] grey planes -> [..., 3], the encoders' input (three identical channels, as Severstal stores them),
    on the device; 3-channel images pass unchanged."""
    return ops.broadcast_to(images, (*images.shape[:-1], CHANNELS))


def labels_from_masks(masks):
    """float32 [B, C]: 1 where class c has any pixel > 0.5 in the (possibly cropped) mask."""
    present = ops.max(ops.cast(masks, "float32"), axis=(1, 2)) > 0.5
    return ops.cast(present, "float32")


def classifier_labels(masks, augmented_masks, *, config):
    """[B, C] classifier targets: from the augmented mask if config.label_from_crop, else the original."""
    # From the crop by default: a crop that misses every defect pixel is a clean image as far as the model
    # can see, and keeping the full image's positive label would train it on targets its input cannot support.
    return labels_from_masks(augmented_masks if config.label_from_crop else masks)


def augment_batch(images, masks, *, seed, config):
    """Augment uint8 images [B,H,W,K] (K = 1, the luma plane training batches carry, or 3) and masks [B,H,W,C] with
    a [2] int seed (or the backend's draws, draws.make) -> float32 [B,ch,cw,K], [B,ch,cw,C]; every channel gets
    the same draws."""
    images, masks = ops.convert_to_tensor(images), ops.convert_to_tensor(masks)
    batch, height, width, crop_h, crop_w = _check_inputs(images, masks, config)
    geometry, photometric, cutout = draws_lib.make(seed).split(3)
    channels = images.shape[-1]
    # One gather per axis over image and mask together: they cannot get different windows or flips.
    both = ops.concatenate([images, masks], axis=-1)
    both = _crop_and_flip(both, draws=geometry, crop=(crop_h, crop_w), size=(height, width), config=config,
                          masks_at=channels)
    both = ops.cast(both, "float32")
    out_images, out_masks = both[..., :channels], both[..., channels:]
    out_images = _photometric(out_images, draws=photometric, batch=batch, config=config)
    if config.cutout:
        out_images = _cutout(out_images, draws=cutout, batch=batch, config=config)
    return out_images, out_masks


def _static(shape):
    return all(isinstance(d, int) for d in shape)


def _check_inputs(images, masks, config):
    dtypes = ops.dtype(images), ops.dtype(masks)
    if dtypes != ("uint8", "uint8"):
        raise TypeError(f"augment_batch: images and masks must be uint8, got {dtypes[0]} and {dtypes[1]}")
    if len(images.shape) != 4 or not _static(images.shape):
        raise ValueError(f"augment_batch: images need a static [B,H,W,K] shape (TPU), got {tuple(images.shape)}")
    if tuple(masks.shape[:3]) != tuple(images.shape[:3]) or not _static(masks.shape):
        raise ValueError(f"augment_batch: masks {tuple(masks.shape)} must be static and match images "
                         f"{tuple(images.shape)}")
    batch, height, width, _ = images.shape
    crop_h = height if config.crop_height is None else config.crop_height
    crop_w = width if config.crop_width is None else config.crop_width
    if crop_h > height or crop_w > width:
        raise ValueError(f"augment_batch: crop {crop_h}x{crop_w} is larger than the input {height}x{width}")
    if config.cutout and (config.cutout_size[0] > crop_h or config.cutout_size[1] > crop_w):
        raise ValueError(f"augment_batch: cutout_size {config.cutout_size} exceeds the crop {crop_h}x{crop_w}")
    return batch, height, width, crop_h, crop_w


def _axis_indices(*, draws, batch, crop, size, flip, start=None):
    """[B, crop] source indices along one axis: a random window start (or `start` [B, 1] where the example's
    crop is biased toward a defect), reversed where the example flips."""
    start_draws, flip_draws = draws.split(2)
    uniform = start_draws.ints([batch, 1], 0, size - crop + 1)
    start = uniform if start is None else ops.where(start >= 0, start, uniform)
    steps = ops.arange(crop, dtype="int32")[None, :]
    if flip:
        flipped = flip_draws.ints([batch, 1], 0, 2) > 0
        steps = ops.where(flipped, crop - 1 - steps, steps)
    return start + steps


def _crop_and_flip(both, *, draws, crop, size, config, masks_at=None):
    """Per-example window + flips as index gathers: static output shape, exact pixels, XLA kernels everywhere
    (unlike ImageProjectiveTransform or crop_and_resize, which interpolates)."""
    batch = both.shape[0]
    # A prefix of a split does not depend on its length: the row and column streams are those of an unbiased
    # run, so defect_crop_prob=0 reproduces the crops of before the option existed.
    row_draws, col_draws, bias_draws = draws.split(3)
    starts = (None, None)
    if config.defect_crop_prob > 0 and crop != size:
        starts = _defect_starts(both[..., masks_at:], draws=bias_draws, crop=crop, size=size, config=config)
    rows = _axis_indices(draws=row_draws, batch=batch, crop=crop[0], size=size[0], flip=config.vflip,
                         start=starts[0])
    cols = _axis_indices(draws=col_draws, batch=batch, crop=crop[1], size=size[1], flip=config.hflip,
                         start=starts[1])
    both = ops.take_along_axis(both, rows[:, :, None, None], axis=1)
    return ops.take_along_axis(both, cols[:, None, :, None], axis=2)


def _unit(draws, shape):
    """float32 draws in [0, 1) from 24-bit integer draws: integer draws agree between TensorFlow's kernels and XLA's
    (float ones turn bits into floats differently, measured on CPU); 2**24 values are exact in float32."""
    return ops.cast(draws.ints(shape, 0, _BITS), "float32") * (1.0 / _BITS)


def _defect_starts(masks, *, draws, crop, size, config):
    """([B, 1] row starts, [B, 1] col starts) or None per axis: for an example drawn with probability
    config.defect_crop_prob that has a defect, a window around one pixel of one of its classes (classes drawn
    in proportion to config.defect_crop_weights among those present, the pixel uniformly among the class's);
    -1 elsewhere, where _crop_and_flip keeps the uniform start."""
    batch, height, width, classes = masks.shape
    use_draws, class_draws, pixel_draws, row_draws, col_draws = draws.split(5)
    present = ops.max(ops.cast(masks, "float32"), axis=(1, 2)) > 0.5  # [B, C]
    weights = ops.where(present, ops.convert_to_tensor(config.defect_crop_weights, "float32")[None, :], 0.0)
    total = ops.sum(weights, axis=1, keepdims=True)
    biased = ops.logical_and(_unit(use_draws, [batch, 1]) < config.defect_crop_prob, total > 0)
    # Inverse-CDF draw of the class: the first class whose cumulative weight exceeds u * total.
    u = _unit(class_draws, [batch, 1]) * total
    cls = ops.sum(ops.cast(ops.cumsum(weights, axis=1) <= u, "int32"), axis=1)
    cls = ops.minimum(cls, classes - 1)
    flat = ops.reshape(ops.cast(masks, "float32"), (batch, height * width, classes))
    chosen = ops.take_along_axis(flat, cls[:, None, None], axis=2)[..., 0] > 0.5  # [B, H*W]
    # A uniformly chosen pixel of the class: the argmax of integer noise over its pixels (static shapes, no
    # where()/nonzero, which XLA cannot size).
    noise = pixel_draws.ints([batch, height * width], 0, _BITS)
    pixel = ops.cast(ops.argmax(ops.where(chosen, noise, -1), axis=1), "int32")[:, None]
    starts = []
    for center, length, window, axis_draws in ((pixel // width, height, crop[0], row_draws),
                                               (pixel % width, width, crop[1], col_draws)):
        low = ops.maximum(center - window + 1, 0)
        span = ops.minimum(center, length - window) - low + 1  # >= 1: every window through `center` fits
        offset = ops.minimum(ops.cast(_unit(axis_draws, [batch, 1]) * ops.cast(span, "float32"), "int32"),
                             span - 1)
        starts.append(ops.where(biased, low + offset, -1))
    return starts


def _uniform(draws, batch, half_width, center=0.0):
    """[B,1,1,1] per-example draws in center ± half_width, broadcastable over pixels."""
    return center + half_width * (2.0 * _unit(draws, [batch, 1, 1, 1]) - 1.0)


def _photometric(images, *, draws, batch, config):
    """Gamma, then contrast around the image mean, then brightness; one draw per example for all channels."""
    gamma_draws, contrast_draws, brightness_draws = draws.split(3)
    if config.gamma:
        # Gamma first, while the input is still inside 0..255, so the power never sees a negative base.
        images = _MAX_PIXEL * ops.power(images / _MAX_PIXEL, _uniform(gamma_draws, batch, config.gamma, center=1.0))
    if config.contrast:
        mean = ops.mean(images, axis=(1, 2, 3), keepdims=True)
        images = (images - mean) * _uniform(contrast_draws, batch, config.contrast, center=1.0) + mean
    if config.brightness:
        images = images + _MAX_PIXEL * _uniform(brightness_draws, batch, config.brightness)
    return ops.clip(images, 0.0, _MAX_PIXEL)


def _cutout(images, *, draws, batch, config):
    """Zero config.cutout boxes of config.cutout_size per image, each fully inside the image."""
    # The mask is left unchanged: as in the Cutout paper the box is an occlusion, not a removal. The steel
    # and its defect are still there, so the target keeps them and the model learns to complete a defect
    # from the context around the box (removal is what a crop does, and there the target follows).
    _, height, width, _ = images.shape
    box_h, box_w = config.cutout_size
    row_draws, col_draws = draws.split(2)
    shape = [batch, config.cutout, 1, 1]
    top = row_draws.ints(shape, 0, height - box_h + 1)
    left = col_draws.ints(shape, 0, width - box_w + 1)
    rows = ops.arange(height, dtype="int32")[None, None, :, None]
    cols = ops.arange(width, dtype="int32")[None, None, None, :]
    # Comparisons against iota instead of scatter: dense, static-shaped, cheap for the TPU's vector units.
    inside = ops.logical_and(ops.logical_and(rows >= top, rows < top + box_h),
                             ops.logical_and(cols >= left, cols < left + box_w))
    covered = ops.any(inside, axis=1)[..., None]
    return ops.where(covered, ops.zeros_like(images), images)
