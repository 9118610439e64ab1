"""Re-read a shard folder and check it against its manifest and, given the source, image by image."""

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from steel_tpu import storage
from steel_tpu.constants import HEIGHT, NUM_CLASSES, WIDTH
from steel_tpu.data import example, jpeg_check, tfrecord
from steel_tpu.formats import kaggle, rle
from steel_tpu.data import manifest as manifest_lib
from steel_tpu.data.manifest import MANIFEST, manifest_problems, parse_shard_name
from steel_tpu.data.shard_folder import ShardFolderError, join_problems, records_in
from steel_tpu.data.source import locate

class VerifyError(ValueError):
    """Shards that do not match their manifest or their source; the message names each shard and image."""


@dataclass(frozen=True)
class Report:
    out: str
    shards: int
    records: int
    bytes: int
    source: str | None

    def __str__(self):
        checked = f"; every image of {self.source} round-trips and is in exactly one shard" if self.source else ""
        return f"OK {self.out}: {self.shards} shards, {self.records} records, {self.bytes / 1e6:.1f} MB{checked}"


@dataclass(frozen=True)
class _Expected:
    """What the source says each image must be: its file and its RLEs."""

    paths: dict[str, str]
    rles: dict[str, tuple[str, ...]]


def verify(shards, *, data=None, workers=None):
    """Check every shard's bytes, sha256, records, class counts and that each image decodes as training decodes
    it; with `data`, every image and mask against the source too."""
    try:
        _, manifest = manifest_lib.read(shards)
    except (ShardFolderError, FileNotFoundError) as e:
        raise VerifyError(str(e)) from None
    entries = manifest["shards"]
    on_disk = {n for n in storage.list_files(shards) if parse_shard_name(n)}
    listed = {e["name"] for e in entries}
    problems = [f"{MANIFEST}: {p}" for p in manifest_problems(manifest)]
    problems += [f"{n}: in {MANIFEST} but not in {shards}" for n in sorted(listed - on_disk)]
    problems += [f"{n}: a shard file that {MANIFEST} does not list" for n in sorted(on_disk - listed)]
    expected = _expected(data, manifest) if data is not None else None
    present = [e for e in entries if e["name"] in on_disk]
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count()) as pool:
        results = list(pool.map(lambda e: _check_shard(shards, e, expected), present))
    seen = {}
    for entry, (ids, shard_problems) in zip(present, results):
        problems += shard_problems
        for image_id in ids:
            if image_id in seen:
                problems.append(f"{image_id}: in both {seen[image_id]} and {entry['name']}")
            seen.setdefault(image_id, entry["name"])
    if expected is not None:
        problems += [f"{i}: an image of {data} in no shard" for i in sorted(set(expected.paths) - set(seen))]
    if problems:
        raise VerifyError(f"{shards}: {join_problems(problems)}")
    return Report(out=str(shards), shards=len(entries), records=manifest["records"], bytes=manifest["bytes"],
                  source=None if data is None else str(data))


def _expected(data, manifest):
    """Every image the source holds minus those the manifest records as skipped."""
    _, _, found, labels = locate(data, split=manifest["split"])
    skipped = {s["image_id"] for s in manifest["skipped"]}
    ids = (set(found) | set(labels.image_ids if labels else ())) - skipped
    rles = labels.subset(sorted(ids)).rles if labels else dict.fromkeys(ids, kaggle.EMPTY)
    # An id listed in the CSV but absent from the folder maps to no path: reading it reports it as missing.
    return _Expected(paths={i: found.get(i) for i in ids}, rles=rles)


def _check_shard(shards, entry, expected):
    """(image ids in record order, problems) of one shard against its manifest entry and the source."""
    name, ids, problems, class_counts = entry["name"], [], [], [0] * NUM_CLASSES
    with storage.open(storage.join(shards, name), "rb") as raw:
        reader = tfrecord.HashingReader(raw)
        try:
            for index, record in enumerate(records_in(reader, name)):
                ids.append(record[example.IMAGE_ID])
                where = f"{name} record {index} ({record[example.IMAGE_ID]})"
                problems += _check_record(record, where, fold=entry["fold"], expected=expected)
                class_counts = [n + bool(p) for n, p in zip(class_counts, record[example.PRESENT])]
        except ShardFolderError as e:
            problems.append(str(e))
        reader.drain()  # after a broken record: hash the rest, so the checksum is checked too
    found = {"records": len(ids), "class_counts": class_counts, "bytes": reader.bytes,
             "sha256": reader.sha256.hexdigest()}
    problems += [f"{name}: {key} {value} != {entry[key]} in {MANIFEST}" for key, value in found.items()
                 if value != entry[key]]
    return ids, problems


def _check_record(record, where, *, fold, expected):
    problems = []
    if record[example.FOLD] != fold:
        problems.append(f"{where}: fold {record[example.FOLD]}, its shard is fold {fold}")
    if (record[example.HEIGHT], record[example.WIDTH]) != (HEIGHT, WIDTH):
        problems.append(f"{where}: size {record[example.WIDTH]}x{record[example.HEIGHT]}, expected {WIDTH}x{HEIGHT}")
    image_problem = jpeg_check.problem(record[example.IMAGE])  # a shard from an older build, or edited since
    if image_problem:
        problems.append(f"{where}: {image_problem}")
    try:
        areas = [rle.area(r) for r in record[example.RLE]]
    except rle.RleError as e:
        return [*problems, f"{where}: bad RLE ({e})"]
    if areas != record[example.AREA] or [int(a > 0) for a in areas] != record[example.PRESENT]:
        problems.append(f"{where}: area {record[example.AREA]} / present {record[example.PRESENT]} disagree with the RLEs")
    if expected is not None:
        problems += _check_against_source(record, where, expected)
    return problems


def _check_against_source(record, where, expected):
    image_id = record[example.IMAGE_ID]
    if image_id not in expected.paths:
        return [f"{where}: not an image of the source (or recorded as skipped)"]
    if expected.paths[image_id] is None:
        return [f"{where}: listed in the source CSV but its file is missing"]
    problems = []
    if storage.read_bytes(expected.paths[image_id]) != record[example.IMAGE]:
        problems.append(f"{where}: image bytes differ from {expected.paths[image_id]}")
    for class_id, (mine, theirs) in enumerate(zip(record[example.RLE], expected.rles[image_id]), start=1):
        if mine.split() != theirs.split():
            problems.append(f"{where}: class {class_id} mask differs from the source CSV")
    return problems
