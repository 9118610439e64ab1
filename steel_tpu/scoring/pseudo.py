"""Pseudo-labels: score unlabelled JPEGs with a workdir's ensemble, keep the confident ones, write pseudo shards.

The scoring is predict's (scoring/: the model source's ensemble, its tuned pixel thresholds, soft gate and component
filter); pseudo_rule.ConfidenceRule decides which images are kept; the shard builder writes
them as a folder of split "pseudo" whose manifest's "pseudo" block records the provenance. Such a folder has no
folds: training mixes it into its batches (data.pseudo_share), validation and out-of-fold data never read it.
"""

import datetime
import hashlib
import json
import os
import time

import numpy as np

from steel_tpu import storage
from steel_tpu.data import pipeline
from steel_tpu.data import shards as shards_lib
from steel_tpu.data import source as source_lib
from steel_tpu.data.shard_folder import holds_shards
from steel_tpu.formats import outputs, rle
from steel_tpu.formats.kaggle import Labels
from steel_tpu.scoring.pseudo_rule import ConfidenceRule
from steel_tpu.scoring.scorer import scorer
from steel_tpu.scoring.source import ModelSource


class PseudoError(ValueError):
    """Pseudo-labelling cannot run as asked; the message names the path or setting."""


class Selection:
    """The rule's verdict on every scored image: the kept images' RLE labels, why each other was dropped, and what
    the rule saw of each (its gating probabilities and mask areas)."""

    def __init__(self, rule):
        self.rule, self.labels, self.dropped, self.scores = rule, {}, [], []

    def add(self, ids, masks, areas, probs):
        """Judge one batch (ids, bool masks [N, H, W, C], areas [N, C], gating probabilities [N, heads])."""
        kept, reasons = self.rule.judge(probs, areas)
        if kept.any():
            # A kept image's classes are each confidently present (its mask) or absent (no pixel): its masks are
            # its labels as they are.
            for image_id, rles in zip([i for i, k in zip(ids, kept) if k], rle.encode_batch(masks[kept])):
                self.labels[image_id] = tuple(rles)
        self.dropped += [(i, r) for i, k, r in zip(ids, kept, reasons) if not k]
        self.scores += [{"image_id": i, "probs": p, "areas": a}
                        for i, p, a in zip(ids, np.asarray(probs).tolist(), np.asarray(areas).tolist())]
        return len(ids)


def _claim_empty(out):
    """Refuse an --out that is a file, cannot be written or holds anything: nothing of another run is touched."""
    outputs.check_folder(out)
    entries = storage.listdir(out) if storage.isdir(out) else []
    if entries:
        shown = ", ".join(os.path.basename(e.rstrip("/")) for e in entries[:5])
        raise PseudoError(f"--out {out}: holds {len(entries)} entr{'y' if len(entries) == 1 else 'ies'} ({shown}"
                          f"{', ...' if len(entries) > 5 else ''}); pseudo shards go to a new or empty folder; "
                          "nothing was changed")


def _provenance(*, source, images, ens, pp, pp_from, rule, tta, selection):
    labels = json.dumps(sorted(selection.labels.items())).encode()
    return {
        "workdir": str(source),
        # One member: {task: [[file, bytes]]} and {task: folds}; several: those per member path (Ensemble's).
        "models": ens.identity,
        "folds": ens.folds,
        "thresholds": {"from": str(pp_from), **pp.to_dict()},
        "rule": rule.to_dict(),
        "tta": tta,
        "images": str(images),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "scored": len(selection.scores),
        "kept": len(selection.labels),
        "labels_sha256": hashlib.sha256(labels).hexdigest(),
        "dropped": [{"image_id": i, "reason": r} for i, r in sorted(selection.dropped)],
        "scores": sorted(selection.scores, key=lambda s: s["image_id"]),
    }


def write_pseudo_shards(*, out, found, labels, provenance, shard_mb=100.0, workers=None, progress=True):
    """Write the images of `labels` ({image id: RLEs}) from the scanned JPEG folder `found` (source.scan) as pseudo
    shards in `out`, `provenance` (its keys: data/manifest.PSEUDO_KEYS) as the manifest's "pseudo"; returns it."""
    kept = sorted(labels)
    source = source_lib.Source(split="pseudo", images_dir=found.images_dir, paths={i: found.paths[i] for i in kept},
                               sizes={i: found.sizes[i] for i in kept},
                               labels=Labels.from_mapping({i: labels[i] for i in kept}), csv_sha256=None, skipped=())
    build = shards_lib.plan_source(source, data=found.images_dir, out=out, folds=None, seed=0, shard_mb=shard_mb,
                                   pseudo=provenance)
    return shards_lib.write_build(build, workers=workers, progress=progress)


def pseudo_label(*, workdir, images, out, hi=0.9, lo=0.1, min_area=None, thresholds=None, folds=None,
                 batch_size=None, tta=False, shard_mb=100.0, workers=None, device=None, jit_compile=None,
                 progress=True):
    """Write the confident pseudo-labels of the JPEGs in `images` as a pseudo shard folder `out`; returns its
    manifest.

    `workdir`: a scoring.source.ModelSource or what resolves into one (a workdir, a system, a kit, several
    workdirs). `hi`, `lo`, `min_area` (per class; None: the thresholds' min areas): the ConfidenceRule.
    `thresholds`: a thresholds.json (default: the source's own; an untuned source is refused) whose pixel
    thresholds, soft gate and min components make the masks; its hard gate is not applied: hi and lo judge the
    classifier instead. `folds`: only these fold models.
    """
    start = time.perf_counter()
    source = ModelSource.resolve(workdir)
    _claim_empty(out)
    # Cheap checks first (listings, small files); checking every JPEG and loading models come after.
    if holds_shards(images):
        raise PseudoError(f"--images {images}: a shard folder; pseudo-labelling reads a folder of JPEG files "
                          "(their bytes go into the pseudo shards as they are)")
    if not source_lib.locate(images, split="test")[2]:
        raise PseudoError(f"--images {images}: no JPEG files (.jpg, .jpeg) there: nothing to pseudo-label")
    tuned = source.thresholds(thresholds, required_by="pseudo")  # never silent defaults
    if not any(m.completed_folds("classify") for m in source.stores):
        raise PseudoError(f"{source}: no completed classify folds: pseudo-labels need the classifier to agree "
                          "with the segmenter")
    plan = source.plan(thresholds=tuned, folds=folds, tasks=("classify", "segment"))
    pp, pp_from = plan.postprocess, plan.thresholds_from
    rule = ConfidenceRule(hi=hi, lo=lo, min_area=pp.min_area if min_area is None else tuple(min_area))
    found = source_lib.scan(images, split="test", workers=workers or os.cpu_count(), skip_bad=False)
    ids = sorted(found.paths)
    selection = Selection(rule)
    with scorer(plan, device=device, batch_size=batch_size, tta=tta, jit_compile=jit_compile) as scored:
        dataset = pipeline.predict_dataset(source=[found.paths[i] for i in ids], image_size=plan.segment_size,
                                           batch_size=scored.batch_size)
        scored.run(dataset, total=len(ids), progress=progress, desc="pseudo",
                   host_work=lambda batch, outputs: selection.add(*scored.rows(batch, outputs)))
        ens = scored.ensemble
    if not selection.labels:
        first = selection.dropped[0] if selection.dropped else ("-", "-")
        raise PseudoError(f"{images}: none of {len(selection.scores)} images passed the confidence rule (hi {rule.hi:g}, "
                          f"lo {rule.lo:g}, min area {list(rule.min_area)}; e.g. {first[0]}: {first[1]}); nothing "
                          "was written")
    provenance = _provenance(source=source, images=images, ens=ens, pp=pp, pp_from=pp_from, rule=rule, tta=tta,
                             selection=selection)
    manifest = write_pseudo_shards(out=out, found=found, labels=selection.labels, provenance=provenance,
                                   shard_mb=shard_mb, workers=workers, progress=progress)
    print(f"pseudo: kept {len(selection.labels)} of {len(selection.scores)} images ({len(selection.dropped)} not "
          f"confident, reasons in {storage.join(out, 'manifest.json')}), class counts {manifest['class_counts']}, "
          f"{time.perf_counter() - start:.1f}s -> {out}")
    return manifest
