"""Tune's first stage: per class the pixel threshold, minimum mask area and classifier gate maximising out-of-fold
Dice, searched as a few tensor products over oof_stats' histograms."""

import numpy as np

from steel_tpu import postprocess
from steel_tpu.constants import NUM_CLASSES
from steel_tpu.tuning import checks, oof_stats

PIXEL_GRID = tuple(float(t) for t in np.round(np.arange(0.30, 0.801, 0.05), 2))
# Full-resolution pixels; the Severstal winners used 600/600/900/2000.
AREA_GRID = (0, 100, 200, 300, 400, 600, 800, 1000, 1200, 1500, 2000, 2500, 3000, 4000, 5000, 7500, 10000)
GATE_GRID = tuple(float(t) for t in np.round(np.arange(0.0, 0.951, 0.05), 2))  # 0 passes every image: no gate


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
    empties, tables = oof_stats.empty_dice(stats), []
    for c in range(NUM_CLASSES):
        empty = empties[:, c]
        gain = oof_stats.dice(inter[:, c], pred[:, c], truth[:, c, None]) - empty[:, None]  # [N, K]
        kept = postprocess.area_kept(pred[:, c, :, None] * stats.scale ** 2, np.asarray(area_grid)[None, None])
        x = (kept * gain[:, :, None]).reshape(len(gain), -1)
        table = empty.sum() + passes[c].T.astype(np.float64) @ x
        tables.append(table.reshape(len(gates), len(pixel_grid), len(area_grid)))
    return np.stack(tables), kind, gates


def best(table, *, prefer, tolerance=1e-9):
    """Index of the maximum of `table`; values within `tolerance` of it are ties, which go to the smallest `prefer`
    (a same-shape cost: every stage prefers its simplest setting, e.g. no gate, then a small area)."""
    ties = np.flatnonzero(table.ravel() >= table.max() - tolerance)
    return np.unravel_index(ties[np.argmin(np.asarray(prefer).ravel()[ties])], table.shape)


def choose(stats, tables, *, kind, gates, pixel_grid=PIXEL_GRID, area_grid=AREA_GRID):
    """The PostProcess maximising the summed Dice of `tables`; one gate for all classes on a binary head."""
    g, k, a = np.meshgrid(np.arange(len(gates)), np.abs(np.asarray(pixel_grid) - 0.5), np.arange(len(area_grid)),
                          indexing="ij")
    # Ties prefer no gate, then a small area, then a pixel threshold near 0.5.
    prefer = g * 1e6 + a * 1e3 + k
    if kind == "binary":
        totals = tables.max(axis=(2, 3)).sum(axis=0)
        gate_index = best(totals, prefer=np.arange(len(gates)))[0]
        picks = [(gate_index, *best(t[gate_index], prefer=prefer[gate_index])) for t in tables]
    else:
        picks = [best(t, prefer=prefer) for t in tables]
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
    wider = checks.extend_pixel_grid(pixel_grid, chosen.pixel_threshold)
    if extend and wider != tuple(pixel_grid):  # the optimum may lie past the edge: the histograms make it cheap
        return first_stage(stats, pixel_grid=wider, area_grid=area_grid, gate_grid=gate_grid, extend=False)
    return chosen, tables, kind, gates, tuple(pixel_grid)
