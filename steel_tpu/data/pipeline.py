"""tf.data pipelines over TFRecord shards: sampled training batches, and padded, ordered evaluation and prediction."""

import collections
import math
import posixpath

import numpy as np
import tensorflow as tf

from steel_tpu.constants import CLASS_IDS, HEIGHT, WIDTH
from steel_tpu.data import example
from steel_tpu.data.decode import check_image_size, decode_gray, decode_masks, to_images, to_luma
from steel_tpu.data.shard_folder import ShardFolder, holds_shards
from steel_tpu.data.source import list_jpegs

AUTOTUNE = tf.data.AUTOTUNE
# A fixed cycle, not AUTOTUNE: the interleave order, hence the data a seed gives, must not depend on the host's cores.
_CYCLE_LENGTH = 8
# Big sequential reads: a GCS request costs a round trip, so a small buffer starves the decoders.
_READ_BUFFER = 8 << 20
_HASH_BUCKETS = 1 << 24  # resolution of clean_keep
_PSEUDO_STREAM = 1  # the pseudo-label stream's seeds: (seed, epoch, this), apart from the labelled stream's


def pseudo_rows(batch_size, share):
    """Pseudo-labelled rows in every batch of `batch_size` rows at `share` of it: floor(share x batch), so never
    more than the share; refused when the share is outside [0, 1), or > 0 but too small for one row."""
    if not 0.0 <= share < 1.0:
        raise ValueError(f"pseudo_share={share!r}: must be in [0, 1) (0: no pseudo-labels)")
    rows = math.floor(round(share * batch_size, 9))  # 0.3 x 10 is 2.9999999999999996 in floats
    if share > 0 and rows == 0:
        raise ValueError(f"pseudo_share={share:g} of a per-replica batch of {batch_size} is less than one row: "
                         f"set it to at least {1 / batch_size:.4g}, or 0 for no pseudo-labels")
    return rows


def sampled_images(folder, *, folds=None, oversample=None, clean_keep=1.0, classes=CLASS_IDS):
    """Images in one pass over the chosen folds of a ShardFolder as sampled, from its counts; a sampling that keeps
    none (clean_keep=0 and no image of `classes`) is refused, naming them: its dataset would never yield.

    The manifest counts images per class, not per class combination, so an image with several oversampled
    classes (or several of `classes`) is counted once per class (its real repeat factor is the largest): exact for
    single-class images.
    """
    factors = _factors(oversample, classes)
    _check_clean_keep(clean_keep)
    chosen = folder.entries_of(folds)
    records = sum(s["records"] for s in chosen)
    class_counts = np.sum([s["class_counts"] for s in chosen], axis=0) * (factors > 0)
    defects = min(records, int(class_counts.sum()))
    if defects == 0 and clean_keep == 0:
        raise ValueError(f"{folder.path}: folds {sorted({s['fold'] for s in chosen})} hold no image of class(es) "
                         f"{list(classes)} and clean_keep=0 keeps no other: nothing to train on")
    return (records - defects) * clean_keep + defects + float(np.dot(class_counts, np.maximum(factors - 1, 0)))


def steps_per_epoch(folder, *, batch_size, **sampling):
    """Global batches in one epoch: one pass over the chosen folds as sampled (sampled_images' keywords)."""
    return max(1, int(sampled_images(folder, **sampling) // batch_size))


def train_dataset(*, files, image_size, batch_size, seed, epoch=0, steps=None, oversample=None, clean_keep=1.0,
                  classes=CLASS_IDS, shuffle_buffer=1024, input_context=None, pseudo_files=(), pseudo_share=0.0):
    """Endless (or `steps`) batches of (luma images uint8 [B,h,w,1], masks uint8 [B,h,w,4]) for one epoch; the
    task's augmentation makes the model's 3 channels on the device (decode.to_luma).

    The order, the oversampling ({class id: integer repeat factor}, an image taking its classes' largest) and
    the kept fraction of clean images (none of `classes`: the model's) are functions of (seed, epoch) only, so a
    resumed run sees the same data.
    With `input_context` each input pipeline reads its own files and yields per-replica batches.
    With `pseudo_files` (pseudo shards) and `pseudo_share` > 0, the last pseudo_rows(B, share) rows of every
    (per-replica) batch come from them, shuffled from (seed, epoch) too, never oversampled; the rest from `files`.
    """
    size = check_image_size(image_size)
    files, pseudo_files = list(files), list(pseudo_files)
    if not files:
        raise ValueError("train_dataset: no shard files")
    if (pseudo_share > 0) != bool(pseudo_files):
        raise ValueError(f"train_dataset: pseudo_share={pseudo_share} with {len(pseudo_files)} pseudo shard files: "
                         "give both or neither")
    batch = batch_size if input_context is None else input_context.get_per_replica_batch_size(batch_size)
    pseudo = pseudo_rows(batch, pseudo_share)
    ds = _records(files, seed=[seed, epoch], input_context=input_context, oversample=oversample,
                  clean_keep=clean_keep, classes=classes, shuffle_buffer=shuffle_buffer, what="shard files")
    ds = ds.map(lambda record: _parse_image(record, size), num_parallel_calls=AUTOTUNE)
    # Static batch shapes for XLA / TPU: a partial batch would compile a second program.
    ds = ds.batch(batch - pseudo, drop_remainder=True)
    if pseudo:
        # A fixed number of pseudo rows in every batch, not a sampled share: the batch shape stays static and the
        # cap holds in each batch, not only on average. Their own stream: the labelled order is what it was.
        extra = _records(pseudo_files, seed=[seed, epoch, _PSEUDO_STREAM], input_context=input_context,
                         shuffle_buffer=shuffle_buffer, what="pseudo shard files")
        extra = extra.map(lambda record: _parse_image(record, size), num_parallel_calls=AUTOTUNE)
        ds = tf.data.Dataset.zip(ds, extra.batch(pseudo, drop_remainder=True)).map(
            lambda labelled, more: tuple(tf.concat([a, b], axis=0) for a, b in zip(labelled, more)),
            num_parallel_calls=AUTOTUNE)
    ds = ds.map(lambda gray, rles: (to_luma(gray, image_size=size), decode_masks(rles, image_size=size)),
                num_parallel_calls=AUTOTUNE)
    if steps is not None:
        # A global step takes one per-replica batch from a pipeline for each replica that pipeline feeds.
        per_step = 1 if input_context is None else input_context.num_replicas_in_sync // input_context.num_input_pipelines
        ds = ds.take(steps * per_step)
    return ds.prefetch(AUTOTUNE)


def _records(files, *, seed, input_context, oversample=None, clean_keep=1.0, classes=CLASS_IDS, shuffle_buffer,
             what):
    """Endless serialized records of `files` (this input pipeline's share), sampled and shuffled from `seed`."""
    factors = _factors(oversample, classes)
    _check_clean_keep(clean_keep)
    file_seed, record_seed, *hash_key = (int(v) for v in np.random.SeedSequence(seed).generate_state(4))
    ds = tf.data.Dataset.from_tensor_slices(files)
    if input_context is not None:
        pipelines = input_context.num_input_pipelines
        if len(files) < pipelines:
            raise ValueError(f"train_dataset: {len(files)} {what} cannot feed {pipelines} input pipelines")
        ds = ds.shard(pipelines, input_context.input_pipeline_id)
    ds = ds.shuffle(len(files), seed=file_seed, reshuffle_each_iteration=True).repeat()
    ds = ds.interleave(_read, cycle_length=min(_CYCLE_LENGTH, len(files)), num_parallel_calls=AUTOTUNE,
                       deterministic=True)
    if oversample or clean_keep < 1.0:
        # Decided on the small features, before any decoding: a dropped image costs no JPEG decode.
        copies = _copies_fn(factors=factors, clean_keep=clean_keep, hash_key=hash_key)
        ds = ds.map(lambda record: (record, copies(record)), num_parallel_calls=AUTOTUNE)
        ds = ds.flat_map(lambda record, n: tf.data.Dataset.from_tensors(record).repeat(n))
    # The buffer holds serialized records (~100 KB), not decoded images (1.2 MB at 256x1600): host memory stays small.
    return ds.shuffle(shuffle_buffer, seed=record_seed)


def eval_dataset(*, files, image_size, batch_size, full_res_masks=True):
    """Every record once, in file order, as padded batches of {"image" [B,h,w,3], "mask" [B,H,W,4] uint8,
    "image_id" string, "valid" bool}; masks at full 256x1600 unless `full_res_masks` is False."""
    size = check_image_size(image_size)
    mask_size = (HEIGHT, WIDTH) if full_res_masks else size
    ds = tf.data.TFRecordDataset(list(files), buffer_size=_READ_BUFFER)
    ds = ds.map(lambda record: _parse_eval(record, size), num_parallel_calls=AUTOTUNE)
    ds = _padded_batches(ds, batch_size=batch_size)
    ds = ds.map(lambda b: _finish_eval(b, size, mask_size), num_parallel_calls=AUTOTUNE)
    return ds.prefetch(AUTOTUNE)


def predict_dataset(*, source, image_size, batch_size):
    """Padded batches of {"image" uint8 [B,h,w,3], "image_id" string, "valid" bool}, in a fixed order.

    `source`: a folder (local or gs://) of test shards (the ones its manifest lists, sizes checked) or else of JPEG
    files (source.is_jpeg_name), or a list of JPEG paths (ids are then the file names), or a list of .tfrec shard
    paths (read in that order).
    """
    size = check_image_size(image_size)
    if isinstance(source, (list, tuple)):
        listed = [str(p) for p in source]
        shards = listed if listed and all(p.endswith(".tfrec") for p in listed) else []
        paths = [] if shards else listed
    elif holds_shards(source):
        shards, paths = ShardFolder.open(source, split="test").check().files(), []
    else:
        # A literal listing, filtered by name: the user's folder is never a glob pattern.
        shards, paths = [], list(list_jpegs(source).values())
        if not paths:
            raise FileNotFoundError(f"{source}: no test shards and no JPEG files (.jpg, .jpeg)")
    if shards:
        ds = tf.data.TFRecordDataset(shards, buffer_size=_READ_BUFFER)
        ds = ds.map(lambda record: _parse_predict(record, size), num_parallel_calls=AUTOTUNE)
    else:
        ds = _jpeg_files(paths, size)
    ds = _padded_batches(ds, batch_size=batch_size)
    ds = ds.map(lambda b: {**b, "image": to_images(b["image"], image_size=size)}, num_parallel_calls=AUTOTUNE)
    return ds.prefetch(AUTOTUNE)


def _factors(oversample, classes=CLASS_IDS):
    """int64 [NUM_CLASSES] repeat factors (1 = not oversampled) from {class id: factor}; 0 for a class not in
    `classes`, so an image holding only such classes is a clean image to the model."""
    factors = np.array([int(c in classes) for c in CLASS_IDS], dtype=np.int64)
    for class_id, factor in (oversample or {}).items():
        if class_id not in CLASS_IDS or int(factor) != factor or factor < 1:
            raise ValueError(f"oversample {oversample}: keys must be class ids {CLASS_IDS}, factors integers >= 1")
        factors[CLASS_IDS.index(class_id)] *= int(factor)
    return factors


def _check_clean_keep(clean_keep):
    if not 0.0 <= clean_keep <= 1.0:
        raise ValueError(f"clean_keep={clean_keep}: must be in [0, 1]")


def _read(path):
    return tf.data.TFRecordDataset(path, buffer_size=_READ_BUFFER)


def _parse(record, keys):
    return tf.io.parse_single_example(record, {k: example.FEATURES[k] for k in keys})


def _parse_image(record, size):
    parsed = _parse(record, (example.IMAGE, example.RLE))
    return decode_gray(parsed[example.IMAGE], image_size=size), parsed[example.RLE]


def _copies_fn(*, factors, clean_keep, hash_key):
    """record -> copies of its image this epoch: its classes' largest factor; for a clean image 1 if kept, else 0."""
    threshold = int(round(clean_keep * _HASH_BUCKETS))

    def copies(record):
        parsed = _parse(record, (example.PRESENT, example.IMAGE_ID))
        defect = tf.reduce_max(parsed[example.PRESENT] * factors)
        # A keyed hash of the id, not a random stream: the same images are kept whatever the read order.
        kept = tf.strings.to_hash_bucket_strong(parsed[example.IMAGE_ID], _HASH_BUCKETS, key=hash_key) < threshold
        return tf.where(defect > 0, defect, tf.cast(kept, tf.int64))

    return copies


def _parse_eval(record, size):
    parsed = _parse(record, (example.IMAGE_ID, example.IMAGE, example.RLE))
    return {"image": decode_gray(parsed[example.IMAGE], image_size=size), "rle": parsed[example.RLE],
            "image_id": parsed[example.IMAGE_ID], "valid": tf.constant(True)}


def _finish_eval(batch, size, mask_size):
    batch = dict(batch)
    batch["image"] = to_images(batch["image"], image_size=size)
    batch["mask"] = decode_masks(batch.pop("rle"), image_size=mask_size)
    return batch


def _parse_predict(record, size):
    parsed = _parse(record, (example.IMAGE_ID, example.IMAGE))
    return {"image": decode_gray(parsed[example.IMAGE], image_size=size), "image_id": parsed[example.IMAGE_ID],
            "valid": tf.constant(True)}


def _jpeg_files(paths, size):
    ids = [posixpath.basename(str(p)) for p in paths]
    duplicates = sorted(i for i, n in collections.Counter(ids).items() if n > 1)  # linear: batches can be huge
    if duplicates:
        raise ValueError(f"predict_dataset: image ids (file names) must be unique, repeated: {duplicates[:5]}")
    ds = tf.data.Dataset.from_tensor_slices((paths, ids))
    return ds.map(lambda path, image_id: _read_jpeg(path, image_id, size), num_parallel_calls=AUTOTUNE)


def _read_jpeg(path, image_id, size):
    """A checked JPEG file: a clear error naming the file if it is not a 256x1600 JPEG."""
    data = tf.io.read_file(path)
    is_jpeg = tf.debugging.Assert(tf.io.is_jpeg(data), [path, "is not a JPEG"])
    with tf.control_dependencies([is_jpeg]):
        shape = tf.io.extract_jpeg_shape(data)
    right_size = tf.debugging.Assert(tf.reduce_all(shape[:2] == [HEIGHT, WIDTH]),
                                     [path, "is", shape[0], "x", shape[1], f"pixels, expected {HEIGHT} x {WIDTH}"])
    with tf.control_dependencies([right_size]):
        image = decode_gray(data, image_size=size)
    return {"image": image, "image_id": image_id, "valid": tf.constant(True)}


def _padded_batches(ds, *, batch_size):
    """Full batches holding every element once: batch_size - 1 invalid zero elements follow the data, so the last
    batch is completed (static shapes, nothing dropped) and no batch of padding alone is ever made."""
    padding = tf.nest.map_structure(lambda spec: tf.zeros(spec.shape, spec.dtype), ds.element_spec)
    ds = ds.concatenate(tf.data.Dataset.from_tensors(padding).repeat(batch_size - 1))
    return ds.batch(batch_size, drop_remainder=True)
