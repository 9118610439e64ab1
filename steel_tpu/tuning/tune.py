"""`steel-tpu tune`: choose per-class pixel thresholds, minimum areas and the classifier gate on out-of-fold data,
with the optional stages (soft gate, double threshold, components), the class switch-off and the trust checks."""

import numpy as np

from steel_tpu import postprocess, storage
from steel_tpu.constants import NUM_CLASSES
from steel_tpu.formats import outputs
from steel_tpu.formats import thresholds as thresholds_format
from steel_tpu.formats.workdir import Workdir
from steel_tpu.scoring import members
from steel_tpu.scoring.source import ModelSource
from steel_tpu.tuning import checks, gain, oof_stats, plot_data, search, soft
from steel_tpu.tuning import double as double_threshold
from steel_tpu.tuning.search import AREA_GRID, GATE_GRID, PIXEL_GRID


def _hit_rate(stats, dice):
    """Per class: the share of images with that defect whose submitted mask overlaps it (Dice > 0); None when no
    image has the class."""
    has = stats.truth_area > 0
    return [float((dice[has[:, c], c] > 0).mean()) if has[:, c].any() else None for c in range(NUM_CLASSES)]


def _summary(dice):
    return {"mean": float(dice.mean()), "per_class": [float(d) for d in dice.mean(axis=0)]}


def _double_stage(stats, chosen, *, pixel_grid, area_grid):
    """(`chosen` with the double-threshold stage's choice, the lower grid searched): the pixel grid, extended
    downward while a chosen lower threshold sits on its bottom edge."""
    lower_grid = tuple(pixel_grid)
    while True:
        pp, _ = double_threshold.refine(stats, chosen, pixel_grid=pixel_grid, lower_grid=lower_grid, area_grid=area_grid)
        doubled = [low for low, up in zip(pp.lower, pp.pixel_threshold) if low < up]
        wider = checks.extend_pixel_grid(lower_grid, doubled) if doubled else lower_grid
        if wider[0] == lower_grid[0]:
            return pp, lower_grid
        lower_grid = wider[:wider.index(lower_grid[-1]) + 1]  # downward only: a lower threshold is below an upper


def tune(*, workdir, out=None, pixel_grid=PIXEL_GRID, area_grid=AREA_GRID, gate_grid=GATE_GRID, plots=True,
         component_grid=(0,), soft_grid=(0.0,), double=False, min_gain=gain.MIN_GAIN):
    """Write `thresholds.json` and tune/'s plot data (and PNGs with `plots`) into `out` (default: the source's own
    folder: one workdir's, a system's); returns the document written (Thresholds.to_doc). `workdir`: a
    scoring.source.ModelSource or what resolves into one; several workdirs are tuned on their averaged OOF data
    (members.AveragedOof) and `out`, required then and none of them, gets thresholds.json recording the members
    (predict checks it). `component_grid` (full-resolution pixels, e.g. components.COMPONENT_GRID) adds a stage
    choosing a minimum component size per class; `soft_grid` (e.g. soft.SOFT_GRID) one choosing a soft gate per
    class before it; `double` one choosing per class seed 004's double threshold (upper, min area, lower) on the
    pixel grid after them, not combinable with components. Last, a class whose tuned setting beats all-empty by
    less than `min_gain` images' Dice on OOF is switched off (gain; 0 keeps every class whose setting does not
    lose).

    These files, by exact name, are all tune writes or deletes: the previous ones go first, so a run that fails
    leaves no old thresholds.json looking like its result, and thresholds.json is written last.
    """
    if not min_gain >= 0:  # also refuses NaN: a negative gain would keep classes that lose to submitting nothing
        raise ValueError(f"tune: min_gain must be a number of images >= 0, got {min_gain}")
    if double and any(component_grid):
        raise ValueError("tune: --double and --components cannot be combined (component filtering recounts areas "
                         "from the drawn mask; a double threshold counts them above the upper threshold)")
    source = ModelSource.resolve(workdir)
    paths = tuple(wd.path for wd in source.workdirs(command="tune"))
    several = len(paths) > 1
    out = out or source.own_folder()
    if out is None:
        raise members.MembersError("tune: several --workdir need --out DIR: an ensemble's thresholds never go into "
                                   "one member's workdir")
    if several and members.normalized(out) in map(members.normalized, paths):
        raise members.MembersError(f"tune: --out {out} is one of the --workdir's: an ensemble's thresholds go to a "
                                   "folder of their own")
    target = Workdir(out)
    outputs.check_folder(target.path, flag="--workdir" if out == source.own_folder() else "--out")
    for path in [target.thresholds_path()] + [storage.join(target.tune_dir(), n)
                                              for n in (plot_data.PLOT_DATA, *plot_data.PLOT_FILES)]:
        storage.remove(path)
    stats = oof_stats.collect(paths)
    chosen, tables, kind, gates, pixel_grid = search.first_stage(stats, pixel_grid=pixel_grid, area_grid=area_grid,
                                                                 gate_grid=gate_grid)
    before = oof_stats.dice_of(stats, postprocess.PostProcess())
    if any(soft_grid) and stats.class_probs is not None:
        chosen, _ = soft.refine(stats, chosen, soft_grid=soft_grid, pixel_grid=pixel_grid, area_grid=area_grid)
    lower_grid = ()
    if double:
        chosen, lower_grid = _double_stage(stats, chosen, pixel_grid=pixel_grid, area_grid=area_grid)
    if any(component_grid):
        from steel_tpu.tuning import components  # scipy only for this stage

        chosen, after, _ = components.refine(paths, stats, chosen, component_grid=component_grid,
                                             area_grid=area_grid)
    else:
        after = oof_stats.dice_of(stats, chosen)
    tuned = chosen
    chosen, after, gains = gain.switch_off(stats, chosen, after, min_gain=min_gain)
    warnings = checks.edge_warnings(chosen, pixel_grid=pixel_grid, area_grid=area_grid, gate_grid=gates,
                                         component_grid=component_grid, soft_grid=soft_grid, lower_grid=lower_grid)

    def choose_on(subset):
        own = search.first_stage(subset, pixel_grid=pixel_grid, area_grid=area_grid, gate_grid=gate_grid,
                                 extend=False)[0]
        own = _double_stage(subset, own, pixel_grid=pixel_grid, area_grid=area_grid)[0] if double else own
        return gain.switch_off(subset, own, oof_stats.dice_of(subset, own), min_gain=min_gain)[0]

    stability = checks.fold_stability(stats, after, choose_on=choose_on)
    record = {
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
        classify = members.open_oof(paths).completed_folds("classify") if stats.class_probs is not None else []
        record["members"] = members.record(paths, folds={"segment": list(stats.folds), "classify": classify})
    data = plot_data.arrays(stats, tables, chosen, kind=kind, gates=gates, pixel_grid=pixel_grid,
                            area_grid=area_grid, marked=tuned)
    plot_data.save(target.tune_dir(), data)
    if plots:
        from steel_tpu.tuning import plots as tune_plots  # matplotlib only when plotting

        tune_plots.write_all(target.tune_dir(), data)
    result = thresholds_format.Thresholds(postprocess=chosen, record=record, path=target.thresholds_path())
    thresholds_format.write(target.thresholds_path(), result)
    print(f"tune: OOF dice {record['dice_before']['mean']:.4f} -> {record['dice_after']['mean']:.4f} on "
          f"{record['n_images']} images (folds {list(stats.folds)}); pixel {list(chosen.pixel_threshold)}, "
          f"min area {list(chosen.min_area)}, min component {list(chosen.min_component)}, "
          f"gate {list(chosen.gate) or 'none'}, soft gate {list(chosen.soft_gate) or 'none'}, "
          f"mask threshold {list(chosen.mask_threshold) or 'single'} -> {target.thresholds_path()}")
    for c in np.flatnonzero(chosen.off):
        print(f"tune: class {c + 1} switched off (never submitted): its tuned setting gains {gains[c]:.2f} image(s) "
              f"of Dice over all-empty on the OOF images, under min_gain {min_gain:g}")
    for line in checks.describe(stability):
        print(f"tune: {line}")
    for line in warnings:
        print(f"tune: WARNING {line}")
    return result.to_doc()
