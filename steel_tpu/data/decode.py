"""Bytes to tensors: JPEG to a uint8 image and a batch of Kaggle RLE strings to uint8 masks, at a model resolution."""

import numpy as np
import tensorflow as tf

from steel_tpu.constants import CHANNELS, HEIGHT, WIDTH

# libjpeg's scaled IDCT: decoding at 1/2, 1/4 or 1/8 size costs less than a full decode (and far less than a full
# decode plus a resize), and the DCT-domain downscale is an anti-aliased one.
_JPEG_RATIOS = (8, 4, 2, 1)
# Painting with K intervals per column is compiled once per K bucket: powers of two up to 128, the most intervals
# a 256-row column can hold (alternating rows).
_K_BUCKETS = tuple(2**i for i in range(8))


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


def decode_image(jpeg, *, image_size):
    """uint8 [h, w, 3] from the bytes of a 256x1600 JPEG: scaled decode, then an area resize if still needed."""
    h, w = check_image_size(image_size)
    ratio = jpeg_ratio(image_size)
    image = tf.io.decode_jpeg(jpeg, channels=CHANNELS, ratio=ratio)
    if (HEIGHT // ratio, WIDTH // ratio) != (h, w):
        image = tf.cast(tf.round(tf.image.resize(image, (h, w), method="area")), tf.uint8)
    return tf.ensure_shape(image, [h, w, CHANNELS])


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
    bucket = tf.reduce_sum(tf.cast(k > tf.constant(_K_BUCKETS[:-1]), tf.int32))
    index = tf.stack([image, slot, col, cls], axis=1)
    # uint8 bounds (rows < 256) paint ~3x faster than int16; the inclusive last row keeps them in range.
    top, last = tf.cast(top, tf.uint8), tf.cast(bottom - 1, tf.uint8)

    def paint(k_static):
        shape = [batch, k_static, w, classes]
        # Unused slots get top 255 > last 0: they paint nothing.
        tops = tf.tensor_scatter_nd_update(tf.fill(shape, tf.constant(255, tf.uint8)), index, top)
        return _paint(tops, tf.scatter_nd(index, last, shape), height=h)

    return tf.switch_case(bucket, [lambda k=k: paint(k) for k in _K_BUCKETS])


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
    """uint8 [B, h, w, C] from [B, K, w, C] uint8 tables of inclusive [top, last] row intervals.

    XLA fuses the comparisons into one vectorised pass that writes each mask byte once; the same math as separate
    TensorFlow ops costs ~10x more (a full-size pass per op), and tf.cumsum over rows ~50x more.
    """
    rows = tf.cast(tf.range(height), tf.uint8)[None, :, None, None]
    inside = tf.zeros([tops.shape[0], height, tops.shape[2], tops.shape[3]], tf.bool)
    for k in range(tops.shape[1]):
        inside |= (rows >= tops[:, k, None]) & (rows <= lasts[:, k, None])
    return tf.cast(inside, tf.uint8)
