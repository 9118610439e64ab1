"""The tf.train.Example schema of a shard record: build on the host, parse in the graph."""

import tensorflow as tf

from steel_tpu.constants import NUM_CLASSES

SCHEMA_VERSION = 1

# Feature keys, one place so the writer, the pipeline and `verify` cannot drift apart.
IMAGE_ID = "image_id"
IMAGE = "image"  # the ORIGINAL JPEG bytes, never re-encoded
HEIGHT = "height"
WIDTH = "width"
RLE = "rle"  # NUM_CLASSES strings, "" where the class is absent (test shards: all "")
PRESENT = "present"  # NUM_CLASSES int64 0/1
AREA = "area"  # NUM_CLASSES int64 pixel counts at full resolution
FOLD = "fold"  # int64; -1 for test shards

FEATURES = {
    IMAGE_ID: tf.io.FixedLenFeature([], tf.string),
    IMAGE: tf.io.FixedLenFeature([], tf.string),
    HEIGHT: tf.io.FixedLenFeature([], tf.int64),
    WIDTH: tf.io.FixedLenFeature([], tf.int64),
    RLE: tf.io.FixedLenFeature([NUM_CLASSES], tf.string),
    PRESENT: tf.io.FixedLenFeature([NUM_CLASSES], tf.int64),
    AREA: tf.io.FixedLenFeature([NUM_CLASSES], tf.int64),
    FOLD: tf.io.FixedLenFeature([], tf.int64),
}


def _bytes(values):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))


def _ints(values):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=values))


def serialize(*, image_id, jpeg_bytes, height, width, rles, areas, fold):
    """One record as serialized bytes; `rles` and `areas` have one entry per class."""
    if len(rles) != NUM_CLASSES or len(areas) != NUM_CLASSES:
        raise ValueError(f"{image_id}: expected {NUM_CLASSES} RLE strings and areas")
    example = tf.train.Example(
        features=tf.train.Features(
            feature={
                IMAGE_ID: _bytes([image_id.encode()]),
                IMAGE: _bytes([jpeg_bytes]),
                HEIGHT: _ints([height]),
                WIDTH: _ints([width]),
                RLE: _bytes([r.encode() for r in rles]),
                PRESENT: _ints([int(a > 0) for a in areas]),
                AREA: _ints([int(a) for a in areas]),
                FOLD: _ints([fold]),
            }
        )
    )
    # Deterministic map order: the same image gives the same bytes, so a rebuilt shard has the same sha256.
    return example.SerializeToString(deterministic=True)


def parse(serialized):
    """Parse one serialized record (a scalar string tensor) into a dict of tensors, in the graph."""
    return tf.io.parse_single_example(serialized, FEATURES)


def parse_numpy(serialized):
    """Parse one record on the host into plain Python values (for `verify` and tests)."""
    example = tf.train.Example.FromString(serialized)
    f = example.features.feature
    return {
        IMAGE_ID: f[IMAGE_ID].bytes_list.value[0].decode(),
        IMAGE: f[IMAGE].bytes_list.value[0],
        HEIGHT: f[HEIGHT].int64_list.value[0],
        WIDTH: f[WIDTH].int64_list.value[0],
        RLE: [v.decode() for v in f[RLE].bytes_list.value],
        PRESENT: list(f[PRESENT].int64_list.value),
        AREA: list(f[AREA].int64_list.value),
        FOLD: f[FOLD].int64_list.value[0],
    }
