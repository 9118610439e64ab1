"""Tune's soft-gating stage: per class, k (threshold t + (1 - p) * k per image) searched with t and the min area."""

import dataclasses

import numpy as np

from steel_tpu import postprocess
from steel_tpu.constants import NUM_CLASSES
from steel_tpu.tuning.oof_stats import counts_at, dice, gate_passes
from steel_tpu.tuning.search import best

SOFT_GRID = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5)  # 0: off, so this stage is never worse on OOF data


def tables(stats, chosen, *, soft_grid=SOFT_GRID, pixel_grid, area_grid):
    """Mean OOF Dice float64 [C, S, K, A] of every (soft k, pixel threshold, min area), at `chosen`'s hard gate."""
    probs = np.broadcast_to(stats.class_probs, (len(stats.image_ids), NUM_CLASSES)).astype(np.float32)
    passes, truth, area = gate_passes(stats, chosen), stats.truth, np.asarray(area_grid)
    out = []
    for c in range(NUM_CLASSES):
        # [N, S, K] per-image levels of class c, by postprocess' own rule (what predict computes on the device).
        lv = np.stack([postprocess.soft_levels(np.asarray(pixel_grid)[None, :], [k], probs[:, c, None])
                       for k in soft_grid], axis=1)
        full = np.zeros(lv.shape[:1] + (NUM_CLASSES,) + lv.shape[1:], np.uint8)
        full[:, c] = lv
        pred, inter = (x[:, c] for x in counts_at(stats, full))
        empty = (truth[:, c] == 0).astype(np.float64)
        per_image = dice(inter, pred, truth[:, c, None, None])  # [N, S, K]
        kept = postprocess.area_kept(pred[..., None] * stats.scale ** 2, area) & passes[:, c, None, None, None]
        out.append(np.where(kept, per_image[..., None], empty[:, None, None, None]).mean(axis=0))
    return np.stack(out)


def refine(stats, chosen, *, soft_grid=SOFT_GRID, pixel_grid, area_grid):
    """(`chosen` with soft_gate, pixel_threshold and min_area re-chosen per class, float64 [C, S, K, A] tables).
    k = 0 with the first stage's threshold and area is in the grid, so OOF Dice never drops."""
    table = tables(stats, chosen, soft_grid=soft_grid, pixel_grid=pixel_grid, area_grid=area_grid)
    s, k, a = np.meshgrid(np.arange(len(soft_grid)), np.abs(np.asarray(pixel_grid) - 0.5), np.arange(len(area_grid)),
                          indexing="ij")
    prefer = s * 1e6 + a * 1e3 + k  # ties: no soft gate, then a small area, then a threshold near 0.5
    picks = [best(t, prefer=prefer, tolerance=1e-12) for t in table]
    pp = dataclasses.replace(chosen, soft_gate=[soft_grid[p[0]] for p in picks],
                             pixel_threshold=[pixel_grid[p[1]] for p in picks],
                             min_area=[area_grid[p[2]] for p in picks])
    return pp, table
