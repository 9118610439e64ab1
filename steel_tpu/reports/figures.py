"""Matplotlib figures of labels, training and predictions, each returned as PNG bytes."""

import io
from collections import Counter

import matplotlib

matplotlib.use("Agg")  # files only: works on headless TPU VMs and CI

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import to_rgb  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from PIL import Image  # noqa: E402

from steel_tpu import storage  # noqa: E402
from steel_tpu.constants import CLASS_IDS, HEIGHT, NUM_CLASSES, WIDTH  # noqa: E402

# One colour per class, bright enough to read over dark steel and distinct from each other.
CLASS_COLORS = ("#ff4136", "#ffdc00", "#2ecc40", "#f012be")
_DPI = 100
_OVERLAY_ALPHA = 0.7  # the alpha of a pixel with probability 1
# Maps are transparent below this p: every class' low background probability would otherwise tint the whole image.
OVERLAY_FLOOR = 0.2


def png(fig):
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def class_distribution(labels):
    """Bars of images per class and per class combination ('clean' = none) over every image of `labels`
    (a kaggle.Labels that lists the clean images too: see Labels.subset)."""
    ids = labels.image_ids
    per_class = Counter(c for i in ids for c in labels.present(i))
    combos = Counter("+".join(map(str, labels.present(i))) or "clean" for i in ids)
    fig, axes = plt.subplots(1, 2, figsize=(14, 3.5), layout="constrained")
    bars = axes[0].bar([f"class {c}" for c in CLASS_IDS], [per_class[c] for c in CLASS_IDS], color=CLASS_COLORS)
    axes[0].bar_label(bars)
    axes[0].set(title=f"images per class ({len(ids)} images)", ylabel="images")
    names, counts = zip(*combos.most_common()) if combos else ((), ())
    bars = axes[1].bar(names, counts, color="gray")
    axes[1].bar_label(bars)
    axes[1].set(title="class combinations per image", ylabel="images")
    axes[1].tick_params(axis="x", rotation=45)
    return png(fig)


def area_histograms(labels, *, height=HEIGHT, width=WIDTH):
    """One histogram of mask areas (pixels, log bins) per class over the non-empty masks of `labels`."""
    areas = np.array([labels.areas(i, height=height, width=width) for i in labels.image_ids]).reshape(-1, NUM_CLASSES)
    fig, axes = plt.subplots(1, NUM_CLASSES, figsize=(16, 3.2), layout="constrained")
    for c, ax in enumerate(axes):
        present = areas[:, c][areas[:, c] > 0]
        if present.size:
            # Areas span ~4 decades (a few hundred pixels to most of the image): linear bins hide the small masks.
            ax.hist(present, bins=np.geomspace(present.min(), present.max() + 1, 25), color=CLASS_COLORS[c])
            ax.set_xscale("log")
        ax.set(title=f"class {CLASS_IDS[c]}: {present.size} masks", xlabel="mask area (pixels)", ylabel="masks")
    return png(fig)


def training_curves(logs, *, title, metrics):
    """Loss, learning rate and each of `metrics` per epoch, one line per fold; `logs` is {fold: [row dicts]}."""
    panels = ("loss", "lr", *metrics)
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.4), squeeze=False,
                             layout="constrained")
    for ax, key in zip(axes[0], panels):
        for fold, rows in sorted(logs.items()):
            epochs = [r["epoch"] + 1 for r in rows if key in r]
            ax.plot(epochs, [r[key] for r in rows if key in r], marker="o", label=f"fold {fold}")
        ax.set(title=key, xlabel="epoch")
        ax.grid(alpha=0.3)
        if key == "lr":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    axes[0][0].legend(fontsize=8)
    fig.suptitle(title)
    return png(fig)


def dice_bars(rows):
    """Grouped bars of mean Dice per class; `rows` is [(label, [4] per-class means)], one group member per row."""
    fig, ax = plt.subplots(figsize=(8, 3.5), layout="constrained")
    width = 0.8 / len(rows)
    x = np.arange(NUM_CLASSES)
    for i, (label, values) in enumerate(rows):
        bars = ax.bar(x + (i - (len(rows) - 1) / 2) * width, values, width, label=label)
        ax.bar_label(bars, fmt="%.3f", fontsize=7)
    ax.set(xticks=x, xticklabels=[f"class {c}" for c in CLASS_IDS], ylabel="Dice (mean over images)", ylim=(0, 1.1))
    ax.legend(fontsize=8, ncols=min(len(rows), 6))
    ax.grid(axis="y", alpha=0.3)
    return png(fig)


def confusion_matrices(counts, *, thresholds):
    """One 2x2 pixel confusion matrix per class from int counts [C, 2, 2] indexed [truth, predicted].

    Colour is the row-normalised rate (TPR/FNR on the defect row, FPR/TNR on the background row), which stays
    readable when defect pixels are a tiny fraction; the text adds each cell's share of all pixels.
    """
    fig, axes = plt.subplots(1, NUM_CLASSES, figsize=(4.2 * NUM_CLASSES, 3.6), layout="constrained")
    names = (("TN", "FP"), ("FN", "TP"))
    for c, ax in enumerate(axes):
        m = counts[c].astype(np.float64)
        rows = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
        share = m / max(m.sum(), 1)
        ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
        for t in range(2):
            for p in range(2):
                ax.text(p, t, f"{names[t][p]}\n{rows[t, p]:.1%} of row\n{share[t, p]:.2%} of all",
                        ha="center", va="center", fontsize=8, color="white" if rows[t, p] > 0.5 else "black")
        ax.set(xticks=[0, 1], xticklabels=["background", "defect"], yticks=[0, 1],
               yticklabels=["background", "defect"], xlabel="predicted", ylabel="truth",
               title=f"class {CLASS_IDS[c]} (pixel threshold {thresholds[c]:g})")
    return png(fig)


def _overlay(probs, color):
    """RGBA [h, w, 4] of one class' uint8 probability map: the class colour with alpha following p."""
    rgba = np.zeros(probs.shape + (4,), np.float32)
    rgba[..., :3] = to_rgb(color)
    p = probs.astype(np.float32) / 255.0
    rgba[..., 3] = np.clip((p - OVERLAY_FLOOR) / (1 - OVERLAY_FLOOR), 0, 1) * _OVERLAY_ALPHA
    return rgba


def prediction_grid(examples):
    """One row per example: the image (or black), each class' probability map upsampled over it in its colour,
    and each class' truth outlined in the same colour. `examples` are dicts with `title`, `probs` (uint8
    [h, w, C] at 1/s resolution), `truth` (bool, same shape) and `image` (uint8 [H, W] grayscale, or None)."""
    fig, axes = plt.subplots(len(examples), 1, figsize=(12, 2.1 * len(examples)), squeeze=False)
    extent = (0, WIDTH, HEIGHT, 0)  # maps at any resolution are stretched onto full-resolution coordinates
    for ax, ex in zip(axes[:, 0], examples):
        h, w = ex["probs"].shape[:2]
        background = ex["image"] if ex["image"] is not None else np.zeros((h, w), np.uint8)
        ax.imshow(background, cmap="gray", vmin=0, vmax=255, extent=extent, interpolation="antialiased")
        xs, ys = (np.arange(w) + 0.5) * WIDTH / w, (np.arange(h) + 0.5) * HEIGHT / h
        for c, color in enumerate(CLASS_COLORS):
            ax.imshow(_overlay(ex["probs"][..., c], color), extent=extent, interpolation="bilinear")
            if ex["truth"][..., c].any():
                ax.contour(xs, ys, ex["truth"][..., c].astype(np.float32), levels=[0.5], colors=[color],
                           linewidths=1.5)
        ax.set(xlim=(0, WIDTH), ylim=(HEIGHT, 0), xticks=[], yticks=[])
        ax.set_title(ex["title"], fontsize=9, loc="left")
    handles = [Patch(color=color, label=f"class {c}") for c, color in zip(CLASS_IDS, CLASS_COLORS)]
    fig.legend(handles=handles, loc="upper right", ncols=NUM_CLASSES, fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    return png(fig)


def _class_list(labels, image_id):
    return ", ".join(map(str, labels.present(image_id))) or "none"


def label_grid(image_dir, image_ids, *, labels, predicted=None):
    """The images `image_ids` of `image_dir` (local or gs://), one per row, with the masks of `labels` outlined and
    those of `predicted` (if given) filled in, in the class colours; masks are decoded at each image's size."""
    examples = []
    for image_id in image_ids:
        image = np.asarray(Image.open(io.BytesIO(storage.read_bytes(storage.join(image_dir, image_id)))).convert("L"))
        size = {"height": image.shape[0], "width": image.shape[1]}
        if predicted is None:
            title, fill = f"{image_id}: classes {_class_list(labels, image_id)}", np.zeros(image.shape + (NUM_CLASSES,))
        else:
            title = f"{image_id}: predicted {_class_list(predicted, image_id)}; truth {_class_list(labels, image_id)}"
            fill = predicted.masks(image_id, **size)
        examples.append({"title": title, "probs": fill.astype(np.uint8) * 255, "truth": labels.masks(image_id, **size),
                         "image": image})
    return prediction_grid(examples)
