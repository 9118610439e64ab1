"""Score a workdir's chosen post-processing at full resolution on its out-of-fold images, beside tune's estimate."""

import hashlib
import json

import numpy as np

from steel_tpu import metrics, storage
from steel_tpu.constants import NUM_CLASSES
from steel_tpu.data import pipeline
from steel_tpu.data.shard_folder import ShardFolder
from steel_tpu.scoring.scorer import device_and_batch, scorer
from steel_tpu.scoring.source import ModelSource
from steel_tpu.tuning import components, oof_stats

RESCORE = "rescore.json"  # beside the thresholds it scores: a workdir's, a system's or an ensemble's folder
# Dice points between the full-resolution score and tune's 1/4-resolution one worth a warning: the 7th Severstal
# place saw a 0.03 threshold change move the private board by places.
TOLERANCE = 0.01


def _fold_dice(source, fold, *, folder, thresholds, device, batch_size):
    """{image id: float64 [C] Dice} of fold `fold`'s validation records, scored by that fold's own models of every
    member the way predict scores images: ensemble forward and thresholds on the device, then predict's host rules."""
    dice = {}
    plan = source.plan(thresholds=thresholds, folds=[fold])

    def host_work(batch, outputs):
        valid = batch["valid"]
        ids, masks, areas, probs = scored.rows(batch, outputs)
        submitted = masks & plan.postprocess.keep(areas, probs)[:, None, None, :]  # predict writes '' where not kept
        for image_id, row in zip(ids, metrics.dice_matrix(submitted, batch["mask"][valid] > 0)):
            if image_id in dice:
                raise ValueError(f"{folder.path}: image {image_id} appears twice in fold {fold}'s shards")
            dice[image_id] = row
        return len(ids)

    with scorer(plan, device=device, batch_size=batch_size) as scored:
        dataset = pipeline.eval_dataset(files=folder.files(folds=[fold]), image_size=plan.segment_size,
                                        batch_size=scored.batch_size)
        total = sum(e["records"] for e in folder.entries_of([fold]))
        scored.run(dataset, host_work=host_work, total=total, progress=False, desc=f"rescore fold {fold}")
    return dice


def _per_class(dice):
    return [float(d) for d in dice.mean(axis=0)]


def rescore(*, workdir, shards, thresholds=None, tolerance=TOLERANCE, batch_size=None, device=None):
    """Write rescore.json beside the thresholds it scores (a workdir's or system's folder, else the given
    thresholds file's): per class the full-resolution Dice of the chosen post-processing (`thresholds`, default the
    source's own) on every completed segment fold's validation records, scored by that fold's models (of every
    member: a system or an ensemble of workdirs rescore as one), beside tune's OOF-resolution estimate on the same
    images; returns its content. A class further than `tolerance` from its estimate is warned about. `shards`
    must be the folder every member was trained from."""
    source = ModelSource.resolve(workdir)
    members = source.workdirs(command="rescore")
    folder = ShardFolder.open(shards, split="train").check()
    for wd in members:
        wd.check_shards(folder)
    found = source.thresholds(thresholds, required_by="rescore")
    pp, pp_path = found.postprocess, found.path
    pp_sha256 = hashlib.sha256(storage.read_bytes(pp_path)).hexdigest()
    out = storage.join(source.own_folder() or storage.parent(pp_path), RESCORE)
    # An old result must not outlive a failed run looking like its result.
    storage.remove(out)
    paths = tuple(wd.path for wd in members)
    stats = oof_stats.collect(paths)
    for wd in members:
        missing = sorted(set(stats.folds) - set(wd.completed_folds("classify")))
        if pp.needs_classifier and "classify" in wd.config().tasks and missing:
            raise FileNotFoundError(f"{pp_path} gates on a classifier, but classify folds {missing} of {wd.path} "
                                    "are not complete")
    estimate = components.estimate(paths, stats, pp)
    device, batch_size = device_and_batch([wd.config() for wd in members if "segment" in wd.config().tasks],
                                          device=device, batch_size=batch_size)
    full = {}
    for fold in stats.folds:
        scored = _fold_dice(source, fold, folder=folder, thresholds=pp_path, device=device, batch_size=batch_size)
        oof_ids = set(stats.image_ids[stats.fold_of == fold].tolist())
        if set(scored) != oof_ids:
            extra, lost = sorted(set(scored) - oof_ids), sorted(oof_ids - set(scored))
            raise ValueError(f"{members[0].oof_path('segment', fold)}: its images differ from fold {fold} of "
                             f"{folder.path} "
                             f"({len(extra)} only in the shards, e.g. {extra[:3]}; {len(lost)} only in the OOF "
                             f"file, e.g. {lost[:3]})")
        full.update(scored)
    full = np.stack([full[i] for i in stats.image_ids.tolist()])
    difference = [f - e for f, e in zip(_per_class(full), _per_class(estimate))]
    warnings = [f"class {c}: full-resolution dice {f:.4f} differs from tune's 1/{stats.scale}-resolution estimate "
                f"{e:.4f} by {d:+.4f} (tolerance {tolerance}): the thresholds were chosen on maps that score "
                "differently at full resolution"
                for c, (f, e, d) in enumerate(zip(_per_class(full), _per_class(estimate), difference), start=1)
                if abs(d) > tolerance]
    result = {
        "thresholds": str(pp_path),
        "thresholds_sha256": pp_sha256,
        "postprocess": pp.to_dict(),
        "shards": folder.path,
        "shards_fingerprint": folder.fingerprint,
        "folds": list(stats.folds),
        "n_images": int(len(stats.image_ids)),
        "oof_scale": stats.scale,
        "dice_full_resolution": {"mean": float(full.mean()), "per_class": _per_class(full)},
        "dice_oof_estimate": {"mean": float(estimate.mean()), "per_class": _per_class(estimate)},
        "difference": difference,
        "per_fold": {str(f): {"dice_full_resolution": _per_class(full[stats.fold_of == f]),
                              "dice_oof_estimate": _per_class(estimate[stats.fold_of == f])} for f in stats.folds},
        "tolerance": tolerance,
        "warnings": warnings,
    }
    storage.write_text(out, json.dumps(result, indent=2) + "\n")
    for c in range(NUM_CLASSES):
        print(f"rescore: class {c + 1}: full-resolution dice {result['dice_full_resolution']['per_class'][c]:.4f}, "
              f"tune's 1/{stats.scale}-resolution estimate {result['dice_oof_estimate']['per_class'][c]:.4f}, "
              f"difference {difference[c]:+.4f}")
    print(f"rescore: {result['n_images']} OOF images (folds {result['folds']}), thresholds {pp_path} "
          f"(sha256 {pp_sha256[:12]}) -> {out}")
    for line in warnings:
        print(f"rescore: WARNING {line}")
    return result
