"""`steel-tpu report`: one HTML page with PNG figures describing a training workdir (local or gs://)."""

import html
import re
import time

import numpy as np

from steel_tpu import metrics, postprocess, storage
from steel_tpu.constants import CLASS_IDS, NUM_CLASSES
from steel_tpu.formats import outputs, system
from steel_tpu.formats import thresholds as thresholds_format
from steel_tpu.formats.workdir import THRESHOLDS, Workdir
from steel_tpu.reports import examples as example_images
from steel_tpu.reports import figures
from steel_tpu.reports.page import Section, page
from steel_tpu.tuning import checks, plot_data, plots

INDEX = "index.html"
EXAMPLES_PER_SIDE = 4  # best and worst validation images shown
CURVE_METRICS = {"classify": ("auc", "accuracy"), "segment": ("dice",)}
_TUNE_CAPTIONS = {  # tuning/plots.py's files; circles mark the chosen settings
    "dice_vs_pixel_threshold.png": "OOF Dice per class against the pixel threshold, at the chosen min area and gate.",
    "dice_vs_min_area.png": "OOF Dice per class against the minimum mask area, at the chosen threshold and gate.",
    "dice_vs_gate.png": "OOF Dice against the classifier gate, at the best threshold and area for each gate.",
    "area_histograms.png": "Mask areas per class: truth, submitted after tuning, and before min area and gate.",
}
# Every file a report may write: --out holding anything else is refused; these, and only these, are replaced.
FILES = frozenset({INDEX, "dice_per_class.png", "confusion.png", "examples.png",
                   *(f"curves_{task}.png" for task in CURVE_METRICS), *(f"tune_{name}" for name in _TUNE_CAPTIONS)})
_MEMBER_CURVES = re.compile(r"curves_[a-z][a-z0-9_-]{0,31}_(%s)\.png" % "|".join(CURVE_METRICS))
def training_logs(work, task):
    """{fold: log rows} of every fold of `task` with a non-empty log.csv, finished or not."""
    wd = Workdir(work)
    logs = {fold: wd.read_log(task, fold) for fold in wd.folds(task)}
    return {fold: rows for fold, rows in logs.items() if rows}


def _summarize_segment(work, folds, thresholds, *, k, eval_threshold):
    """One pass over each fold's oof.npz, one fold in memory at a time."""
    summary = metrics.OofSummary(thresholds=thresholds, k=k, eval_threshold=eval_threshold)
    for fold in folds:
        summary.add_fold(fold, Workdir(work).oof("segment", fold))  # checked by formats/oof.py
    return summary


def _curves_section(work, *, tasks=tuple(CURVE_METRICS), member=None):
    """Per task, its training curves and a row per fold; a system's `member` gets a section and files of its own."""
    section = Section("Training curves" if member is None else f"Member {member}: training curves")
    for task in tasks:
        logs = training_logs(work, task)
        if not logs:
            section.note(f"{task}: no {task}/fold*/log.csv yet.")
            continue
        metrics = CURVE_METRICS[task]
        section.figure(_curves_file(task, member),
                       figures.training_curves(logs, title=f"{task}: per epoch", metrics=metrics),
                       f"{task}: training loss (last step of each epoch), learning rate and validation "
                       f"{', '.join(metrics)} per epoch, one line per fold.")
        done = set(Workdir(work).completed_folds(task))
        section.table(["fold", "epochs logged", "complete", f"best {metrics[0]}", "at epoch", "last loss",
                       "train images/s"],
                      [_curve_row(fold, rows, metrics[0], fold in done) for fold, rows in sorted(logs.items())])
    return section


def _curves_file(task, member=None):
    return f"curves_{task}.png" if member is None else f"curves_{member}_{task}.png"


def _ours(name):
    """A file a report writes: FILES, or a system member's curves (named for the member: system.check_names)."""
    return name in FILES or bool(_MEMBER_CURVES.fullmatch(name))


def _curve_row(fold, rows, metric, complete):
    best = max(rows, key=lambda r: r.get(metric, -np.inf))
    last = rows[-1]
    return [fold, len(rows), "yes" if complete else "no", best.get(metric, float("nan")), best["epoch"] + 1,
            last.get("loss", float("nan")), last.get("train_images_per_s", float("nan"))]


def _dice_section(work, seg, cfg):
    section = Section("Per-class Dice")
    if seg is None:
        section.note("segmenter: no completed segment folds (segment/fold*/done.json), so no OOF Dice.")
    else:
        rows = seg.per_class_dice()
        section.figure("dice_per_class.png", figures.dice_bars(rows),
                       f"Segmenter out-of-fold Dice per class at the eval threshold "
                       f"{cfg.segment.train.eval_threshold:g} (full resolution, best epoch, no min area or gate).")
        section.table(["", *[f"class {c}" for c in CLASS_IDS], "mean"],
                      [[label, *map(float, values), float(values.mean())] for label, values in rows])
    logs = training_logs(work, "classify")
    if not logs:
        section.note("classifier: no classify/fold*/log.csv yet, so no AUC or accuracy.")
        return section
    section.parts.append("<p>Classifier validation (any defect) at its best-AUC epoch, the one whose weights "
                         f"and OOF were kept; accuracy at threshold {cfg.classify.train.eval_threshold:g}.</p>")
    best = {fold: max(rows, key=lambda r: r.get("auc", -np.inf)) for fold, rows in sorted(logs.items())}
    section.table(["fold", "epoch", "AUC", "accuracy"],
                  [[f, r["epoch"] + 1, r.get("auc", float("nan")), r.get("accuracy", float("nan"))]
                   for f, r in best.items()])
    return section


def _confusion_section(seg, thresholds, tuned):
    section = Section("Pixel confusion per class")
    if seg is None:
        section.note("No completed segment folds, so no OOF maps to count pixels on.")
        return section
    source = "tuned thresholds from thresholds.json" if tuned else "0.5 (no thresholds.json yet)"
    section.figure("confusion.png", figures.confusion_matrices(seg.counts, thresholds=thresholds),
                   f"Out-of-fold pixels of folds {seg.folds} (at OOF resolution), thresholded at {source}; "
                   "no min area or gate. Colour: share of the truth row.")
    rows = [[f"class {CLASS_IDS[c]}", thresholds[c], *map(float, rates)]
            for c, rates in enumerate(metrics.confusion_rates(seg.counts))]
    section.table(["", "pixel threshold", "TP rate", "FP rate", "FN rate", "TN rate", "precision", "recall"], rows)
    section.paragraph(
        f"All classes at once (seed 002's evaluation): out-of-fold pixels, rows truth and columns prediction, with "
        f"the share of each truth row. A pixel is predicted as the class of its highest map over the eval threshold "
        f"{seg.eval_threshold:g}, else background; a truth pixel two classes claim counts as the higher class id.")
    names = ["background", *(f"class {c}" for c in CLASS_IDS)]
    totals = np.maximum(seg.class_counts.sum(axis=1), 1)
    section.table(["truth \\ predicted", *names],
                  [[name, *(f"{n:,} ({n / total:.1%})" for n in row)]
                   for name, row, total in zip(names, seg.class_counts.tolist(), totals.tolist())])
    return section


def _settings_shown(pp):
    """A Thresholds.diagnosis row's post-processing as the report's cells: an off class shows "off" and no settings."""
    if postprocess.is_off(pp["pixel_threshold"]):
        return ["off (never submitted)"] + [None] * (len(pp) - 1)
    return list(pp.values())


def _tune_section(work, tuned):
    section = Section("Thresholds (tune)")
    if tuned is None:
        section.note(f"No {THRESHOLDS} in the workdir: run `steel-tpu tune --workdir {work}` to choose them.")
        return section
    result = tuned.record
    before, after = result["dice_before"], result["dice_after"]
    section.parts.append(f"<p>{result['n_images']} OOF images of folds {html.escape(str(result['folds']))}: "
                         f"mean Dice {before['mean']:.4f} at 0.5 → {after['mean']:.4f} tuned.</p>")

    def shown(value):
        return "-" if value is None else value

    section.table(["", "pixel threshold", "mask threshold", "min area (px)", "min component (px)", "gate",
                   "soft gate k", "Dice at 0.5", "Dice tuned",
                   "Dice all-empty", "defect images hit"],
                  [[f"class {row['class']}", *(shown(v) for v in _settings_shown(row["postprocess"])),
                    *(shown(row[k]) for k in ("dice_before", "dice_after", "dice_all_empty", "defect_hit_rate"))]
                   for row in tuned.diagnosis()[:NUM_CLASSES]])
    for warning in result.get("warnings", []):
        section.paragraph(f"Warning: {warning}.", warning=True)
    stability = result.get("fold_stability")
    if stability and len(stability["per_fold"]) > 1:
        section.paragraph("Per fold: the pixel threshold tune chooses on that fold alone / the Dice of the overall "
                     "choice on it. Thresholds that move between folds, or Dice that does, are fragile.")
        section.table(["fold", "images", *(f"class {i}: threshold / Dice" for i in CLASS_IDS)],
                      [[fold, f["n_images"], *(f"{checks.threshold_text(f['pixel_threshold'][c])} / "
                                               f"{f['dice'][c]:.4f}"
                                               for c in range(NUM_CLASSES))]
                       for fold, f in stability["per_fold"].items()])
    data = plot_data.load(Workdir(work).tune_dir())
    if data is None:
        section.note(f"No tune/{plot_data.PLOT_DATA} (tuned by an older version): run `steel-tpu tune --workdir "
                     f"{work}` again for the tuning plots.")
        return section
    for name, png in plots.draw(data).items():
        section.figure(f"tune_{name}", png, _TUNE_CAPTIONS[name])
    return section


def _header(work, cfg, data):
    seg, cls = cfg.segment, cfg.classify
    return (f"<h1>steel_tpu report</h1><p>workdir <code>{html.escape(str(work))}</code>, config "
            f"<b>{html.escape(cfg.name)}</b>: classifier {html.escape(cls.model.encoder)} at "
            f"{cls.data.image_height}x{cls.data.image_width}; segmenter {html.escape(seg.model.arch)}/"
            f"{html.escape(seg.model.encoder)} at {seg.data.image_height}x{seg.data.image_width}; "
            f"OOF maps at 1/{cfg.oof_scale} resolution. Shards: "
            f"{html.escape(str(data)) if data is not None else 'not given'}. Written "
            f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}.</p>")


def _workdir_sections(workdir, tuned, *, shards, examples):
    """(header, sections) of one training workdir's page."""
    cfg = Workdir(workdir).config()
    thresholds = tuned.postprocess.lower if tuned else (0.5,) * NUM_CLASSES  # where masks are drawn
    folds = Workdir(workdir).completed_folds("segment")
    seg = (_summarize_segment(workdir, folds, thresholds, k=examples,
                              eval_threshold=cfg.segment.train.eval_threshold) if folds else None)
    return _header(workdir, cfg, shards), [
        _curves_section(workdir, tasks=cfg.tasks), _dice_section(workdir, seg, cfg),
        _confusion_section(seg, thresholds, tuned is not None), _tune_section(workdir, tuned),
        example_images.section(seg, shards)]


def _system_sections(folder, tuned):
    """(header, sections) of a system's page: its members' training curves, then the ensemble's tuned Dice per class
    beside all-empty (the system is scored only as one ensemble: its members' maps mean nothing alone)."""
    name, names = system.read(folder)
    rows, sections = [], []
    for member, path in zip(names, system.member_paths(folder)):
        cfg = Workdir(path).config()
        seg = cfg.segment
        rows.append([member, ", ".join(cfg.tasks),
                     f"{cfg.classify.model.encoder} {cfg.classify.model.heads}, clean_keep "
                     f"{cfg.classify.data.clean_keep:g}" if "classify" in cfg.tasks else "-",
                     f"{seg.model.arch}/{seg.model.encoder}, classes {list(seg.model.classes)}, clean_keep "
                     f"{seg.data.clean_keep:g}" if "segment" in cfg.tasks else "-",
                     ", ".join(f"{t} {Workdir(path).completed_folds(t)}" for t in cfg.tasks)])
        sections.append(_curves_section(path, tasks=cfg.tasks, member=member))
    summary = Section("Members")
    summary.paragraph("One workdir per model, scored as one ensemble: each class's maps are the mean of the "
                      "segmenters that predict it; the classifiers gate as members.combine_gates says (a binary and a "
                      "defect-images-only multilabel classifier: P(defect) x P(class | defect)).")
    summary.table(["member", "tasks", "classifier", "segmenter", "completed folds"], rows)
    header = (f"<h1>steel_tpu report</h1><p>system <code>{html.escape(str(folder))}</code>, preset "
              f"<b>{html.escape(name)}</b>, {len(names)} members. Written "
              f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}.</p>")
    return header, [summary, *sections, _tune_section(folder, tuned)]


def report(*, workdir, out, shards=None, examples=EXAMPLES_PER_SIDE):
    """Write `out/index.html` and its PNGs about the training workdir `workdir`; returns the index path.

    `shards` (the shard folder training read) adds the images under the example predictions. The PNGs are
    written first and index.html last, so a report only looks complete once it is.
    """
    found = outputs.claim_folder(out, ours=_ours, command="report")  # before anything is written
    index = storage.join(out, INDEX)
    storage.remove(index)  # an old page must not present half-rewritten figures as a finished report
    outputs.remove_temps(out, found, ours=_ours)
    tuned = thresholds_format.read_if_present(storage.join(workdir, THRESHOLDS))
    if system.is_system(workdir):
        header, sections = _system_sections(workdir, tuned)
    else:
        header, sections = _workdir_sections(workdir, tuned, shards=shards, examples=examples)
    storage.makedirs(out)
    for section in sections:
        for name, png in section.files.items():
            storage.write_bytes(storage.join(out, name), png)
    written = {name for s in sections for name in s.files}
    for name in sorted(n for n in set(found) - written - {INDEX} if _ours(n)):
        storage.remove(storage.join(out, name))  # an earlier report's figure this page no longer shows
    storage.write_text(index, page(header, sections))
    print(f"report: {sum(len(s.files) for s in sections)} figures -> {index}")
    return index
