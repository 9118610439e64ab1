"""Choose per-class pixel thresholds, minimum mask areas and the classifier gate that maximise out-of-fold Dice.

Every completed fold's oof.npz is reduced once to per-(image, class) histograms of its uint8 probability maps
(all pixels, and truth pixels), from which the intersection and predicted area at ANY pixel threshold are suffix
sums; the grid search is then a few tensor products. Candidate settings are judged with postprocess' own rules
(levels, area_kept, gate_kept), and the reported Dice goes through PostProcess.keep, which `predict` uses.
"""

import io
from dataclasses import dataclass

import numpy as np

from steel_tpu import members, outputs, postprocess, storage, system, tune_checks, tune_double, tune_gain, tune_soft
from steel_tpu.constants import HEIGHT, NUM_CLASSES
from steel_tpu.workdir import Workdir

PLOT_DATA = "plot_data.npz"  # in the workdir's tune/: what tune's plots are drawn from, so report redraws them without a search
PLOT_FILES = ("dice_vs_pixel_threshold.png", "dice_vs_min_area.png", "dice_vs_gate.png", "area_histograms.png")
_PLOT_KEYS = ("dice", "pixel_grid", "area_grid", "gate_grid", "chosen", "gate_head", "truth_area", "raw_area",
              "submitted_area")
PIXEL_GRID = tuple(float(t) for t in np.round(np.arange(0.30, 0.801, 0.05), 2))
# Full-resolution pixels; the Severstal winners used 600/600/900/2000.
AREA_GRID = (0, 100, 200, 300, 400, 600, 800, 1000, 1200, 1500, 2000, 2500, 3000, 4000, 5000, 7500, 10000)
GATE_GRID = tuple(float(t) for t in np.round(np.arange(0.0, 0.951, 0.05), 2))  # 0 passes every image: no gate
_LEVELS = 256
_BATCH = 64  # images per histogram pass: bounds the int32 index array to ~30 MB at oof_scale 4


@dataclass(frozen=True)
class OofStats:
    """Out-of-fold counts of every (image, class), at OOF resolution unless said otherwise."""

    image_ids: np.ndarray  # [N]
    at_least: np.ndarray  # int32 [N, C, 257]: pixels with q >= v (v = 256 holds 0)
    truth_at_least: np.ndarray  # int32 [N, C, 257]: truth pixels with q >= v
    truth_area: np.ndarray  # int64 [N, C], full resolution
    dice_full: np.ndarray | None  # float32 [N, C]: training's full-resolution Dice at its eval threshold (one
    # workdir; an ensemble's averaged maps have none)
    class_probs: np.ndarray | None  # float32 [N, heads] out-of-fold classifier probabilities, or None
    scale: int  # OOF maps are full resolution / scale: one OOF pixel stands for scale**2 pixels
    folds: tuple
    fold_of: np.ndarray  # int [N]: the fold each image was held out in

    def subset(self, rows):
        """These statistics restricted to the images `rows` (a bool [N] or index array)."""
        def take(x):
            return None if x is None else x[rows]

        return OofStats(image_ids=take(self.image_ids), at_least=take(self.at_least),
                        truth_at_least=take(self.truth_at_least), truth_area=take(self.truth_area),
                        dice_full=take(self.dice_full), class_probs=take(self.class_probs), scale=self.scale,
                        folds=tuple(sorted(set(take(self.fold_of).tolist()))), fold_of=take(self.fold_of))

    def counts(self, thresholds):
        """(predicted pixels, intersection with truth) [N, C, K] at pixel thresholds [C, K] (or [K] for all)."""
        above = postprocess.levels(thresholds).astype(np.int64) + 1
        above = np.broadcast_to(above, (NUM_CLASSES,) + above.shape[-1:])[None]
        return (np.take_along_axis(self.at_least, above, axis=2),
                np.take_along_axis(self.truth_at_least, above, axis=2))

    @property
    def truth(self):
        """int32 [N, C] truth pixels at OOF resolution."""
        return self.truth_at_least[:, :, 0]


def _suffix_counts(q, truth):
    """int32 [n, C, 257] counts of q >= v over all pixels and over truth pixels of uint8 maps [n, h, w, C]."""
    n, c = q.shape[0], q.shape[-1]
    flat = q.reshape(n, -1, c).astype(np.int32)
    index = flat + (np.arange(n * c, dtype=np.int32).reshape(n, 1, c) * _LEVELS)
    hist = np.bincount(index.ravel(), minlength=n * c * _LEVELS).reshape(n, c, _LEVELS)
    hit = np.bincount(index[truth.reshape(n, -1, c)], minlength=n * c * _LEVELS).reshape(n, c, _LEVELS)
    out = []
    for h in (hist, hit):
        suffix = np.zeros((n, c, _LEVELS + 1), np.int32)
        suffix[:, :, :_LEVELS] = np.cumsum(h[:, :, ::-1], axis=2)[:, :, ::-1]
        out.append(suffix)
    return out


def _fold_stats(wd, fold):
    oof, path = wd.oof("segment", fold), wd.oof_path("segment", fold)
    q, truth = oof["probs"], oof["truth"]
    if q.dtype != np.uint8 or q.ndim != 4 or q.shape != truth.shape or q.shape[-1] != NUM_CLASSES:
        raise ValueError(f"{path}: expected uint8 probs and bool truth [N, h, w, {NUM_CLASSES}], got "
                         f"{q.dtype} {q.shape} and {truth.shape}")
    parts = [_suffix_counts(q[i:i + _BATCH], truth[i:i + _BATCH]) for i in range(0, len(q), _BATCH)]
    return oof, [np.concatenate(p) for p in zip(*parts)], HEIGHT // q.shape[1]


def _class_probs(wd, image_ids):
    """Out-of-fold gating probabilities (the classify task chose which head they come from) for `image_ids`,
    or None (with the reason) when not all have one."""
    by_id = {}
    for fold in wd.completed_folds("classify"):
        oof = wd.oof("classify", fold)
        by_id.update(zip(oof["image_ids"].tolist(), np.asarray(oof["probs"], np.float32)))
    if not by_id:
        return None, "no completed classifier folds"
    missing = [i for i in image_ids.tolist() if i not in by_id]
    if missing:
        return None, f"{len(missing)} segmenter OOF images have no classifier OOF probability (e.g. {missing[0]})"
    return np.stack([by_id[i] for i in image_ids.tolist()]), None


def _check_disjoint(wd, folds, ids):
    """Each image once in the OOF data: a repeat names the image and both files (or the one file, twice)."""
    seen = {}
    for fold, fold_ids in zip(folds, ids):
        for image_id in fold_ids.tolist():
            if image_id in seen:
                first, second = wd.oof_path("segment", seen[image_id]), wd.oof_path("segment", fold)
                where = f"twice in {first}" if first == second else f"in both {first} and {second}"
                raise ValueError(f"image {image_id} is {where}: out-of-fold data must hold each image once (were "
                                 "the folds trained from different shard folders?)")
            seen[image_id] = fold


def collect(work):
    """OofStats of every completed segment fold of `work`, joined with the classifier's OOF on image ids; with
    several workdirs, of their averaged OOF data on the folds complete in every one (members.AveragedOof)."""
    wd, label = members.open_oof(work), ", ".join(members.paths(work))
    folds = wd.completed_folds("segment")
    if not folds:
        every = " in every workdir" if isinstance(wd, members.AveragedOof) else ""
        raise FileNotFoundError(f"{label}: no completed segment folds (segment/fold*/done.json){every}; train first")
    if isinstance(wd, members.AveragedOof):
        print(f"tune: {wd.describe()}")
    ids, at_least, truth_at_least, area, dice, scales = [], [], [], [], [], set()
    for fold in folds:
        oof, (a, t), scale = _fold_stats(wd, fold)
        ids.append(oof["image_ids"]), at_least.append(a), truth_at_least.append(t)
        area.append(oof["truth_area"]), dice.append(oof.get("dice")), scales.add(scale)
    if len(scales) != 1:
        raise ValueError(f"{label}: segment folds {folds} store OOF maps at different scales {sorted(scales)}")
    image_ids = np.concatenate(ids)
    _check_disjoint(wd, folds, ids)
    class_probs, why = _class_probs(wd, image_ids)
    if why:
        print(f"tune: no classifier gate ({why})")
    return OofStats(image_ids=image_ids, at_least=np.concatenate(at_least),
                    truth_at_least=np.concatenate(truth_at_least), truth_area=np.concatenate(area),
                    dice_full=None if dice[0] is None else np.concatenate(dice), class_probs=class_probs,
                    scale=scales.pop(), folds=tuple(folds), fold_of=np.repeat(folds, [len(i) for i in ids]))


def _dice(inter, pred, truth):
    total = pred + truth
    return np.divide(2.0 * inter, total, out=np.ones(total.shape), where=total > 0)


def dice_of(stats, pp):
    """float64 [N, C] OOF Dice of the post-processing `pp` (areas at full resolution = OOF pixels * scale**2):
    presence counted at its image_levels, masks drawn at its mask_levels (the same level under one threshold)."""
    n = len(stats.image_ids)
    presence, _ = tune_soft.counts_at(stats, pp.image_levels(stats.class_probs, n=n))
    pred, inter = tune_soft.counts_at(stats, pp.mask_levels(stats.class_probs, n=n))
    kept = pp.keep(presence * stats.scale ** 2, stats.class_probs)
    return _dice(inter * kept, pred * kept, stats.truth)


def estimate(workdir, stats, pp):
    """float64 [N, C] tune's OOF-resolution Dice of `pp` per image, as tune scored its choice: histograms, or
    the component stage's labelling when `pp` filters components."""
    if not pp.filters_components:
        return dice_of(stats, pp)
    from steel_tpu import tune_components  # scipy only for component filtering

    return tune_components.dice_of(workdir, stats, pp)


def _gate_passes(stats, gate_grid):
    """bool [C, N, G] (one gate for all classes) and the head kind, from the classifier's OOF probabilities."""
    n = len(stats.image_ids)
    if stats.class_probs is None:
        return np.ones((NUM_CLASSES, n, 1), bool), None, (0.0,)
    probs = stats.class_probs
    kind = "binary" if probs.shape[1] == 1 else "multilabel"
    columns = [probs[:, 0]] * NUM_CLASSES if kind == "binary" else [probs[:, c] for c in range(NUM_CLASSES)]
    passes = np.stack([postprocess.gate_kept(p[:, None], np.asarray(gate_grid)[None]) for p in columns])
    return passes, kind, tuple(gate_grid)


def search_tables(stats, *, pixel_grid=PIXEL_GRID, area_grid=AREA_GRID, gate_grid=GATE_GRID):
    """Summed OOF Dice of class c for every (gate g, pixel threshold k, min area a): float64 [C, G, K, A]."""
    pred, inter = stats.counts(np.asarray(pixel_grid))
    truth = stats.truth
    passes, kind, gates = _gate_passes(stats, gate_grid)
    empties, tables = tune_gain.empty_dice(stats), []
    for c in range(NUM_CLASSES):
        empty = empties[:, c]
        gain = _dice(inter[:, c], pred[:, c], truth[:, c, None]) - empty[:, None]  # [N, K]
        kept = postprocess.area_kept(pred[:, c, :, None] * stats.scale ** 2, np.asarray(area_grid)[None, None])
        x = (kept * gain[:, :, None]).reshape(len(gain), -1)
        table = empty.sum() + passes[c].T.astype(np.float64) @ x
        tables.append(table.reshape(len(gates), len(pixel_grid), len(area_grid)))
    return np.stack(tables), kind, gates


def _best(table, *, prefer):
    """Index of the maximum of `table`; exact ties go to the smallest `prefer` (a same-shape cost)."""
    ties = np.flatnonzero(table.ravel() >= table.max() - 1e-9)
    return np.unravel_index(ties[np.argmin(prefer.ravel()[ties])], table.shape)


def choose(stats, tables, *, kind, gates, pixel_grid=PIXEL_GRID, area_grid=AREA_GRID):
    """The PostProcess maximising the summed Dice of `tables`; one gate for all classes on a binary head."""
    g, k, a = np.meshgrid(np.arange(len(gates)), np.abs(np.asarray(pixel_grid) - 0.5), np.arange(len(area_grid)),
                          indexing="ij")
    # Ties prefer no gate, then a small area, then a pixel threshold near 0.5.
    prefer = g * 1e6 + a * 1e3 + k
    if kind == "binary":
        totals = tables.max(axis=(2, 3)).sum(axis=0)
        gate_index = _best(totals, prefer=np.arange(len(gates)))[0]
        picks = [(gate_index, *_best(t[gate_index], prefer=prefer[gate_index])) for t in tables]
    else:
        picks = [_best(t, prefer=prefer) for t in tables]
    gate = () if kind is None else tuple(gates[p[0]] for p in picks)
    gate = gate[:1] if kind == "binary" else gate
    return postprocess.PostProcess(
        pixel_threshold=[pixel_grid[p[1]] for p in picks], min_area=[area_grid[p[2]] for p in picks],
        gate=() if not any(gate) else gate)  # a gate of 0 passes everything: predict then skips the classifiers


def first_stage(stats, *, pixel_grid=PIXEL_GRID, area_grid=AREA_GRID, gate_grid=GATE_GRID, extend=True):
    """(the PostProcess of pixel threshold, min area and gate maximising the OOF Dice of `stats`, its tables, the
    gate head kind, the gates, the pixel grid searched): with `extend`, a threshold chosen on the grid's edge is
    searched again on the grid extended past it."""
    tables, kind, gates = search_tables(stats, pixel_grid=pixel_grid, area_grid=area_grid, gate_grid=gate_grid)
    chosen = choose(stats, tables, kind=kind, gates=gates, pixel_grid=pixel_grid, area_grid=area_grid)
    wider = tune_checks.extend_pixel_grid(pixel_grid, chosen.pixel_threshold)
    if extend and wider != tuple(pixel_grid):  # the optimum may lie past the edge: the histograms make it cheap
        return first_stage(stats, pixel_grid=wider, area_grid=area_grid, gate_grid=gate_grid, extend=False)
    return chosen, tables, kind, gates, tuple(pixel_grid)


def _hit_rate(stats, dice):
    """Per class: the share of images with that defect whose submitted mask overlaps it (Dice > 0); None when no
    image has the class."""
    has = stats.truth_area > 0
    return [float((dice[has[:, c], c] > 0).mean()) if has[:, c].any() else None for c in range(NUM_CLASSES)]


def _summary(dice):
    return {"mean": float(dice.mean()), "per_class": [float(d) for d in dice.mean(axis=0)]}


def plot_data(stats, tables, chosen, *, kind, gates, pixel_grid=PIXEL_GRID, area_grid=AREA_GRID, marked=None):
    """The arrays tune's plots are drawn from (a few MB at most): mean Dice tables, grids, choices, mask areas.
    The plots circle `marked` (default `chosen`): for a class tune_gain switched off, its best setting."""
    marked = marked or chosen
    gate = marked.gate * NUM_CLASSES if len(marked.gate) == 1 else marked.gate or (0.0,) * NUM_CLASSES
    chosen_index = [[list(gates).index(g) for g in gate], [list(pixel_grid).index(t) for t in marked.pixel_threshold],
                    [list(area_grid).index(a) for a in marked.min_area]]
    n = len(stats.image_ids)
    presence, _ = tune_soft.counts_at(stats, chosen.image_levels(stats.class_probs, n=n))
    drawn, _ = tune_soft.counts_at(stats, chosen.mask_levels(stats.class_probs, n=n))
    raw = presence * stats.scale ** 2  # full-resolution areas min area reads, before min area and gate
    return {"dice": tables / len(stats.image_ids), "pixel_grid": np.asarray(pixel_grid, np.float64),
            "area_grid": np.asarray(area_grid, np.int64), "gate_grid": np.asarray(gates, np.float64),
            "chosen": np.asarray(chosen_index, np.int64), "off": np.asarray(chosen.off),
            "gate_head": np.asarray(kind or "none"), "truth_area": stats.truth_area, "raw_area": raw,
            "submitted_area": drawn * stats.scale ** 2 * chosen.keep(raw, stats.class_probs)}


def save_plot_data(folder, data):
    """Write plot_data's arrays to `folder`/PLOT_DATA (compressed npz, atomic; local or gs://)."""
    buf = io.BytesIO()
    np.savez_compressed(buf, **data)
    storage.write_bytes(storage.join(folder, PLOT_DATA), buf.getvalue())


def load_plot_data(folder):
    """plot_data's arrays saved under `folder`, or None when tune (or a version before it wrote them) left none."""
    path = storage.join(folder, PLOT_DATA)
    if not storage.exists(path):
        return None
    try:
        with np.load(io.BytesIO(storage.read_bytes(path))) as npz:
            data = {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: not tune's plot data ({error}); run `steel-tpu tune` again") from None
    missing = [k for k in _PLOT_KEYS if k not in data]
    if missing:
        raise ValueError(f"{path}: not tune's plot data (missing {missing}); run `steel-tpu tune` again")
    return data


def _double_stage(stats, chosen, *, pixel_grid, area_grid):
    """(`chosen` with the double-threshold stage's choice, the lower grid searched): the pixel grid, extended
    downward while a chosen lower threshold sits on its bottom edge."""
    lower_grid = tuple(pixel_grid)
    while True:
        pp, _ = tune_double.refine(stats, chosen, pixel_grid=pixel_grid, lower_grid=lower_grid, area_grid=area_grid)
        doubled = [low for low, up in zip(pp.lower, pp.pixel_threshold) if low < up]
        wider = tune_checks.extend_pixel_grid(lower_grid, doubled) if doubled else lower_grid
        if wider[0] == lower_grid[0]:
            return pp, lower_grid
        lower_grid = wider[:wider.index(lower_grid[-1]) + 1]  # downward only: a lower threshold is below an upper


def tune(*, workdir, out=None, pixel_grid=PIXEL_GRID, area_grid=AREA_GRID, gate_grid=GATE_GRID, plots=True,
         component_grid=(0,), soft_grid=(0.0,), double=False, min_gain=tune_gain.MIN_GAIN):
    """Write `thresholds.json` and tune/'s plot data (and PNGs with `plots`) into the workdir `out` (default:
    `workdir`); returns the content of thresholds.json. `workdir` may be several workdirs (a list): their
    ensemble is tuned on its averaged OOF data (members.AveragedOof) and `out`, required then and none of them,
    gets thresholds.json recording the members (predict checks it). `component_grid` (full-resolution pixels, e.g.
    tune_components.COMPONENT_GRID) adds a stage choosing a minimum component size per class; `soft_grid` (e.g.
    tune_soft.SOFT_GRID) one choosing a soft gate per class before it; `double` one choosing per class seed 004's
    double threshold (upper, min area, lower) on the pixel grid after them, not combinable with components.
    Last, a class whose tuned setting beats all-empty by less than `min_gain` images' Dice on OOF is switched
    off (tune_gain; 0 keeps every class whose setting does not lose).

    These files, by exact name, are all tune writes or deletes: the previous ones go first, so a run that fails
    leaves no old thresholds.json looking like its result, and thresholds.json is written last.
    """
    if not min_gain >= 0:  # also refuses NaN: a negative gain would keep classes that lose to submitting nothing
        raise ValueError(f"tune: min_gain must be a number of images >= 0, got {min_gain}")
    if double and any(component_grid):
        raise ValueError("tune: --double and --components cannot be combined (component filtering recounts areas "
                         "from the drawn mask; a double threshold counts them above the upper threshold)")
    out = out or system.home(workdir)  # a system's thresholds are its own, beside its members
    several = members.paths(workdir)[1:]
    if several and out is None:
        raise members.MembersError("tune: several --workdir need --out DIR: an ensemble's thresholds never go into "
                                   "one member's workdir")
    if several and members.normalized(out) in map(members.normalized, members.paths(workdir)):
        raise members.MembersError(f"tune: --out {out} is one of the --workdir's: an ensemble's thresholds go to a "
                                   "folder of their own")
    target = Workdir(out or members.paths(workdir)[0])
    outputs.check_folder(target.path, flag="--out" if out else "--workdir")
    for path in [target.thresholds_path()] + [storage.join(target.tune_dir(), n) for n in (PLOT_DATA, *PLOT_FILES)]:
        storage.remove(path)
    stats = collect(workdir)
    chosen, tables, kind, gates, pixel_grid = first_stage(stats, pixel_grid=pixel_grid, area_grid=area_grid,
                                                          gate_grid=gate_grid)
    before = dice_of(stats, postprocess.PostProcess())
    if any(soft_grid) and stats.class_probs is not None:
        chosen, _ = tune_soft.refine(stats, chosen, soft_grid=soft_grid, pixel_grid=pixel_grid, area_grid=area_grid)
    lower_grid = ()
    if double:
        chosen, lower_grid = _double_stage(stats, chosen, pixel_grid=pixel_grid, area_grid=area_grid)
    if any(component_grid):
        from steel_tpu import tune_components  # scipy only for this stage

        chosen, after, _ = tune_components.refine(workdir, stats, chosen, component_grid=component_grid,
                                                  area_grid=area_grid)
    else:
        after = dice_of(stats, chosen)
    tuned = chosen
    chosen, after, gains = tune_gain.switch_off(stats, chosen, after, min_gain=min_gain)
    warnings = tune_checks.edge_warnings(chosen, pixel_grid=pixel_grid, area_grid=area_grid, gate_grid=gates,
                                         component_grid=component_grid, soft_grid=soft_grid, lower_grid=lower_grid)

    def choose_on(subset):
        own = first_stage(subset, pixel_grid=pixel_grid, area_grid=area_grid, gate_grid=gate_grid, extend=False)[0]
        own = _double_stage(subset, own, pixel_grid=pixel_grid, area_grid=area_grid)[0] if double else own
        return tune_gain.switch_off(subset, own, dice_of(subset, own), min_gain=min_gain)[0]

    stability = tune_checks.fold_stability(stats, after, choose_on=choose_on)
    result = {
        **chosen.to_dict(),
        "gate_head": kind,
        "dice_before": _summary(before),
        "dice_after": _summary(after),
        **({} if stats.dice_full is None else {"dice_before_full_resolution": _summary(stats.dice_full)}),
        # What a class is worth when never predicted, and how often its defects are found at all: a Dice near the
        # all-empty one with a hit rate near 0 is a class not learned, however high the Dice.
        "dice_all_empty": _summary((stats.truth_area == 0).astype(np.float64)),
        "defect_hit_rate": _hit_rate(stats, after),
        # Summed OOF Dice over all-empty, in images, of each class's tuned setting; under min_gain it is off.
        "gain_over_empty": gains,
        "min_gain": float(min_gain),
        "switched_off": list(chosen.off),
        "n_images": int(len(stats.image_ids)),
        "folds": list(stats.folds),
        "oof_scale": stats.scale,
        "grid": {"pixel_threshold": list(pixel_grid), "min_area": list(area_grid), "gate": list(gates),
                 "min_component": list(component_grid), "soft_gate": list(soft_grid),
                 "mask_threshold": list(lower_grid)},
        "warnings": warnings,
        "fold_stability": stability,
    }
    if several:  # what predict checks its members against: the fold models whose OOF data was averaged
        classify = members.open_oof(workdir).completed_folds("classify") if stats.class_probs is not None else []
        result["members"] = members.record(workdir, folds={"segment": list(stats.folds), "classify": classify})
    data = plot_data(stats, tables, chosen, kind=kind, gates=gates, pixel_grid=pixel_grid, area_grid=area_grid,
                     marked=tuned)
    save_plot_data(target.tune_dir(), data)
    if plots:
        from steel_tpu import tune_plots  # matplotlib only when plotting

        tune_plots.write_all(target.tune_dir(), data)
    target.save_thresholds(result)
    print(f"tune: OOF dice {result['dice_before']['mean']:.4f} -> {result['dice_after']['mean']:.4f} on "
          f"{result['n_images']} images (folds {list(stats.folds)}); pixel {list(chosen.pixel_threshold)}, "
          f"min area {list(chosen.min_area)}, min component {list(chosen.min_component)}, "
          f"gate {list(chosen.gate) or 'none'}, soft gate {list(chosen.soft_gate) or 'none'}, "
          f"mask threshold {list(chosen.mask_threshold) or 'single'} -> {target.thresholds_path()}")
    for c in np.flatnonzero(chosen.off):
        print(f"tune: class {c + 1} switched off (never submitted): its tuned setting gains {gains[c]:.2f} image(s) "
              f"of Dice over all-empty on the OOF images, under min_gain {min_gain:g}")
    for line in tune_checks.describe(stability):
        print(f"tune: {line}")
    for line in warnings:
        print(f"tune: WARNING {line}")
    return result
