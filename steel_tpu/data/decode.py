"""Bytes to tensors: JPEG to a uint8 image and a batch of Kaggle RLE strings to uint8 masks, at a model resolution."""

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
    """uint8 [h, w, 1] from the bytes of a 256x1600 JPEG: the luma plane only, scaled decode, then an area resize.

    Severstal stores grey steel as 3 identical channels, so its chroma planes are flat (128): luma alone IS each
    channel, bit for bit, and decoding it skips the chroma IDCT, upsampling and colour conversion (~25% of a
    3-channel decode). to_rgb restores the 3 channels per batch.
    """
    h, w = check_image_size(image_size)
    ratio = jpeg_ratio(image_size)
    image = tf.io.decode_jpeg(jpeg, channels=1, ratio=ratio)
    if (HEIGHT // ratio, WIDTH // ratio) != (h, w):
        image = tf.cast(tf.round(tf.image.resize(image, (h, w), method="area")), tf.uint8)
    return tf.ensure_shape(image, [h, w, 1])


@tf.function(jit_compile=True)
def to_rgb(gray):
    """uint8 [B, h, w, 3] from [B, h, w, 1]: XLA writes the 3 copies in one pass (tf.tile on uint8 is ~15x slower)."""
    return tf.broadcast_to(gray, [*gray.shape[:3], CHANNELS])


def source_rows(size, full):
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
    index = tf.stack([image, slot, col, cls], axis=1)
    shape = tf.stack([batch, k, w, classes])
    # uint8 rows (< 256) paint ~3x faster than int16; an inclusive last row keeps the bounds in range.
    # Unused slots keep top 255 > last 0: they paint nothing.
    tops = tf.tensor_scatter_nd_update(tf.fill(shape, tf.constant(255, tf.uint8)), index, tf.cast(top, tf.uint8))
    lasts = tf.scatter_nd(index, tf.cast(bottom - 1, tf.uint8), shape)
    return tf.ensure_shape(_paint(tops, lasts, height=h), [batch, h, w, classes])


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
    first_row = tf.constant(np.searchsorted(source_rows(h, HEIGHT), np.arange(HEIGHT + 1)).astype(np.int32))
    output_column = np.full(WIDTH, -1, dtype=np.int32)
    output_column[source_rows(w, WIDTH)] = np.arange(w)
    top, bottom = tf.gather(first_row, top), tf.gather(first_row, bottom)
    out_col = tf.gather(tf.constant(output_column), column)
    keep = (out_col >= 0) & (bottom > top)
    group = tf.boolean_mask(tf.gather(group, run), keep)
    return (group // classes, group % classes, tf.boolean_mask(out_col, keep), tf.boolean_mask(top, keep),
            tf.boolean_mask(bottom, keep))


def _slots(cell):
    """0, 1, 2, ... within each run of equal values of the nondecreasing `cell` (an interval's rank in its column)."""
    position = tf.range(tf.size(cell))
    new = tf.concat([tf.ones([tf.minimum(tf.size(cell), 1)], tf.bool), cell[1:] != cell[:-1]], axis=0)
    first = tf.boolean_mask(position, new)
    return position - tf.gather(first, tf.cumsum(tf.cast(new, tf.int32)) - 1)


@tf.function(jit_compile=True)
def _paint(tops, lasts, *, height):
    """uint8 [B, h, w, C] masks from [B, K, w, C] uint8 tables of inclusive [top, last] row intervals.

    K (the most intervals in one column) varies by batch: XLA compiles once per K seen (1 to 3 on Severstal-like
    masks). It fuses the comparisons into one vectorised pass that writes each mask byte once; the same math as
    TensorFlow ops costs ~10x more (a full-size pass per op), a tf.cumsum over rows ~50x more.
    """
    rows = tf.cast(tf.range(height), tf.uint8)[None, None, :, None, None]
    inside = (rows >= tops[:, :, None]) & (rows <= lasts[:, :, None])
    return tf.cast(tf.reduce_any(inside, axis=1), tf.uint8)
