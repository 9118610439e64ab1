"""Tune's double-threshold stage (seed 004): per class an upper threshold with the min area decides presence, a
lower one (<= upper) draws the mask; a lower equal to the upper is the single threshold, kept unless beaten."""

import dataclasses

import numpy as np

from steel_tpu import postprocess
from steel_tpu.constants import NUM_CLASSES
from steel_tpu.tuning.oof_stats import counts_at, dice, gate_passes
from steel_tpu.tuning.search import best


def _grid_counts(stats, chosen, grid):
    """(predicted pixels, intersection) int [N, C, K] above every threshold of `grid`, each image's levels by
    `chosen`'s rule (its soft gate included): what predict counts or draws at that threshold."""
    n = len(stats.image_ids)
    lv = np.stack([dataclasses.replace(chosen, pixel_threshold=[t] * NUM_CLASSES, mask_threshold=())
                   .image_levels(stats.class_probs, n=n) for t in grid], axis=-1)
    return counts_at(stats, lv)


def tables(stats, chosen, *, upper_grid, lower_grid, area_grid):
    """Mean OOF Dice float64 [C, U, L, A] of every (upper u, lower l, min area a) at `chosen`'s gate and soft
    gate; -inf where the lower threshold is above the upper one."""
    n, truth, area = len(stats.image_ids), stats.truth, np.asarray(area_grid)
    passes = gate_passes(stats, chosen)
    presence, _ = _grid_counts(stats, chosen, upper_grid)
    pred, inter = _grid_counts(stats, chosen, lower_grid)
    invalid = np.asarray(lower_grid)[None, :] > np.asarray(upper_grid)[:, None]  # [U, L]
    out = []
    for c in range(NUM_CLASSES):
        empty = (truth[:, c] == 0).astype(np.float64)  # Dice of a submitted empty mask
        gain = dice(inter[:, c], pred[:, c], truth[:, c, None]) - empty[:, None]  # [N, L]
        kept = postprocess.area_kept(presence[:, c, :, None] * stats.scale ** 2, area[None, None])  # [N, U, A]
        kept &= passes[:, c, None, None]
        table = (empty.sum() + np.einsum("nua,nl->ula", kept.astype(np.float64), gain)) / n  # [U, L, A]
        table[invalid] = -np.inf
        out.append(table)
    return np.stack(out)


def refine(stats, chosen, *, pixel_grid, lower_grid, area_grid):
    """(`chosen` with pixel_threshold (upper), mask_threshold (lower) and min_area re-chosen per class, float64
    [C, U, L, A] tables). A class keeps `chosen`'s single threshold and area unless a lower threshold scores
    strictly better: lower == upper is in the table and is the first stage's search at this gate."""
    table = tables(stats, chosen, upper_grid=pixel_grid, lower_grid=lower_grid, area_grid=area_grid)
    up, low = np.asarray(pixel_grid), np.asarray(lower_grid)
    diagonal = (low[None, :] == up[:, None])[:, :, None]  # [U, L, 1]
    # Ties: a small area, then an upper threshold near 0.5, then a lower one close to it.
    prefer = (np.arange(len(area_grid))[None, None, :] * 1e6 + np.abs(up - 0.5)[:, None, None] * 1e3
              + (up[:, None] - low[None, :])[:, :, None])
    uppers, lowers, areas = list(chosen.pixel_threshold), list(chosen.lower), list(chosen.min_area)
    for c, t in enumerate(table):
        single = np.where(diagonal, t, -np.inf).max()
        if t.max() <= single + 1e-12:
            continue  # the double threshold is not better here: the single threshold stays
        i, j, k = best(t, prefer=prefer, tolerance=1e-12)
        uppers[c], lowers[c], areas[c] = float(up[i]), float(low[j]), int(area_grid[k])
    pp = dataclasses.replace(chosen, pixel_threshold=uppers, mask_threshold=lowers, min_area=areas)
    return pp, table
