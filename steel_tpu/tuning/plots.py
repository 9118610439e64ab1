"""The pictures of a tuning run (Dice against each setting per class, mask-area histograms), from tune.plot_data."""

import matplotlib.pyplot as plt
import numpy as np

from steel_tpu import storage
from steel_tpu.constants import CLASS_IDS, NUM_CLASSES
from steel_tpu.reports.figures import CLASS_COLORS, png  # figures selects the Agg backend
from steel_tpu.tuning.plot_data import PLOT_FILES as FILES


def _curves(*, x, ys, xlabel, marks, title, labels=None):
    labels = labels or [f"class {c}" for c in CLASS_IDS]
    fig, ax = plt.subplots(figsize=(7, 4))
    for y, mark, label, color in zip(ys, marks, labels, CLASS_COLORS if len(ys) > 1 else ["k"]):
        ax.plot(x, y, marker=".", label=label, color=color)
        ax.plot([x[mark]], [y[mark]], "o", markersize=10, markerfacecolor="none", color=color)
    ax.set(xlabel=xlabel, ylabel="OOF Dice (mean over images)", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    return png(fig)


def _histograms(data):
    fig, axes = plt.subplots(1, NUM_CLASSES, figsize=(16, 3.5))
    min_area = data["area_grid"][data["chosen"][2]]
    for c, ax in enumerate(axes):
        truth, predicted, before = data["truth_area"][:, c], data["submitted_area"][:, c], data["raw_area"][:, c]
        top = max(1, truth.max(), before.max())
        bins = np.geomspace(10, top * 1.1 + 10, 30)
        ax.hist(truth[truth > 0], bins=bins, alpha=0.6, label=f"truth ({(truth > 0).sum()})")
        ax.hist(predicted[predicted > 0], bins=bins, alpha=0.6, label=f"submitted ({(predicted > 0).sum()})")
        ax.hist(before[before > 0], bins=bins, histtype="step", color="k",
                label=f"before min area / gate ({(before > 0).sum()})")
        ax.axvline(max(min_area[c], 10), color="k", linestyle="--", linewidth=1)
        ax.set(xscale="log", title=f"class {CLASS_IDS[c]} mask area (px)", xlabel="pixels, full resolution")
        ax.legend(fontsize=8)
    return png(fig)


def draw(data):
    """{name in FILES: PNG bytes} from tune.plot_data's arrays (as saved, or as tune computed them)."""
    dice, (g, k, a) = data["dice"], data["chosen"]
    classes = range(NUM_CLASSES)
    off = data.get("off", np.zeros(NUM_CLASSES, bool))  # plot data from before the switch-off has none
    labels = [f"class {c}" + (" (off: circle = best setting)" if o else "") for c, o in zip(CLASS_IDS, off)]
    pngs = {
        FILES[0]: _curves(x=data["pixel_grid"], xlabel="pixel threshold", marks=k, labels=labels,
                          ys=[dice[c, g[c], :, a[c]] for c in classes],
                          title="Dice vs pixel threshold (chosen area, gate)"),
        FILES[1]: _curves(x=data["area_grid"], xlabel="minimum mask area (px)", marks=a, labels=labels,
                          ys=[dice[c, g[c], k[c], :] for c in classes],
                          title="Dice vs min area (chosen threshold, gate)"),
    }
    best = dice.max(axis=(2, 3))  # [C, G]: each class at its best threshold and area for that gate
    if str(data["gate_head"]) == "multilabel":
        pngs[FILES[2]] = _curves(x=data["gate_grid"], xlabel="classifier gate", marks=g, ys=best,
                                 title="Dice vs per-class gate (best threshold and area at each)")
    else:
        pngs[FILES[2]] = _curves(x=data["gate_grid"], xlabel="classifier gate (p_any)", marks=g[:1],
                                 ys=[best.mean(axis=0)], labels=["mean of the 4 classes"],
                                 title="Mean Dice vs binary gate, best threshold and area at each (0 = no gate)")
    pngs[FILES[3]] = _histograms(data)
    return pngs


def write_all(folder, data):
    """Write the four PNGs of FILES under `folder` (local or gs://)."""
    storage.makedirs(folder)
    for name, image in draw(data).items():
        storage.write_bytes(storage.join(folder, name), image)
