"""A shard folder's names and manifest.json: shard file names, the manifest's keys, its one writer (`make`, which
the shard builder publishes last) and its one reader (`read`, checked for structure and for agreeing with itself)."""

import json
import re

from steel_tpu import storage
from steel_tpu.constants import NUM_CLASSES
from steel_tpu.data import example


class ShardFolderError(ValueError):
    """A shard folder whose manifest or files cannot be trusted; the message names the file."""


MANIFEST = "manifest.json"  # written last by the shard builder: a folder without it is unfinished
PLAN = "_plan.json"  # the builder's plan and finished shards; exists only while a build is unfinished
# pseudo: labels a workdir's ensemble predicted for unlabelled images (steel_tpu.scoring.pseudo); no folds, so they can
# never be validated or scored on, and a split of their own, so no reader of train or test shards opens them.
SPLITS = ("train", "test", "pseudo")
MAX_SHARDS = 99_999  # per fold: the five digits of a shard name's index and count
_NAMES = {"train": re.compile(r"train-f(\d+)-(\d{5})-of-(\d{5})\.tfrec"),
          "test": re.compile(r"test-()(\d{5})-of-(\d{5})\.tfrec"),
          "pseudo": re.compile(r"pseudo-()(\d{5})-of-(\d{5})\.tfrec")}
_KEYS = ("split", "folds", "records", "class_counts", "bytes", "fold_totals", "shards", "skipped")
# A pseudo manifest's provenance ("pseudo"): what made the labels, from which images, what the rule saw of each
# image (scores: gating probabilities and mask areas) and why it dropped the others.
PSEUDO_KEYS = ("workdir", "models", "thresholds", "rule", "images", "created", "scored", "kept", "dropped", "scores")
_ENTRY_KEYS = ("name", "fold", "records", "class_counts", "bytes", "sha256")


def shard_name(*, split, fold, index, count):
    if split == "train":
        return f"train-f{fold}-{index:05d}-of-{count:05d}.tfrec"
    return f"{split}-{index:05d}-of-{count:05d}.tfrec"


def parse_shard_name(name):
    """(split, fold, index, count) of a shard file name (fold -1 for test and pseudo), or None if it is not one."""
    for split, pattern in _NAMES.items():
        if m := pattern.fullmatch(name):
            fold, index, count = int(m[1] or -1), int(m[2]), int(m[3])
            # Only the spelling shard_name writes: "train-f01-..." would be a second name for fold 1.
            if shard_name(split=split, fold=fold, index=index, count=count) == name:
                return split, fold, index, count
    return None


def read(shards):
    """(path, manifest dict) of the folder `shards`, structurally checked; errors name manifest.json."""
    path = storage.join(shards, MANIFEST)
    if not storage.exists(path):
        unfinished = (" (a build is unfinished: re-run the same shards command to resume)"
                      if storage.exists(storage.join(shards, PLAN)) else "")
        raise FileNotFoundError(f"{path}: not found, not a finished shard folder{unfinished}")
    try:
        doc = json.loads(storage.read_text(path))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ShardFolderError(f"{path}: not valid JSON ({e})") from None
    problem = _structure_problem(doc)
    if problem:
        raise ShardFolderError(f"{path}: {problem}")
    return path, doc


def _is_count(value):
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _structure_problem(doc):
    """The first reason `doc` is not a manifest this code can read, or None."""
    if not isinstance(doc, dict):
        return "not a shard manifest (expected a JSON object)"
    if doc.get("schema_version") != example.SCHEMA_VERSION:
        return (f"schema version {doc.get('schema_version')!r}, this code reads {example.SCHEMA_VERSION}: "
                "rebuild the shards with `steel-tpu shards --overwrite`")
    missing = [k for k in _KEYS if k not in doc]
    if missing:
        return f"missing key(s) {', '.join(missing)}"
    if doc["split"] not in SPLITS:
        return f"split {doc['split']!r}, expected one of {', '.join(SPLITS)}"
    if not isinstance(doc["shards"], list) or not doc["shards"]:
        return "lists no shards"
    if (doc["split"] == "pseudo") != ("pseudo" in doc):
        return ("a pseudo manifest without its provenance (\"pseudo\")" if doc["split"] == "pseudo"
                else f"a {doc['split']} manifest with a \"pseudo\" provenance block")
    if doc["split"] == "pseudo" and (not isinstance(doc["pseudo"], dict)
                                     or any(k not in doc["pseudo"] for k in PSEUDO_KEYS)):
        return f"\"pseudo\" provenance must hold {', '.join(PSEUDO_KEYS)}"
    names = set()
    for i, e in enumerate(doc["shards"]):
        if not isinstance(e, dict) or any(k not in e for k in _ENTRY_KEYS):
            return f"shard entry {i} lacks one of {', '.join(_ENTRY_KEYS)}"
        counts = e["class_counts"]
        if not (_is_count(e["records"]) and _is_count(e["bytes"]) and isinstance(counts, list)
                and len(counts) == NUM_CLASSES and all(map(_is_count, counts))):
            return f"shard entry {i}: records, bytes and {NUM_CLASSES} class_counts must be integers >= 0"
        parsed = parse_shard_name(e["name"]) if isinstance(e["name"], str) else None
        # A checked name also keeps readers inside the folder: "../x" is never a shard name.
        if parsed is None or parsed[:2] != (doc["split"], e["fold"]):
            return f"shard entry {i}: {e['name']!r} is not the name of a {doc['split']} shard of fold {e['fold']}"
        if e["name"] in names:
            return f"shard {e['name']} listed twice"
        names.add(e["name"])
    return None


def manifest_problems(doc):
    """Where a structurally sound manifest disagrees with itself: totals, fold count, fold totals, shard counts."""
    entries, folds, problems = doc["shards"], doc["folds"], []
    for key, value in totals(entries).items():
        if doc[key] != value:
            problems.append(f"total {key} {doc[key]} != {value} summed over its shards")
    if doc["split"] == "train":
        if not _is_count(folds) or folds < 2:
            return [*problems, f"folds {folds!r}: a train manifest needs an integer >= 2"]
        outside = sorted({e["fold"] for e in entries} - set(range(folds)))
        if outside:
            problems.append(f"shards of fold(s) {outside} outside its {folds} folds")
        expected = [fold_totals(entries, f) for f in range(folds)]
        stated = {t.get("fold"): t for t in doc["fold_totals"] if isinstance(t, dict)}
        for mine in expected:
            if mine["shards"] == 0:
                problems.append(f"fold {mine['fold']} has no shard")
            if stated.get(mine["fold"]) != mine:
                problems.append(f"fold {mine['fold']} totals {stated.get(mine['fold'])} != {mine} summed over "
                                "its shards")
        if len(doc["fold_totals"]) != folds:
            problems.append(f"{len(doc['fold_totals'])} fold_totals for {folds} folds")
    elif folds is not None or doc["fold_totals"]:
        problems.append(f"folds or fold_totals in a {doc['split']} manifest ({doc['split']} shards have no folds)")
    # Each shard name carries its fold's shard count: a dropped or added entry shows here.
    for fold in sorted({e["fold"] for e in entries}):
        got = sorted(parse_shard_name(e["name"])[2:] for e in entries if e["fold"] == fold)
        if got != [(i, len(got)) for i in range(len(got))]:
            where = f"fold {fold}" if fold >= 0 else doc["split"]
            problems.append(f"{where}: {len(got)} shard entries whose names do not count 0..{len(got) - 1} "
                            f"of {len(got)}")
    return problems


def fold_totals(entries, fold):
    """One fold's shard count and totals, from the manifest entries of all shards."""
    mine = [e for e in entries if e["fold"] == fold]
    return {"fold": fold, "shards": len(mine), **totals(mine)}


def totals(entries):
    """Records, per-class positive counts and bytes summed over manifest entries."""
    return {
        "records": sum(e["records"] for e in entries),
        "class_counts": [sum(e["class_counts"][c] for e in entries) for c in range(NUM_CLASSES)],
        "bytes": sum(e["bytes"] for e in entries),
    }


def make(source, specs, done, *, data, folds, seed, shard_mb, plan_sha256, pseudo=None):
    """The manifest of a finished build: the source's facts, the plan, every shard's entry (`done`: {name: entry},
    in `specs` order), the totals, what was skipped and why, and a pseudo folder's provenance."""
    shards = [done[s.name] for s in specs]
    fold_ids = sorted({s.fold for s in specs if s.fold >= 0})
    return {
        "schema_version": example.SCHEMA_VERSION,
        "split": source.split,
        "source": str(data),
        "csv_sha256": source.csv_sha256,
        "folds": folds if source.split == "train" else None,
        "seed": seed,
        "shard_mb": shard_mb,
        "plan_sha256": plan_sha256,
        **totals(shards),
        "fold_totals": [fold_totals(shards, f) for f in fold_ids],
        "shards": shards,
        "skipped": [{"image_id": i, "reason": reason} for i, reason in source.skipped],
        **source.manifest_extra(),
        **({"pseudo": pseudo} if pseudo is not None else {}),
    }


def write(folder, doc):
    """Publish `doc` (make's) as the folder's manifest.json: the builder's last write, so a folder holding one is
    finished."""
    storage.write_text(storage.join(folder, MANIFEST), json.dumps(doc, indent=1) + "\n")
