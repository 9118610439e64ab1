"""Bytes to tensors at a model resolution: JPEGs to uint8 images, Kaggle RLE strings to uint8 masks (host side)."""

import math

import numpy as np
import tensorflow as tf

from steel_tpu.constants import CHANNELS, HEIGHT, WIDTH

# libjpeg's scaled IDCT: decoding at 1/2, 1/4 or 1/8 size costs less than a full decode (and far less than a full
# decode plus a resize), and the DCT-domain downscale is an anti-aliased one.
_JPEG_RATIOS = (8, 4, 2, 1)


def check_image_size(image_size):
    """(h, w) as ints, or a ValueError: at most the full 256x1600 (masks are sampled, never interpolated)."""
    h, w = (int(v) for v in image_size)
    if not (0 < h <= HEIGHT and 0 < w <= WIDTH):
        raise ValueError(f"image_size {tuple(image_size)}: each side must be in 1..{HEIGHT}x{WIDTH}")
    return h, w


def jpeg_ratio(image_size):
    """The largest libjpeg scale-down factor that still decodes at least `image_size` from a 256x1600 JPEG."""
    h, w = check_image_size(image_size)
    return next(r for r in _JPEG_RATIOS if HEIGHT // r >= h and WIDTH // r >= w)


def decode_gray(jpeg, *, image_size):
    """uint8 [256/r, 1600/r, 1]: the luma plane of a 256x1600 JPEG at libjpeg's scale 1/r for `image_size`.

    Severstal stores grey steel as 3 identical channels, so its chroma planes are flat (128): luma alone IS each
    channel, bit for bit, and decoding it skips the chroma IDCT, upsampling and colour conversion (~25% of a
    3-channel decode). to_luma or to_images finishes a batch: the rest of the resize (and the 3 channels).
    """
    ratio = jpeg_ratio(image_size)
    return tf.ensure_shape(tf.io.decode_jpeg(jpeg, channels=1, ratio=ratio), [HEIGHT // ratio, WIDTH // ratio, 1])


def to_luma(gray, *, image_size):
    """uint8 [B, h, w, 1] from a batch of decode_gray planes: an exact area resize, rounded; what training batches
    carry. The device makes the 3 channels (augment.to_channels, in the task's augmentation), so the host and the
    infeed move a third of the bytes: a host-side 3-channel copy cost 0.4-0.6 CPU ms per 256x1600 image, a fifth of
    a batch image's whole pipeline cost."""
    h, w = check_image_size(image_size)
    return gray if gray.shape[1:3] == (h, w) else _resized(gray, image_size=(h, w))


def to_channels(images):
    """[..., 1] grey planes -> [..., 3]: the encoders' input, three identical channels (as Severstal stores them);
    3-channel images pass unchanged."""
    return tf.broadcast_to(images, [*images.shape[:-1], CHANNELS])


@tf.function(jit_compile=True)
def to_images(gray, *, image_size):
    """uint8 [B, h, w, 3] from a batch of decode_gray planes: to_luma's resize, then 3 channels (scoring and
    validation batches).

    In XLA the resize, rounding and channel copies are one pass; tf.image.resize(method="area") takes ~0.6 ms
    per 256x1600 image and tf.tile on uint8 ~0.8 ms, more than the luma-only decode saves.
    """
    h, w = check_image_size(image_size)
    return to_channels(gray if gray.shape[1:3] == (h, w) else _resize(gray, h=h, w=w))


@tf.function(jit_compile=True)
def _resized(gray, *, image_size):
    return _resize(gray, h=image_size[0], w=image_size[1])


def _resize(gray, *, h, w):
    resized = _area_resize(_area_resize(tf.cast(gray, tf.float32), axis=2, size=w), axis=1, size=h)
    return tf.cast(tf.round(resized), tf.uint8)


def _area_resize(x, *, axis, size):
    """x resized to `size` along `axis` by exact box averaging (tf.image.resize's "area", up to rounding).

    An n -> m resize repeats every p = n/g inputs, q = m/g outputs (g = gcd): each output is a fixed weighted
    sum of at most ceil(p/q) + 1 inputs of its period, so the whole resize is a few fused multiply-adds.
    """
    n = x.shape[axis]
    if n == size:
        return x
    g = math.gcd(n, size)
    p, q = n // g, size // g
    shape = x.shape.as_list()
    periods = tf.reshape(x, shape[:axis] + [g, p] + shape[axis + 1 :])
    weights = area_weights(p, q)
    outputs = [tf.add_n([float(weights[i, j]) * tf.gather(periods, i, axis=axis + 1)
                         for i in range(p) if weights[i, j] > 1e-9]) for j in range(q)]
    return tf.reshape(tf.stack(outputs, axis=axis + 1), shape[:axis] + [size] + shape[axis + 1 :])


def area_weights(p, q):
    """[p, q]: the share of output j's box (p/q inputs wide) that input i covers."""
    scale = p / q
    lo, hi = np.arange(q) * scale, (np.arange(q) + 1) * scale
    inputs = np.arange(p)[:, None]
    return np.clip(np.minimum(hi, inputs + 1) - np.maximum(lo, inputs), 0, None) / scale


def _source_index(size, full):
    """Full-resolution index sampled by each of `size` output pixels: nearest to the pixel centre.

    The same mapping as tf.image.resize(method="nearest"), so masks decoded here equal full-size masks resized.
    """
    return np.minimum(np.floor((np.arange(size) + 0.5) * full / size).astype(np.int64), full - 1)


def decode_masks(rles, *, image_size):
    """uint8 [B, h, w, C] 0/1 masks of [B, C] RLE strings (static B and C), sampled at `image_size` pixel centres.

    The RLE strings are trusted (the shard builder validated them). Work grows with runs, not pixels: runs are
    cut into per-column intervals at the output resolution and painted in one fused XLA pass over the batch.
    """
    rles = tf.convert_to_tensor(rles, dtype=tf.string)
    if rles.shape.rank != 2 or not rles.shape.is_fully_defined():
        raise ValueError(f"decode_masks needs a static [B, C] batch of RLE strings, got shape {rles.shape}")
    batch, classes = rles.shape
    h, w = check_image_size(image_size)
    image, cls, col, top, bottom = _intervals(rles, h=h, w=w)
    slot = _slots(((image * classes + cls) * w) + col)
    k = tf.reduce_max(tf.concat([slot, [0]], axis=0)) + 1
    index = (((image * k + slot) * w + col) * classes + cls)[:, None]
    size = [batch * k * w * classes]
    # uint8 rows (< 256) paint ~3x faster than int16. Tops are stored flipped (255 - top) so that a table entry
    # left at 0 (top 255 with last row 0) paints nothing.
    flipped_tops = tf.scatter_nd(index, tf.cast(255 - top, tf.uint8), size)
    lasts = tf.scatter_nd(index, tf.cast(bottom - 1, tf.uint8), size)
    table = [batch, -1, w, classes]
    masks = _paint(tf.reshape(flipped_tops, table), tf.reshape(lasts, table), height=h)
    return tf.ensure_shape(masks, [batch, h, w, classes])


def _intervals(rles, *, h, w):
    """(image, class, output column, top, bottom) int32 of every non-empty [top, bottom) output-row interval."""
    batch, classes = rles.shape
    tokens = tf.strings.split(tf.reshape(rles, [-1]))
    pairs = tf.reshape(tf.strings.to_number(tokens.flat_values, out_type=tf.int32), [-1, 2])
    group = tf.cast(tokens.value_rowids()[0::2], tf.int32)  # image * classes + class of each run
    starts = pairs[:, 0] - 1
    ends = starts + pairs[:, 1]
    # Column-major runs are vertical strokes: cut each at column borders into one piece per column crossed.
    columns = tf.ragged.range(starts // HEIGHT, (ends - 1) // HEIGHT + 1)
    run = tf.cast(columns.value_rowids(), tf.int32)
    column = columns.flat_values
    top = tf.clip_by_value(tf.gather(starts, run) - column * HEIGHT, 0, HEIGHT)
    bottom = tf.clip_by_value(tf.gather(ends, run) - column * HEIGHT, 0, HEIGHT)
    # Output row i shows full row source_rows[i]: [top, bottom) covers the output rows counted below.
    first_row = tf.constant(np.searchsorted(_source_index(h, HEIGHT), np.arange(HEIGHT + 1)).astype(np.int32))
    output_column = np.full(WIDTH, -1, dtype=np.int32)
    output_column[_source_index(w, WIDTH)] = np.arange(w)
    pieces = tf.stack([tf.gather(group, run), tf.gather(tf.constant(output_column), column),
                       tf.gather(first_row, top), tf.gather(first_row, bottom)], axis=1)
    # Drop pieces in columns no output pixel samples, and those no output row samples.
    kept = (pieces[:, 1] >= 0) & (pieces[:, 3] > pieces[:, 2])
    group, col, top, bottom = tf.unstack(tf.boolean_mask(pieces, kept), axis=1)
    return group // classes, group % classes, col, top, bottom


def _slots(cell):
    """0, 1, 2, ... within each run of equal values of the nondecreasing `cell` (an interval's rank in its column)."""
    position = tf.range(tf.size(cell))
    new = tf.concat([tf.ones([tf.minimum(tf.size(cell), 1)], tf.bool), cell[1:] != cell[:-1]], axis=0)
    first = tf.boolean_mask(position, new)
    return position - tf.gather(first, tf.cumsum(tf.cast(new, tf.int32)) - 1)


@tf.function(jit_compile=True, reduce_retracing=True)
def _paint(flipped_tops, lasts, *, height):
    """uint8 [B, h, w, C] masks from [B, K, w, C] uint8 tables of inclusive [255 - top, last] row intervals.

    K (the most intervals in one column) varies by batch: XLA compiles once per K seen (1 to 3 on the synthetic
    Severstal-like masks). It fuses the comparisons into one vectorised pass that writes each mask byte once;
    the same math as TensorFlow ops costs ~10x more (a full-size pass per op), a tf.cumsum over rows ~50x more.
    """
    rows = tf.range(height)[None, None, :, None, None]
    # row >= top  <=>  255 - top >= 255 - row: the table is compared as stored, with no per-pixel flip.
    below_top = flipped_tops[:, :, None] >= tf.cast(255 - rows, tf.uint8)
    inside = below_top & (tf.cast(rows, tf.uint8) <= lasts[:, :, None])
    return tf.cast(tf.reduce_any(inside, axis=1), tf.uint8)
