"""Whether tune's choice can be trusted: values at the edge of their grid, and how the choice and its Dice move per fold."""

import numpy as np

from steel_tpu import postprocess
from steel_tpu.constants import NUM_CLASSES

_STEP, _LOW, _HIGH = 0.05, 0.05, 0.95  # how far extend_pixel_grid may go


def extend_pixel_grid(grid, chosen):
    """`grid` extended in 0.05 steps toward 0.05 / 0.95 on each side where a chosen threshold sits on its edge
    (the histograms make more thresholds nearly free); `grid` itself when none does."""
    grid = sorted(grid)
    low = [round(t, 2) for t in np.arange(_LOW, grid[0] - 1e-9, _STEP)] if min(chosen) <= grid[0] else []
    high = [round(t, 2) for t in np.arange(grid[-1] + _STEP, _HIGH + 1e-9, _STEP)] if max(chosen) >= grid[-1] else []
    return tuple(low + grid + high)


def edge_warnings(pp, *, pixel_grid, area_grid, gate_grid, component_grid, soft_grid=(0.0,), lower_grid=()):
    """Lines naming every chosen value on the edge of its grid, where the optimum may lie outside it. The low
    edge of min area, gate and component size is 0, "off", a real choice, not an edge."""
    found = []

    def check(name, c, value, grid, *, low_edge):
        if len(grid) < 2:
            return
        where = "top" if value >= max(grid) else "bottom" if low_edge and value <= min(grid) else None
        if where:
            found.append(f"class {c + 1}: {name} {value:g} is at the {where} of its grid "
                         f"[{min(grid):g}..{max(grid):g}]; the best value may lie beyond it")

    for c in np.flatnonzero(~np.asarray(pp.off)):  # an off class's OFF threshold is no grid value
        check("pixel_threshold", c, pp.pixel_threshold[c], pixel_grid, low_edge=True)
        check("min_area", c, pp.min_area[c], area_grid, low_edge=False)
        check("min_component", c, pp.min_component[c], component_grid, low_edge=False)
    for c, (low, up) in enumerate(zip(pp.lower, pp.pixel_threshold)):
        if low < up:  # a class under the double threshold: its lower threshold is a choice of its own
            check("mask_threshold", c, low, lower_grid, low_edge=True)
    for c, k in enumerate(pp.soft_gate):
        check("soft_gate", c, k, soft_grid, low_edge=False)
    for c, gate in enumerate(pp.gate):
        check("gate", c, gate, gate_grid, low_edge=False)
    return found


def fold_stability(stats, dice, *, choose_on):
    """{"per_fold": {fold: what tune would choose on that fold alone and the Dice of the overall choice there},
    "spread": per class, max - min over folds of those values}; `dice` is the overall choice's [N, C] OOF Dice
    and `choose_on(stats)` the first-stage search (thresholds, areas, gate; with the double threshold's stage, the
    lower threshold too: "mask_threshold" is the per-class threshold masks are drawn at) on a subset."""
    per_fold = {}
    for fold in stats.folds:
        rows = stats.fold_of == fold
        own = choose_on(stats.subset(rows))
        per_fold[str(fold)] = {"n_images": int(rows.sum()), "pixel_threshold": list(own.pixel_threshold),
                               "min_area": list(own.min_area), "gate": list(own.gate),
                               "mask_threshold": list(own.lower),
                               "dice": [float(d) for d in dice[rows].mean(axis=0)]}
    spread = {}
    for key in ("pixel_threshold", "mask_threshold", "min_area", "dice"):
        values = np.array([f[key] for f in per_fold.values()], np.float64)  # [folds, C]
        spread[key] = [float(v) for v in values.max(axis=0) - values.min(axis=0)]
    return {"per_fold": per_fold, "spread": spread}


def threshold_text(t):
    """A chosen pixel threshold as text: "off" for a class switched off."""
    return "off" if postprocess.is_off(t) else f"{t:g}"


def describe(stability):
    """One line per class: the per-fold range of the threshold and of the Dice."""
    folds = stability["per_fold"].values()
    lines = []
    for c in range(NUM_CLASSES):
        t = [f["pixel_threshold"][c] for f in folds]
        d = [f["dice"][c] for f in folds]
        low = [f.get("mask_threshold", f["pixel_threshold"])[c] for f in folds]  # absent before the double threshold
        lower = f", lower {threshold_text(min(low))}..{threshold_text(max(low))}" if low != t else ""
        lines.append(f"class {c + 1} over {len(t)} fold(s): threshold chosen per fold {threshold_text(min(t))}.."
                     f"{threshold_text(max(t))}{lower}, "
                     f"Dice of the overall choice per fold {min(d):.4f}..{max(d):.4f}")
    return lines
