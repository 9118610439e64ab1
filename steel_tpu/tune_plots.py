"""The pictures of a tuning run: Dice against each threshold per class, and mask-area histograms."""

import matplotlib.pyplot as plt
import numpy as np

from steel_tpu import storage
from steel_tpu.constants import CLASS_IDS, NUM_CLASSES
from steel_tpu.figures import CLASS_COLORS, png  # figures selects the Agg backend

FILES = ("dice_vs_pixel_threshold.png", "dice_vs_min_area.png", "dice_vs_gate.png", "area_histograms.png")


def _save(fig, path):
    storage.write_bytes(path, png(fig))


def _chosen_indices(chosen, grid):
    k = [grid["pixel_threshold"].index(t) for t in chosen.pixel_threshold]
    a = [grid["min_area"].index(m) for m in chosen.min_area]
    gates = chosen.gate * NUM_CLASSES if len(chosen.gate) == 1 else chosen.gate or (0.0,) * NUM_CLASSES
    g = [grid["gate"].index(t) for t in gates]
    return g, k, a


def _curves(path, *, x, ys, xlabel, marks, title, labels=None):
    labels = labels or [f"class {c}" for c in CLASS_IDS]
    fig, ax = plt.subplots(figsize=(7, 4))
    for y, mark, label, color in zip(ys, marks, labels, CLASS_COLORS if len(ys) > 1 else ["k"]):
        ax.plot(x, y, marker=".", label=label, color=color)
        ax.plot([x[mark]], [y[mark]], "o", markersize=10, markerfacecolor="none", color=color)
    ax.set(xlabel=xlabel, ylabel="OOF Dice (mean over images)", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, path)


def _histograms(path, *, stats, chosen):
    pred, _ = stats.counts(np.asarray(chosen.pixel_threshold)[:, None])
    raw = pred[:, :, 0] * stats.scale ** 2
    areas = raw * chosen.keep(raw, stats.class_probs)
    fig, axes = plt.subplots(1, NUM_CLASSES, figsize=(16, 3.5))
    for c, ax in enumerate(axes):
        truth, predicted, before = stats.truth_area[:, c], areas[:, c], raw[:, c]
        top = max(1, truth.max(), before.max())
        bins = np.geomspace(10, top * 1.1 + 10, 30)
        ax.hist(truth[truth > 0], bins=bins, alpha=0.6, label=f"truth ({(truth > 0).sum()})")
        ax.hist(predicted[predicted > 0], bins=bins, alpha=0.6, label=f"submitted ({(predicted > 0).sum()})")
        ax.hist(before[before > 0], bins=bins, histtype="step", color="k",
                label=f"before min area / gate ({(before > 0).sum()})")
        ax.axvline(max(chosen.min_area[c], 10), color="k", linestyle="--", linewidth=1)
        ax.set(xscale="log", title=f"class {CLASS_IDS[c]} mask area (px)", xlabel="pixels, full resolution")
        ax.legend(fontsize=8)
    _save(fig, path)


def write_all(folder, *, stats, tables, chosen, result):
    """Write the four PNGs of FILES under `folder` (local or gs://)."""
    storage.makedirs(folder)
    grid, n = result["grid"], len(stats.image_ids)
    g, k, a = _chosen_indices(chosen, grid)
    classes = range(NUM_CLASSES)
    _curves(storage.join(folder, FILES[0]), x=grid["pixel_threshold"], xlabel="pixel threshold", marks=k,
            ys=[tables[c, g[c], :, a[c]] / n for c in classes], title="Dice vs pixel threshold (chosen area, gate)")
    _curves(storage.join(folder, FILES[1]), x=grid["min_area"], xlabel="minimum mask area (px)", marks=a,
            ys=[tables[c, g[c], k[c], :] / n for c in classes], title="Dice vs min area (chosen threshold, gate)")
    best = tables.max(axis=(2, 3)) / n  # [C, G]: each class at its best threshold and area for that gate
    if result["gate_head"] == "multilabel":
        _curves(storage.join(folder, FILES[2]), x=grid["gate"], xlabel="classifier gate", marks=g, ys=best,
                title="Dice vs per-class gate (best threshold and area at each)")
    else:
        _curves(storage.join(folder, FILES[2]), x=grid["gate"], xlabel="classifier gate (p_any)", marks=g[:1],
                ys=[best.mean(axis=0)], labels=["mean of the 4 classes"],
                title="Mean Dice vs binary gate, best threshold and area at each (0 = no gate)")
    _histograms(storage.join(folder, FILES[3]), stats=stats, chosen=chosen)
