"""`steel-tpu compare`: train presets on the same folds into OUT/<preset>/, tune each, and compare them per class."""

import html
import json
import time

from steel_tpu import config, postprocess, storage
from steel_tpu.formats import outputs, system
from steel_tpu.formats import thresholds as thresholds_format
from steel_tpu.formats.workdir import Workdir
from steel_tpu.reports.page import Section, page
from steel_tpu.scoring import members
from steel_tpu.scoring.source import ModelSource
from steel_tpu.tuning.tune import tune

HTML, JSON = "compare.html", "compare.json"
FILES = frozenset({HTML, JSON})  # what compare writes directly in OUT; anything else there is refused
_TIE = 1e-9


def _check_workdirs(workdirs, cfgs):
    """Each OUT/<preset> is absent, empty, or a workdir of that preset's config, or a system (then training resumes
    it; presets.run_system checks a system's members)."""
    for name, path in workdirs.items():
        if not storage.exists(path) or system.is_system(path):
            continue
        if None in cfgs[name] and Workdir(path).check_config(cfgs[name][None]):
            continue
        if not storage.isdir(path):
            raise ValueError(f"{path}: a file where compare keeps the {name} workdir; nothing was changed")
        if storage.listdir(path):
            raise ValueError(f"{path}: holds files but is not a training workdir (no config.json); nothing was "
                             "changed: give an --out whose preset folders are new, empty or earlier compare runs'")


def oof_image_ids(work):
    """The sorted image ids of every completed segment fold's out-of-fold data (what tune scores)."""
    wd = members.open_oof(ModelSource.resolve(work).paths)
    return sorted(i for fold in wd.completed_folds("segment") for i in wd.oof("segment", fold)["image_ids"].tolist())


def check_same_images(workdirs):
    """The OOF image ids every workdir's tune scores, refused (naming the preset and an image) unless all equal."""
    (first, path), *others = workdirs.items()
    ids = oof_image_ids(path)
    for name, other in others:
        theirs = oof_image_ids(other)
        if theirs == ids:
            continue
        extra, missing = sorted(set(theirs) - set(ids)), sorted(set(ids) - set(theirs))
        where = (f"its OOF image {extra[0]} is not among {first}'s" if extra else
                 f"{first}'s OOF image {missing[0]} is not among its" if missing else "an image repeats in its OOF")
        raise ValueError(f"{name} ({other}): {where} ({len(theirs)} vs {len(ids)} images): presets must be scored on "
                         "the same images; train both on the same --shards and --folds into a new --out")
    return ids


def verdict(dice, *, empty):
    """One line: which preset's Dice (`dice`: {preset: value}) is higher and by how much, or a tie; and whether any
    beats submitting nothing (`empty`)."""
    ranked = sorted(dice.items(), key=lambda item: -item[1])
    (best, top), (second, runner) = ranked[0], ranked[1]
    if top - runner <= _TIE:
        tied = [name for name, value in ranked if top - value <= _TIE]
        text = f"tie: {' = '.join(tied)} at {top:.4f}"
    else:
        text = f"{best} higher by {top - runner:.4f} ({top:.4f} vs {runner:.4f} for {second})"
    if empty is not None and top <= empty + _TIE:
        text += f"; none beats submitting it empty ({empty:.4f})"
    return text


def comparison(results):
    """compare.json's rows from each preset's thresholds.json (`results`: {preset: formats.thresholds.Thresholds}):
    per class and the mean, each preset's Thresholds.diagnosis numbers, the all-empty Dice once, and the verdict."""
    diagnoses = {name: result.diagnosis() for name, result in results.items()}
    rows = []
    for i, row in enumerate(next(iter(diagnoses.values()))):
        empties = {name: d[i]["dice_all_empty"] for name, d in diagnoses.items()}
        if len(set(empties.values())) != 1:  # the same images with other truth: other shards under the same ids
            raise ValueError(f"class {row['class']}: the presets' all-empty Dice differ ({empties}) on the same "
                             "image ids: were they trained on different shard folders?")
        presets = {name: {k: d[i][k] for k in ("dice_after", "dice_before", "defect_hit_rate", "postprocess")}
                   for name, d in diagnoses.items()}
        empty = row["dice_all_empty"]
        rows.append({"class": row["class"], "dice_all_empty": empty, "presets": presets,
                     "verdict": verdict({n: p["dice_after"] for n, p in presets.items()}, empty=empty)})
    return rows


def _postprocess_text(pp):
    if postprocess.is_off(pp["pixel_threshold"]):
        return "off (never submitted)"
    parts = [f"pixel ≥ {pp['pixel_threshold']:g}"]
    if pp["mask_threshold"] is not None and pp["mask_threshold"] != pp["pixel_threshold"]:
        parts.append(f"mask ≥ {pp['mask_threshold']:g}")
    parts.append(f"min area {pp['min_area']} px")
    if pp["min_component"]:
        parts.append(f"min component {pp['min_component']} px")
    parts.append(f"gate {pp['gate']}")
    if pp["soft_gate"]:
        parts.append(f"soft gate k {pp['soft_gate']:g}")
    return ", ".join(parts)


def _page(doc):
    names = doc["configs"]
    section = Section("Per class, after tuning")
    section.paragraph(f"Out-of-fold Kaggle Dice on the same {doc['n_images']} images (folds {doc['oof_folds']}) for "
                      "each preset after its own `tune`; the Dice of submitting every class empty on those images; "
                      "the share of defect images each preset's submitted mask touches (Dice > 0); and the "
                      "post-processing tune chose. A Dice near the all-empty one with few defect images hit is a "
                      "class not learned.")

    def shown(value):
        return "-" if value is None else value

    section.table(["", *(f"Dice: {n}" for n in names), "Dice all-empty", *(f"defect images hit: {n}" for n in names),
                   *(f"post-processing: {n}" for n in names), "verdict"],
                  [[f"class {r['class']}" if r["class"] != "mean" else "mean",
                    *(r["presets"][n]["dice_after"] for n in names), shown(r["dice_all_empty"]),
                    *(shown(r["presets"][n]["defect_hit_rate"]) for n in names),
                    *(_postprocess_text(r["presets"][n]["postprocess"]) if r["presets"][n]["postprocess"] else "-"
                      for n in names), r["verdict"]] for r in doc["rows"]])
    section.paragraph("Each preset's workdir (`steel-tpu report --workdir` draws its own page): " +
                      ", ".join(f"{n}: {doc['workdirs'][n]}" for n in names) + ".")
    header = (f"<h1>steel_tpu comparison</h1><p>{html.escape(' vs '.join(names))}: trained on "
              f"<code>{html.escape(str(doc['shards']))}</code>, folds {html.escape(str(doc['folds']))}, tasks "
              f"{html.escape(', '.join(doc['tasks']))}, overrides "
              f"{html.escape(' '.join(doc['overrides']) or 'none')}. Written {html.escape(doc['written'])}.</p>")
    return page(header, [section], title="steel_tpu comparison")


def compare(*, shards, configs, folds, out, tasks=("classify", "segment"), overrides=(), device=None):
    """Train each preset of `configs` (with `overrides`) on `folds` of `shards` into `out`/<preset>/ (resuming),
    tune each, and write `out`/compare.json, then `out`/compare.html last; returns the page's path."""
    names = config.check_presets(configs)
    if "segment" not in tasks:
        raise ValueError("compare: the comparison is of segmentation Dice: --task segment or both")
    # Every config built (a bad --set fails here) and every folder checked before anything is written.
    cfgs = {name: config.members_of(name, list(overrides)) for name in names}
    found = outputs.claim_folder(out, ours=FILES.__contains__, command="compare")
    workdirs = {name: storage.join(out, name) for name in names}
    _check_workdirs(workdirs, cfgs)
    for name in (HTML, JSON):  # an earlier comparison must not stand beside workdirs this run changes
        storage.remove(storage.join(out, name))
    outputs.remove_temps(out, found, ours=FILES.__contains__)
    from steel_tpu.training import presets  # TensorFlow only once the arguments and folders are known to be good

    for name in names:
        print(f"compare: {name} -> {workdirs[name]}")
        trains = {t for cfg in cfgs[name].values() for t in cfg.tasks}  # --task both: what each preset has
        presets.run_preset(shards=shards, workdir=workdirs[name], name=name, members=cfgs[name],
                         tasks=[t for t in tasks if t in trains], folds=folds, device=device)
    ids = check_same_images(workdirs)
    results = {}
    for name in names:
        tune(workdir=workdirs[name])
        results[name] = thresholds_format.read(storage.join(workdirs[name], thresholds_format.FILE))
    doc = {"configs": list(names), "workdirs": workdirs, "shards": str(shards), "folds": list(folds),
           "tasks": list(tasks), "overrides": list(overrides), "n_images": len(ids),
           "oof_folds": results[names[0]].record["folds"], "rows": comparison(results),
           "written": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    storage.write_text(storage.join(out, JSON), json.dumps(doc, indent=2) + "\n")
    index = storage.join(out, HTML)
    storage.write_text(index, _page(doc))  # last: a comparison only looks complete once it is
    for row in doc["rows"]:
        print(f"compare: {'class ' + str(row['class']) if row['class'] != 'mean' else 'mean'}: {row['verdict']}")
    print(f"compare: -> {index}")
    return index
