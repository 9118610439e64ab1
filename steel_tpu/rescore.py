"""Score a workdir's chosen post-processing at full resolution on its out-of-fold images, beside tune's estimate."""

import hashlib

import numpy as np

from steel_tpu import custom_gradients, distribute, ensemble, metrics, predict, step, storage, system, tune
from steel_tpu.constants import NUM_CLASSES
from steel_tpu.data import pipeline
from steel_tpu.data.shard_folder import ShardFolder
from steel_tpu.workdir import Workdir

# Dice points between the full-resolution score and tune's 1/4-resolution one worth a warning: the 7th Severstal
# place saw a 0.03 threshold change move the private board by places.
TOLERANCE = 0.01


def _fold_dice(work, fold, *, folder, pp, device, batch_size):
    """{image id: float64 [C] Dice} of fold `fold`'s validation records, scored by that fold's own models the way
    predict scores images: ensemble forward and thresholds on the device, then predict's host rules."""
    dice = {}

    def host_work(batch, outputs):
        valid = batch["valid"]
        ids, masks, areas, probs = predict.scored_rows(batch, outputs, pp=pp)
        submitted = masks & pp.keep(areas, probs)[:, None, None, :]  # predict writes '' where keep says no
        for image_id, row in zip(ids, metrics.dice_matrix(submitted, batch["mask"][valid] > 0)):
            if image_id in dice:
                raise ValueError(f"{folder.path}: image {image_id} appears twice in fold {fold}'s shards")
            dice[image_id] = row
        return len(ids)

    with custom_gradients.forgotten_after():
        ens = ensemble.load(work, strategy=device.strategy, folds=[fold], tasks=pp.tasks)
        forward = ensemble.make_forward(ens, pp=pp)
        predict_step = step.make_predict_step(forward=forward, strategy=device.strategy,
                                              jit_compile=distribute.use_xla(device, None))
        files = folder.files(folds=[fold])
        dataset = pipeline.eval_dataset(files=files, image_size=ens.segment_size, batch_size=batch_size)
        total = sum(e["records"] for e in folder.entries_of([fold]))
        predict.run_batches(dataset, predict_step=predict_step, host_work=host_work, pending=lambda: [],
                            total=total, progress=False, desc=f"rescore fold {fold}")
    return dice


def _per_class(dice):
    return [float(d) for d in dice.mean(axis=0)]


def _thresholds(work, thresholds):
    """(PostProcess, its file, the file's sha256): `thresholds` or the workdir's, refused when there is none."""
    path = thresholds or Workdir(work).thresholds_path()
    if not storage.exists(path):
        raise FileNotFoundError(f"{path}: no such thresholds file; run `steel-tpu tune --workdir {work}` first")
    sha256 = hashlib.sha256(storage.read_bytes(path)).hexdigest()
    pp, _, _ = predict.load_thresholds(work, path)
    return pp, path, sha256


def rescore(*, workdir, shards, thresholds=None, tolerance=TOLERANCE, batch_size=None, device=None):
    """Write W/rescore.json: per class the full-resolution Dice of the chosen post-processing (`thresholds` or
    W's thresholds.json) on every completed segment fold's validation records, scored by that fold's models, beside
    tune's OOF-resolution estimate on the same images; returns its content. A class further than `tolerance`
    from its estimate is warned about. `shards` must be the folder W was trained from."""
    system.refuse(workdir, command="rescore")
    wd = Workdir(workdir)
    folder = ShardFolder.open(shards, split="train").check()
    wd.check_shards(folder)
    pp, pp_path, pp_sha256 = _thresholds(workdir, thresholds)
    # An old result must not outlive a failed run looking like its result.
    storage.remove(wd.rescore_path())
    stats = tune.collect(workdir)
    if pp.needs_classifier:
        missing = sorted(set(stats.folds) - set(wd.completed_folds("classify")))
        if missing:
            raise FileNotFoundError(f"{pp_path} gates on a classifier, but classify folds {missing} of {workdir} "
                                    "are not complete")
    estimate = tune.estimate(workdir, stats, pp)
    device, batch_size = predict.device_and_batch(wd.config(), device=device, batch_size=batch_size)
    full = {}
    for fold in stats.folds:
        scored = _fold_dice(workdir, fold, folder=folder, pp=pp, device=device, batch_size=batch_size)
        oof_ids = set(stats.image_ids[stats.fold_of == fold].tolist())
        if set(scored) != oof_ids:
            extra, lost = sorted(set(scored) - oof_ids), sorted(oof_ids - set(scored))
            raise ValueError(f"{wd.oof_path('segment', fold)}: its images differ from fold {fold} of {folder.path} "
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
    wd.save_rescore(result)
    for c in range(NUM_CLASSES):
        print(f"rescore: class {c + 1}: full-resolution dice {result['dice_full_resolution']['per_class'][c]:.4f}, "
              f"tune's 1/{stats.scale}-resolution estimate {result['dice_oof_estimate']['per_class'][c]:.4f}, "
              f"difference {difference[c]:+.4f}")
    print(f"rescore: {result['n_images']} OOF images (folds {result['folds']}), thresholds {pp_path} "
          f"(sha256 {pp_sha256[:12]}) -> {wd.rescore_path()}")
    for line in warnings:
        print(f"rescore: WARNING {line}")
    return result
