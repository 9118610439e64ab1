"""Pack a source into TFRecord shards with stratified folds: plan, write in parallel, resume, manifest last."""

import hashlib
import json
import math
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass

import numpy as np

from steel_tpu import console, storage
from steel_tpu.constants import HEIGHT, NUM_CLASSES, WIDTH
from steel_tpu.data import example, tfrecord
from steel_tpu.data import manifest as manifest_lib
from steel_tpu.data import own_files
from steel_tpu.data.folds import assign_folds
from steel_tpu.formats import kaggle, outputs, rle
from steel_tpu.data.manifest import MANIFEST, MAX_SHARDS, PLAN, shard_name
from steel_tpu.data.source import SourceError, scan

_MB = 1_000_000


@dataclass(frozen=True)
class ShardSpec:
    """One planned shard: its file name, its fold (-1 for test) and its images in record order."""

    name: str
    fold: int
    image_ids: tuple[str, ...]


@dataclass(frozen=True)
class Summary:
    out: str
    images: int
    shards: int
    kept: int  # shards intact from a previous run, not rewritten
    written_images: int
    bytes: int
    skipped: int
    seconds: float

    def __str__(self):
        rate = f"{self.written_images / max(self.seconds, 1e-9):.0f} images/s" if self.written_images else "all kept"
        return (f"{self.images} images in {self.shards} shards ({self.kept} kept), {self.bytes / _MB:.1f} MB, "
                f"{rate}, {self.skipped} skipped -> {self.out}")


def plan_shards(source, *, folds, seed, shard_mb):
    """The shards of a scanned source, a pure function of (source, folds, seed, shard_mb) so a re-run agrees.

    Each fold gets round(bytes / shard_mb) shards, at least one, in a seeded order that mixes the classes.
    """
    if source.split == "train":
        try:
            fold_of = assign_folds({i: source.labels.present(i) for i in source.paths}, k=folds, seed=seed)
        except ValueError as e:
            raise SourceError(f"{source.images_dir}: {e}") from None
        groups = {f: [i for i in source.paths if fold_of[i] == f] for f in range(folds)}
        groups = {f: [ids[j] for j in np.random.default_rng([seed, f]).permutation(len(ids))]
                  for f, ids in groups.items()}
    else:
        groups = {-1: sorted(source.paths)}
    wanted = {f: sum(source.sizes[i] for i in ids) / (shard_mb * _MB) for f, ids in groups.items()}  # may be inf
    # Bounds before anything is allocated: a tiny shard_mb once planned a million shards a fold and ran out of memory.
    absurd = [f for f, n in wanted.items() if n >= min(max(len(groups[f]), 1), MAX_SHARDS) + 0.5]
    if absurd:
        smallest = max(sum(source.sizes[i] for i in ids) / len(ids) for ids in groups.values() if ids) / _MB
        raise ValueError(f"shard_mb={shard_mb:g} would plan {wanted[absurd[0]]:.3g} shards for "
                         f"{len(groups[absurd[0]])} images (a shard holds at least one image, a fold at most "
                         f"{MAX_SHARDS} shards): use --shard-mb {smallest:.3g} or more")
    specs = []
    for fold, ids in groups.items():
        count = max(1, round(wanted[fold]))
        for index, chunk in enumerate(np.array_split(np.array(ids, dtype=object), count)):
            name = shard_name(split=source.split, fold=fold, index=index, count=count)
            specs.append(ShardSpec(name=name, fold=fold, image_ids=tuple(chunk)))
    return specs


@dataclass(frozen=True)
class Build:
    """A planned build whose output folder is claimed: what is kept from a previous run and what to write.

    Planning is one global step (folds need every label); `todo` fans out to any writer (threads or Beam).
    """

    source: object
    specs: tuple[ShardSpec, ...]
    plan: dict  # the plan file's content: plan digest and every shard name this build may touch
    done: dict  # {name: manifest entry} of shards intact from a previous run of the same plan
    todo: tuple[ShardSpec, ...]
    data: str
    out: str
    folds: int
    seed: int
    shard_mb: float
    pseudo: dict | None = None  # a pseudo-label build's provenance, the manifest's "pseudo" block


def plan_build(*, data, out, folds=5, seed=0, shard_mb=100.0, split="train", workers=None, overwrite=False,
               skip_bad=False, read_source=None):
    """Scan and plan `data`, claim `out` (refusing foreign files) and record the plan there before any shard.

    `read_source`: a function returning the checked Source to shard, for a source that is not a Kaggle layout
    (steel_tpu.data.seed004); by default `data` is scanned as one.
    """
    if not (math.isfinite(shard_mb) and shard_mb > 0) or (split == "train" and folds < 2):
        raise ValueError(f"need a finite shard_mb > 0 and folds >= 2, got shard_mb={shard_mb}, folds={folds}")
    outputs.check_folder(out)  # a file (or a path under one) as --out fails before the images are scanned
    workers = workers or os.cpu_count()
    source = read_source() if read_source else scan(data, split=split, workers=workers, skip_bad=skip_bad)
    return plan_source(source, data=data, out=out, folds=folds, seed=seed, shard_mb=shard_mb, overwrite=overwrite)


def plan_source(source, *, data, out, folds, seed, shard_mb, overwrite=False, pseudo=None):
    """plan_build's planning and claiming of `out` for a scanned (or assembled: pseudo-labels) Source."""
    split = source.split
    specs = plan_shards(source, folds=folds, seed=seed, shard_mb=shard_mb)
    plan_sha256 = _plan_digest(source, specs, folds=folds, seed=seed, shard_mb=shard_mb, pseudo=pseudo)
    found = storage.list_files(out)
    docs = own_files.claim(out, found, split=split, overwrite=overwrite)  # refuses foreign files before any write
    previous = {} if overwrite else own_files.previous(docs, plan_sha256)
    planned = {s.name for s in specs}
    # Every shard name this build may write or delete, recorded first: a killed run's files stay provably ours.
    plan = {"plan_sha256": plan_sha256, "names": sorted(planned | own_files.recorded(docs)), "shards": []}
    storage.makedirs(out)
    # The plan goes down before anything is removed or written, so an interruption from here on can resume.
    _write_json(storage.join(out, PLAN), {**plan, "shards": list(previous.values())})
    storage.remove(storage.join(out, MANIFEST))
    own_files.remove_stale(out, found, owned=own_files.recorded(docs), keep=set() if overwrite else planned)
    done = {s.name: previous[s.name] for s in specs
            if s.name in previous and own_files.intact(storage.join(out, s.name), previous[s.name])}
    return Build(source=source, specs=tuple(specs), plan=plan, done=done,
                 todo=tuple(s for s in specs if s.name not in done), data=str(data), out=str(out), folds=folds,
                 seed=seed, shard_mb=shard_mb, pseudo=pseudo)


def write_shard(spec, *, build):
    """Write one planned shard of `build` (atomically) and return its manifest entry: the unit a worker runs."""
    return _write_shard(spec, source=build.source, out=build.out, on_image=lambda: None, stop=threading.Event())


def finish_build(build, written):
    """Write the manifest (last) from the kept and `written` manifest entries, drop the plan; returns it."""
    done = {**build.done, **{e["name"]: e for e in written}}
    missing = [s.name for s in build.specs if s.name not in done]
    if missing:
        raise RuntimeError(f"{build.out}: {len(missing)} planned shard(s) were not written, e.g. {missing[0]}")
    manifest = manifest_lib.make(build.source, build.specs, done, data=build.data, folds=build.folds, seed=build.seed,
                         shard_mb=build.shard_mb, plan_sha256=build.plan["plan_sha256"], pseudo=build.pseudo)
    manifest_lib.write(build.out, manifest)
    storage.remove(storage.join(build.out, PLAN))
    return manifest


def summarize(build, manifest, *, seconds):
    return Summary(out=build.out, images=manifest["records"], shards=len(build.specs), kept=len(build.done),
                   written_images=sum(len(s.image_ids) for s in build.todo), bytes=manifest["bytes"],
                   skipped=len(build.source.skipped), seconds=seconds)


def build_shards(*, data, out, folds=5, seed=0, shard_mb=100.0, split="train", workers=None, overwrite=False,
                 skip_bad=False, progress=True, read_source=None, _after_shard=None):
    """Write the shards of `data` under `out` (local or gs://) and the manifest last; resume unless overwrite.

    `read_source`: as in plan_build. `_after_shard(n_written)` is a test hook run after each finished shard (to
    interrupt a build).
    """
    start = time.perf_counter()
    workers = workers or os.cpu_count()
    build = plan_build(data=data, out=out, folds=folds, seed=seed, shard_mb=shard_mb, split=split,
                       workers=workers, overwrite=overwrite, skip_bad=skip_bad, read_source=read_source)
    manifest = write_build(build, workers=workers, progress=progress, _after_shard=_after_shard)
    return summarize(build, manifest, seconds=time.perf_counter() - start)


def write_build(build, *, workers=None, progress=True, _after_shard=None):
    """Write the shards `build` still needs, in parallel threads, then its manifest (last); returns the manifest."""
    done = dict(build.done)
    _write_all(build.todo, done, source=build.source, out=build.out, plan=build.plan,
               workers=workers or os.cpu_count(), progress=progress, after_shard=_after_shard)
    return finish_build(build, list(done.values()))


def _write_all(todo, done, *, source, out, plan, workers, progress, after_shard):
    """Write the shards of `todo` in parallel, one writer per shard, recording each in the plan file as it lands."""
    bar = console.Progress(sum(len(s.image_ids) for s in todo), desc="shards", unit="img", enabled=progress)
    lock = threading.Lock()

    def tick():
        with lock:
            bar.update(1)

    stop = threading.Event()
    # Threads, not processes: reading, CRC, hashing and writing release the GIL, and workers start instantly.
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        futures = [pool.submit(_write_shard, s, source=source, out=out, on_image=tick, stop=stop) for s in todo]
        for future in as_completed(futures):
            stats = future.result()
            done[stats["name"]] = stats
            _write_json(storage.join(out, PLAN), {**plan, "shards": list(done.values())})
            if after_shard:
                after_shard(len(done))
    finally:
        stop.set()  # on an error or Ctrl-C, writers abandon their shard (its temp file goes) instead of finishing
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()


class _Stopped(Exception):
    """Raised inside a shard writer when the build is being abandoned."""


def _write_shard(spec, *, source, out, on_image, stop):
    """Stream one shard to its final name (atomically) and return its manifest entry."""
    digest, size, class_counts = hashlib.sha256(), 0, [0] * NUM_CLASSES
    with storage.atomic_write(storage.join(out, spec.name), "wb") as f:
        for image_id in spec.image_ids:
            if stop.is_set():
                raise _Stopped(spec.name)
            rles = source.labels.rles[image_id] if source.labels else kaggle.EMPTY
            record = example.serialize(
                image_id=image_id,
                jpeg_bytes=source.read_image(image_id),
                height=HEIGHT,
                width=WIDTH,
                rles=rles,
                areas=[rle.area(r) for r in rles],
                fold=spec.fold,
            )
            framed = tfrecord.frame(record)
            f.write(framed)
            digest.update(framed)
            size += len(framed)
            class_counts = [n + bool(r) for n, r in zip(class_counts, rles)]
            on_image()
    return {"name": spec.name, "fold": spec.fold, "records": len(spec.image_ids), "class_counts": class_counts,
            "bytes": size, "sha256": digest.hexdigest()}


def _plan_digest(source, specs, *, folds, seed, shard_mb, pseudo=None):
    # Image sizes stand in for their bytes: a replaced image of another size makes a new plan. Pseudo-labels have
    # no CSV: their provenance (which holds the labels' digest) stands in for it.
    doc = {
        **({"pseudo": pseudo} if pseudo is not None else {}),
        "schema_version": example.SCHEMA_VERSION,
        "split": source.split,
        "csv_sha256": source.csv_sha256,
        "folds": folds,
        "seed": seed,
        "shard_mb": shard_mb,
        "shards": [[s.name, [[i, source.sizes[i]] for i in s.image_ids]] for s in specs],
        **source.manifest_extra(),
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def _write_json(path, doc):
    storage.write_text(path, json.dumps(doc, indent=1) + "\n")
