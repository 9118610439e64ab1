"""Tune's second stage: a minimum connected-component size per class, searched with the minimum area at the pixel
thresholds and gate the first stage chose.

Components cannot be read off tune's histograms, so this stage labels the OOF maps once per class at the chosen
threshold. The OOF maps are full resolution / oof_scale: a full-resolution size s is judged as ceil(s / scale**2)
OOF pixels, and components touching only diagonally or through thin necks at full resolution may join or split
when block-averaged, so the chosen sizes are approximate at full resolution.
"""

import dataclasses

import numpy as np

from steel_tpu import components, postprocess
from steel_tpu.constants import NUM_CLASSES
from steel_tpu.scoring import members
from steel_tpu.tuning.oof_stats import dice, gate_passes
from steel_tpu.tuning.oof_stats import dice_of as oof_dice_of
from steel_tpu.tuning.search import best

# Full-resolution pixels; the 1st Severstal place dropped components under 150 px.
COMPONENT_GRID = (0, 50, 100, 150, 200, 300, 500, 800, 1200, 2000)


def counts(paths, stats, pp, size_grid):
    """(predicted pixels, intersection) int64 [N, C, S] at OOF resolution, rows in `stats.image_ids` order, of the
    OOF maps of the member workdirs `paths` (several averaged, as oof_stats.collect reads them), after thresholding
    as `pp` does (soft gate included) and dropping components under each size of `size_grid`."""
    wd, sizes = members.open_oof(paths), components.scaled(size_grid, scale=stats.scale)
    levels = pp.image_levels(stats.class_probs, n=len(stats.image_ids))
    preds, inters = [], []
    for fold in stats.folds:
        oof, lv = wd.oof("segment", fold), levels[stats.fold_of == fold][:, None, None, :]
        per_class = [components.counts_by_size(oof["probs"][..., c] > lv[..., c], oof["truth"][..., c], sizes)
                     for c in range(NUM_CLASSES)]
        preds.append(np.stack([p for p, _ in per_class], axis=1))
        inters.append(np.stack([i for _, i in per_class], axis=1))
    return np.concatenate(preds), np.concatenate(inters)


def refine(paths, stats, chosen, *, component_grid=COMPONENT_GRID, area_grid):
    """(PostProcess with min_component and min_area re-chosen per class, float64 [N, C] its OOF Dice, float64
    [C, S, A] mean Dice tables). Size 0 with the first stage's area is in the grid: never worse on OOF data."""
    pred, inter = counts(paths, stats, chosen, component_grid)
    truth, passes = stats.truth, gate_passes(stats, chosen)
    area = np.asarray(area_grid)
    tables, picks = [], []
    for c in range(NUM_CLASSES):
        empty = (truth[:, c] == 0).astype(np.float64)
        per_image = dice(inter[:, c], pred[:, c], truth[:, c, None])  # [N, S]
        kept = postprocess.area_kept(pred[:, c, :, None] * stats.scale ** 2, area[None, None])  # [N, S, A]
        kept &= passes[:, c, None, None]
        table = np.where(kept, per_image[:, :, None], empty[:, None, None]).mean(axis=0)
        # Ties prefer no component filtering, then a small area: the simplest setting that scores as well.
        picks.append(best(table, prefer=np.arange(table.size).reshape(table.shape), tolerance=1e-12))
        tables.append(table)
    pp = dataclasses.replace(chosen, min_component=[component_grid[s] for s, _ in picks],
                             min_area=[area_grid[a] for _, a in picks])
    return pp, _dice_at(stats, pp, pred, inter, at=np.array([s for s, _ in picks])), np.stack(tables)


def _dice_at(stats, pp, pred, inter, *, at):
    """float64 [N, C] OOF Dice of `pp`, class c read at size index at[c] of counts()' [N, C, S] arrays."""
    pred_at, inter_at = (np.take_along_axis(x, at[None, :, None], axis=2)[:, :, 0] for x in (pred, inter))
    kept = pp.keep(pred_at * stats.scale ** 2, stats.class_probs)
    return dice(inter_at * kept, pred_at * kept, stats.truth)


def estimate(paths, stats, pp):
    """float64 [N, C] tune's OOF-resolution Dice of `pp` per image, as tune scored its choice: histograms, or this
    stage's labelling when `pp` filters components (scipy only then)."""
    return dice_of(paths, stats, pp) if pp.filters_components else oof_dice_of(stats, pp)


def dice_of(paths, stats, pp):
    """float64 [N, C] OOF Dice of `pp` (its min_component included), counted as this stage counts it."""
    sizes = sorted(set(pp.min_component))
    pred, inter = counts(paths, stats, pp, sizes)
    return _dice_at(stats, pp, pred, inter, at=np.array([sizes.index(s) for s in pp.min_component]))
