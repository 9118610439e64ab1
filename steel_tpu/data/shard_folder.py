"""A finished shard folder: its manifest (data/manifest.py) checked against itself and the files, the shards to open,
records back."""

import hashlib
import json
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from steel_tpu import storage
from steel_tpu.data import example, manifest, tfrecord
from steel_tpu.data.manifest import MANIFEST, PLAN, ShardFolderError, parse_shard_name

_SHOWN = 10  # problems spelled out in one error line; the rest are counted


def join_problems(problems):
    more = f"; and {len(problems) - _SHOWN} more" if len(problems) > _SHOWN else ""
    return f"{len(problems)} problem(s): " + "; ".join(problems[:_SHOWN]) + more


def holds_shards(path):
    """Whether `path` is a folder holding a manifest, a build plan or shard-named files (one listing)."""
    if not storage.isdir(path):
        return False
    return any(n in (MANIFEST, PLAN) or parse_shard_name(n) for n in storage.list_files(path))


@dataclass(frozen=True)
class ShardFolder:
    """A finished shard folder whose manifest agrees with itself; readers open only the shards it lists."""

    path: str
    manifest: dict

    @classmethod
    def open(cls, shards, *, split=None):
        """Read and validate `shards`/manifest.json; `split` ("train"/"test"/"pseudo"): refuse the other kinds."""
        path, doc = manifest.read(shards)
        problems = manifest.manifest_problems(doc)
        if problems:
            raise ShardFolderError(f"{path}: disagrees with itself, {join_problems(problems)}")
        if split is not None and doc["split"] != split:
            raise ShardFolderError(f"{path}: a folder of {doc['split']} shards, {split} shards expected")
        return cls(path=str(shards), manifest=doc)

    @property
    def manifest_path(self):
        return storage.join(self.path, MANIFEST)

    @property
    def split(self):
        return self.manifest["split"]

    @property
    def provenance(self):
        """A pseudo folder's "pseudo" block (what made its labels); None for train and test shards."""
        return self.manifest.get("pseudo")

    @property
    def num_folds(self):
        """K for train shards, None for test shards."""
        return self.manifest["folds"]

    @property
    def records(self):
        return self.manifest["records"]

    @property
    def entries(self):
        return self.manifest["shards"]

    @property
    def fingerprint(self):
        """sha256 over the folds and contents (per-shard sha256) the manifest lists: the same shards wherever the
        folder lives (moved to gs:// or renamed), different as soon as any shard or fold assignment differs."""
        listed = sorted((e["fold"], e["name"], e["sha256"]) for e in self.entries)
        return hashlib.sha256(json.dumps([self.num_folds, listed]).encode()).hexdigest()

    @property
    def manifest_sha256(self):
        """sha256 of the manifest's content (canonical JSON): the shards and, for pseudo shards, their provenance."""
        return hashlib.sha256(json.dumps(self.manifest, sort_keys=True).encode()).hexdigest()

    def entries_of(self, folds=None):
        """The manifest entries of `folds` (None: every shard), in manifest order."""
        if folds is None:
            return list(self.entries)
        wanted = {int(f) for f in folds}
        if self.split != "train" or not wanted or not wanted <= set(range(self.num_folds)):
            have = "no folds" if self.split != "train" else f"folds 0..{self.num_folds - 1}"
            raise ShardFolderError(f"{self.manifest_path}: no shards for fold(s) {sorted(wanted)} ({have})")
        return [e for e in self.entries if e["fold"] in wanted]

    def files(self, folds=None):
        """Full paths of the shards the manifest lists (of `folds` for train), never a glob."""
        return [storage.join(self.path, e["name"]) for e in self.entries_of(folds)]

    def check(self):
        """Cheap (one listing): every listed shard has its manifest size and no unlisted shard file is there."""
        found = storage.list_files(self.path)
        problems = []
        for e in self.entries:
            size = found.get(e["name"])
            if size is None:
                problems.append(f"{e['name']}: listed in {MANIFEST} but missing")
            elif size != e["bytes"]:
                problems.append(f"{e['name']}: {size} bytes, {MANIFEST} says {e['bytes']} (truncated or replaced)")
        listed = {e["name"] for e in self.entries}
        problems += [f"{n}: a shard file that {MANIFEST} does not list" for n in sorted(found)
                     if parse_shard_name(n) and n not in listed]
        if problems:
            raise ShardFolderError(f"{self.path}: {join_problems(problems)}")
        return self


def records_in(f, name):
    """Parsed records (example.parse_numpy) of one open shard; a broken record raises naming `name` and its index."""
    index = 0
    try:
        for index, serialized in enumerate(tfrecord.read_records(f)):
            yield example.parse_numpy(serialized)
    except tfrecord.TFRecordError as e:
        raise ShardFolderError(f"{name}: {e}") from None
    except (DecodeError, IndexError, UnicodeDecodeError) as e:
        raise ShardFolderError(f"{name}: record {index}: not a steel_tpu record ({type(e).__name__})") from None


def read_records(shards, image_ids=None):
    """Parsed records of the shard files `shards`, in order; with `image_ids`, only those, stopping once all are
    read. Shared by verify-style readers and the report's image lookups."""
    wanted = None if image_ids is None else set(image_ids)
    for path in shards:
        if wanted is not None and not wanted:
            return
        with storage.open(path, "rb") as f:
            for record in records_in(f, path):
                if wanted is None:
                    yield record
                elif record[example.IMAGE_ID] in wanted:
                    wanted.discard(record[example.IMAGE_ID])
                    yield record
                    if not wanted:
                        break
