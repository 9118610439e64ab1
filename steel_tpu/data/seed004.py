"""Seed 004's TFRecord folder read as it is, every record checked, and imported as our shard folder (JPEGs as is)."""

import hashlib
import io
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import tensorflow as tf
from google.protobuf.message import DecodeError

from steel_tpu import storage
from steel_tpu.constants import CLASS_IDS, HEIGHT, NUM_CLASSES, WIDTH
from steel_tpu.data import jpeg_check, shards, tfrecord
from steel_tpu.data.shard_folder import join_problems
from steel_tpu.data.source import Source, SourceError
from steel_tpu.formats import kaggle, rle

FORMAT = "seed004"
DEFECT, NO_DEFECT = "train-defect", "train-no-defect"
SUFFIX = ".tfrec"  # the seed notebook globs *train-defect*.tfrec and *train-no-defect*.tfrec
# Its count_data_items reads a file's record count from the number before the extension: "...-1127.tfrec".
_COUNT = re.compile(r"-(\d+)\.tfrec$")
EMPTY_RLE = "1 0"  # the seed's spelling of "no defect of this class" (a pixel count of 0, no valid Kaggle run)
# Its parser's schema (tf.io.FixedLenFeature shapes): feature -> (proto value list, number of values).
SCHEMA = {"img_id": ("bytes_list", 1), "image": ("bytes_list", 1), "rle": ("bytes_list", NUM_CLASSES),
          "label": ("int64_list", 1)}


@dataclass(frozen=True)
class Seed004Source(Source):
    """A checked seed-004 folder as a shard source: `paths` names each image's seed file, `locations` its record."""

    locations: dict[str, tuple[int, int]]  # image id -> (byte offset, framed length) of its record in paths[id]
    image_sha256: dict[str, str]  # what the check read, so a file changed before the write is caught
    files: tuple[dict, ...]  # {"name", "records", "sha256"} of every seed file read

    def read_image(self, image_id):
        path = self.paths[image_id]
        offset, length = self.locations[image_id]
        where = f"{path}: {image_id}"
        try:
            body = next(tfrecord.read_records(io.BytesIO(storage.read_range(path, start=offset, length=length))))
            image = tf.train.Example.FromString(body).features.feature["image"].bytes_list.value[0]
        except (tfrecord.TFRecordError, DecodeError, IndexError, StopIteration) as e:
            raise SourceError(f"{where}: its record changed since it was checked ({str(e) or type(e).__name__}); "
                              "run the import again") from None
        if hashlib.sha256(image).hexdigest() != self.image_sha256[image_id]:
            raise SourceError(f"{where}: image bytes changed since they were checked; run the import again")
        return image

    def manifest_extra(self):
        return {"imported_from": {"format": FORMAT, "files": list(self.files)}}


@dataclass(frozen=True)
class _Record:
    image_id: str
    index: int
    rles: tuple[str, ...]
    offset: int
    length: int
    size: int
    sha256: str


def import_seed004(*, src, out, folds=5, seed=0, shard_mb=100.0, workers=None, overwrite=False, progress=True):
    """Write our shard folder `out` from seed 004's folder `src` (each local or gs://): the same shards, manifest,
    folds (stratified on the decoded masks) and resume as `steel-tpu shards`; returns its shards.Summary.

    Every seed record is checked before anything is written; the JPEG bytes are copied as they are.
    """
    workers = workers or os.cpu_count()
    return shards.build_shards(data=src, out=out, folds=folds, seed=seed, shard_mb=shard_mb, workers=workers,
                               overwrite=overwrite, progress=progress,
                               read_source=lambda: scan(src, workers=workers))


def scan(src, *, workers):
    """Read and check every record of the seed files in `src`: a Seed004Source, or one SourceError naming each
    problem's file and image id."""
    if not storage.isdir(src):
        raise SourceError(f"{src}: not a folder of seed-004 shards ({DEFECT}*{SUFFIX}, {NO_DEFECT}*{SUFFIX})")
    files = seed_files(src)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(lambda f: _read_file(storage.join(src, f[0]), *f), files))
    problems, first, found = [], {}, {}
    for (name, _, _), (records, file_problems, _) in zip(files, results):
        problems += file_problems
        for r in records:
            if r.image_id in first:
                problems.append(f"{name} record {r.index} ({r.image_id}): img_id also in {first[r.image_id]}")
                continue
            first[r.image_id] = f"{name} record {r.index}"
            found[r.image_id] = (storage.join(src, name), r)
    if problems:
        raise SourceError(f"{src}: {join_problems(problems)}; nothing was written")
    if not found:
        raise SourceError(f"{src}: its seed-004 files hold no records")
    ids = sorted(found)  # the order scan() gives a Kaggle layout: the same images plan the same shards
    return Seed004Source(
        split="train",
        images_dir=str(src),
        paths={i: found[i][0] for i in ids},
        sizes={i: found[i][1].size for i in ids},
        labels=kaggle.Labels.from_mapping({i: found[i][1].rles for i in ids}),
        csv_sha256=None,
        skipped=(),
        locations={i: (found[i][1].offset, found[i][1].length) for i in ids},
        image_sha256={i: found[i][1].sha256 for i in ids},
        files=tuple({"name": name, "records": len(records), "sha256": digest}
                    for (name, _, _), (records, _, digest) in zip(files, results)),
    )


def seed_files(src):
    """(name, DEFECT or NO_DEFECT, record count its name states) of every seed file in `src`, by name.

    Other .tfrec files are refused, not skipped: a misnamed shard left out would silently drop its images.
    """
    names = sorted(n for n in storage.list_files(src) if n.endswith(SUFFIX))
    files, problems = [], []
    for name in names:
        kind = NO_DEFECT if NO_DEFECT in name else DEFECT if DEFECT in name else None
        count = _COUNT.search(name)
        if kind is None:
            problems.append(f"{name}: a {SUFFIX} file whose name holds neither {DEFECT} nor {NO_DEFECT}")
        elif count is None:
            problems.append(f"{name}: no record count in its name (seed 004 names end -COUNT{SUFFIX})")
        else:
            files.append((name, kind, int(count[1])))
    if problems:
        raise SourceError(f"{src}: {join_problems(problems)}; nothing was written")
    if not files:
        raise SourceError(f"{src}: no seed-004 shards ({DEFECT}*{SUFFIX} or {NO_DEFECT}*{SUFFIX} files)")
    return files


def _read_file(path, name, kind, count):
    """(records, problems, sha256) of one seed file, every record checked."""
    records, problems, offset, index = [], [], 0, -1
    with storage.open(path, "rb") as raw:
        reader = tfrecord.HashingReader(raw)
        try:
            for index, body in enumerate(tfrecord.read_records(reader)):
                record, record_problems = _check_record(body, name=name, index=index, kind=kind, offset=offset)
                problems += record_problems
                if record is not None:
                    records.append(record)
                offset += tfrecord.framed_size(len(body))
        except tfrecord.TFRecordError as e:
            problems.append(f"{name}: damaged TFRecord file ({e})")
        else:
            if index + 1 != count:
                problems.append(f"{name}: its name says {count} records, it holds {index + 1}")
        reader.drain()
    return records, problems, reader.sha256.hexdigest()


def _values(feature, key):
    """The values of feature `key` if it has the seed schema's type and count, else (None, problem)."""
    kind, count = SCHEMA[key]
    if key not in feature:
        return None, f"missing feature {key!r}"
    holds = feature[key].WhichOneof("kind")
    values = list(getattr(feature[key], holds).value) if holds else []
    if holds != kind or len(values) != count:
        return None, f"feature {key!r} holds {len(values)} {holds or 'no'} value(s), expected {count} {kind}"
    return values, None


def _check_record(body, *, name, index, kind, offset):
    """(_Record or None, problems) of one serialized seed record; problems name the file, record and img_id."""
    try:
        feature = tf.train.Example.FromString(body).features.feature
    except DecodeError:
        return None, [f"{name} record {index}: not a tf.train.Example"]
    values, problems = {}, []
    for key in SCHEMA:
        values[key], problem = _values(feature, key)
        if problem:
            problems.append(problem)
    image_id = _image_id(values["img_id"], problems)
    where = f"{name} record {index} ({image_id or 'no usable img_id'})"
    rles = _rles(values["rle"], problems) if values["rle"] else None
    if rles is not None and values["label"]:
        defect = [c for c, r in zip(CLASS_IDS, rles) if r]
        label = values["label"][0]
        if label not in (0, 1):
            problems.append(f"label {label}, expected 0 or 1")
        elif label != bool(defect):
            masks = f"class(es) {', '.join(map(str, defect))} have a mask" if defect else "every rle is empty"
            problems.append(f"label {label} but {masks}")
        elif (kind == DEFECT) != bool(defect):
            problems.append(f"label {label} in a {kind} file")
    image = values["image"][0] if values["image"] else None
    if image is not None:
        image_problem = jpeg_check.problem(image)
        if image_problem:
            problems.append(f"image: {image_problem}")
    if problems:
        return None, [f"{where}: {p}" for p in problems]
    return _Record(image_id=image_id, index=index, rles=rles, offset=offset, length=tfrecord.framed_size(len(body)),
                   size=len(image), sha256=hashlib.sha256(image).hexdigest()), []


def _image_id(values, problems):
    if not values:
        return None
    try:
        image_id = values[0].decode("utf-8")
    except UnicodeDecodeError:
        problems.append("img_id is not UTF-8 text")
        return None
    problem = kaggle.image_id_problem(image_id)
    if problem:
        problems.append(f"img_id: {problem}")
        return None
    return image_id


def _rles(values, problems):
    """Our RLE strings ('' = no defect) of the seed's four, each checked for a 256x1600 image; None if one is bad."""
    rles = []
    for class_id, value in zip(CLASS_IDS, values):
        text = " ".join(value.decode("ascii", errors="replace").split())  # the whitespace rule of kaggle.read_labels
        text = "" if text == EMPTY_RLE else text
        try:
            rle.parse_runs(text, height=HEIGHT, width=WIDTH)
        except rle.RleError as e:
            problems.append(f"class {class_id}: rle is not a valid RLE for a {HEIGHT}x{WIDTH} image ({e})")
            continue
        rles.append(text)
    return tuple(rles) if len(rles) == NUM_CLASSES else None
