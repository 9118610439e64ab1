"""Severstal-like synthetic data set: steel-texture JPEGs with four kinds of coarsely labelled defects."""

# Measured by `synthesize(out, n_train=2000, n_test=0, seed=0)` (area: pixels of one image's mask of a class):
#
#   class  what it looks like                   images   area min / median /    mean /     max
#   clean  no defect                             46.2%
#   1      clusters of small bright/dark pits     9.4%       832 /  3,176 /   3,475 /   8,516
#   2      thin, near-vertical scratches          2.8%       960 /  2,878 /   2,946 /   5,912
#   3      long horizontal streaky patches       42.4%     1,694 / 23,250 /  28,008 / 129,317
#   4      large dark blotchy regions             7.8%     7,651 / 31,817 /  36,688 /  99,934
#   images with two or more classes               7.8%
#
# Real Severstal train (12,568 images): clean 47%, class 1 7%, class 2 2%, class 3 41%, class 4 6%; mean areas
# roughly 4.4k, 3.4k, 25k and 34k pixels (public EDA figures, approximate).

import io
import numbers
import posixpath

import numpy as np
from PIL import Image

from steel_tpu import storage
from steel_tpu.constants import CLASS_IDS, HEIGHT, WIDTH
from steel_tpu.formats import kaggle, outputs, rle

# Independent per-image presence probabilities; their product of complements (0.474) is the clean fraction.
CLASS_PROBS = {1: 0.10, 2: 0.03, 3: 0.41, 4: 0.08}
# Weights of 1, 2, 3, ... instances of a class that is present in an image.
INSTANCE_WEIGHTS = {1: (0.6, 0.3, 0.1), 2: (0.8, 0.2), 3: (0.5, 0.3, 0.15, 0.05), 4: (0.8, 0.2)}
# Big defects are placed first so the small ones find room beside them.
PLACEMENT_ORDER = (4, 3, 1, 2)
JPEG_QUALITY = 90
_PLACEMENT_TRIES = 20
_SPLITS = {"train": 0, "test": 1}


def synthesize(out_dir, *, n_train=100, n_test=20, seed=0):
    """Write a Severstal-layout data set under `out_dir` and return a summary of its labels.

    Layout: train_images/<id>.jpg, train.csv, test_images/<id>.jpg, test_truth.csv (Kaggle's defect-rows-only
    CSV layout). The same seed gives the same bytes; image i of a split does not depend on the split's size.
    """
    for name, value in (("n_train", n_train), ("n_test", n_test), ("seed", seed)):
        if not isinstance(value, numbers.Integral) or value < 0:
            raise ValueError(f"synthesize: {name} must be a non-negative integer, got {value!r}")
    _check_empty(out_dir)
    seen_ids = set()
    per_image_areas = []
    for split, n, csv_name in (("train", n_train, "train.csv"), ("test", n_test, "test_truth.csv")):
        image_dir = storage.join(out_dir, f"{split}_images")
        storage.makedirs(image_dir)
        ids, rles = [], {}
        for index in range(n):
            # One generator per image, keyed by (seed, split, index), so images are independent of n_train/n_test.
            rng = np.random.default_rng([seed, _SPLITS[split], index])
            image_id = _image_id(rng, seen_ids)
            image, masks = render(rng)
            storage.write_bytes(storage.join(image_dir, image_id), _jpeg_bytes(image))
            ids.append(image_id)
            rles[image_id] = tuple(rle.encode(masks[c]) if c in masks else "" for c in CLASS_IDS)
            per_image_areas.append({c: int(m.sum()) for c, m in masks.items()})
        kaggle.write_train_csv(storage.join(out_dir, csv_name), kaggle.Labels(image_ids=ids, rles=rles))
    return _summary(per_image_areas, n_train=n_train, n_test=n_test)


def _check_empty(out_dir):
    """Refuse an out_dir holding anything: stale images would read as clean images no CSV row mentions, and a
    user's files there are not ours to replace. Nothing is written before this check."""
    outputs.check_folder(out_dir)
    if storage.isdir(out_dir):
        names = [posixpath.basename(p.rstrip("/")) for p in storage.listdir(out_dir)]
        if names:
            shown = ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
            raise outputs.OutputError(f"--out {out_dir}: not empty ({shown}); synth writes only into a new or empty "
                                      "folder: nothing was changed")


def render(rng):
    """One synthetic image from `rng`: (uint8 (HEIGHT, WIDTH) grayscale, {class_id: bool mask} of present classes)."""
    present = [c for c in PLACEMENT_ORDER if rng.random() < CLASS_PROBS[c]]
    image = _background(rng)
    masks, boxes = {}, []
    for class_id in present:
        mask = np.zeros((HEIGHT, WIDTH), dtype=bool)
        weights = np.asarray(INSTANCE_WEIGHTS[class_id])
        for _ in range(1 + rng.choice(weights.size, p=weights / weights.sum())):
            delta, region = _SHAPES[class_id](rng)
            y0, x0 = _position(rng, region.shape, class_id=class_id, boxes=boxes)
            h, w = region.shape
            image[y0 : y0 + h, x0 : x0 + w] += delta
            mask[y0 : y0 + h, x0 : x0 + w] |= region
        masks[class_id] = mask
    # Sensor noise goes on last so defects carry the same grain as the steel around them.
    image += rng.standard_normal((HEIGHT, WIDTH), dtype=np.float32) * np.float32(rng.uniform(2.5, 5.0))
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), dict(sorted(masks.items()))


def _image_id(rng, seen):
    while True:
        image_id = f"{int(rng.integers(16**9)):09x}.jpg"
        if image_id not in seen:
            seen.add(image_id)
            return image_id


def _jpeg_bytes(gray):
    buffer = io.BytesIO()
    # Severstal stores grayscale steel as 3 identical channels.
    Image.fromarray(gray).convert("RGB").save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def _summary(per_image_areas, *, n_train, n_test):
    areas = {c: [a[c] for a in per_image_areas if c in a] for c in CLASS_IDS}
    n = max(len(per_image_areas), 1)
    return {
        "n_train": n_train,
        "n_test": n_test,
        "clean_fraction": sum(not a for a in per_image_areas) / n,
        "multi_class_fraction": sum(len(a) > 1 for a in per_image_areas) / n,
        "images_per_class": {c: len(a) for c, a in areas.items()},
        "area_range": {c: (min(a), max(a)) if a else None for c, a in areas.items()},
        "median_area": {c: float(np.median(a)) if a else None for c, a in areas.items()},
    }


def _position(rng, shape, *, class_id, boxes):
    """Top-left corner for a defect of `shape`, avoiding other classes' boxes (best effort) so masks rarely overlap."""
    h, w = shape
    for _ in range(_PLACEMENT_TRIES):
        y0, x0 = int(rng.integers(HEIGHT - h + 1)), int(rng.integers(WIDTH - w + 1))
        box = (y0, y0 + h, x0, x0 + w)
        if not any(c != class_id and _overlaps(box, b) for c, b in boxes):
            break
    boxes.append((class_id, box))
    return y0, x0


def _overlaps(a, b):
    return a[0] < b[1] and b[0] < a[1] and a[2] < b[3] and b[2] < a[3]


def _lerp_axis(values, n_out, axis):
    """Linear resize of `values` along `axis` to n_out samples, corners aligned."""
    n_in = values.shape[axis]
    pos = np.linspace(0.0, n_in - 1.0, n_out)
    lo = np.minimum(pos.astype(np.int64), n_in - 2)
    shape = [1] * values.ndim
    shape[axis] = n_out
    frac = (pos - lo).astype(np.float32).reshape(shape)
    return np.take(values, lo, axis=axis) * (1 - frac) + np.take(values, lo + 1, axis=axis) * frac


def _smooth_noise(rng, shape, *, cell):
    """Unit-ish smooth random field of `shape`: low-resolution normal noise upsampled bilinearly by ~`cell` px."""
    coarse = rng.standard_normal((shape[0] // cell + 2, shape[1] // cell + 2), dtype=np.float32)
    # Elementwise interpolation, not a BLAS product: bit-identical on any machine and thread count, so a seed
    # gives the same bytes everywhere (and multithreaded BLAS crawls on a shared 2-core box).
    return _lerp_axis(_lerp_axis(coarse, shape[1], axis=1), shape[0], axis=0)


def _background(rng):
    """Rolled steel: horizontal rolling streaks fading in and out along x, column shading and a brightness ramp."""
    rows = rng.standard_normal(HEIGHT + 2, dtype=np.float32)
    rows = (rows[:-2] + 2 * rows[1:-1] + rows[2:]) / 4
    streaks = rows[:, None] * (0.6 + 0.4 * np.tanh(_smooth_noise(rng, (HEIGHT, WIDTH), cell=48)))
    columns = _smooth_noise(rng, (1, WIDTH), cell=160)
    y = np.linspace(-0.5, 0.5, HEIGHT, dtype=np.float32)[:, None]
    x = np.linspace(-0.5, 0.5, WIDTH, dtype=np.float32)[None, :]
    return (
        np.float32(rng.uniform(80, 135))
        + np.float32(rng.uniform(4, 10)) * streaks
        + np.float32(rng.uniform(2, 6)) * columns
        + np.float32(rng.uniform(-25, 25)) * x
        + np.float32(rng.uniform(-10, 10)) * y
    )


def _pits(rng):
    """Class 1: a cluster of small Gaussian pits, mostly dark; the mask is an ellipse a few px around the cluster."""
    ry, rx, margin = rng.uniform(6, 24), rng.uniform(8, 40), 8.0  # margin: > 3 sigma of the widest pit
    h, w = int(2 * (ry + margin)) + 1, int(2 * (rx + margin)) + 1
    n = max(6, int(np.pi * ry * rx / rng.uniform(40, 80)))  # pits per unit area, so big clusters stay dense
    radius, angle = np.sqrt(rng.random(n)), rng.uniform(0, 2 * np.pi, n)  # sqrt: uniform density over the area
    py, px = h / 2 + ry * radius * np.sin(angle), w / 2 + rx * radius * np.cos(angle)
    sigma = rng.uniform(1.3, 2.6, n)
    amp = rng.uniform(50, 100, n) * np.where(rng.random(n) < 0.7, -1, 1)
    yy, xx = np.ogrid[:h, :w]
    d2 = ((yy[None] - py[:, None, None]) ** 2 + (xx[None] - px[:, None, None]) ** 2) / sigma[:, None, None] ** 2
    delta = np.einsum("n,nhw->hw", amp, np.exp(-0.5 * d2)).astype(np.float32)
    region = ((yy - h / 2) / (ry + margin)) ** 2 + ((xx - w / 2) / (rx + margin)) ** 2 <= 1
    return delta, region


def _scratch(rng):
    """Class 2: a thin, slightly slanted vertical line; the mask is a parallelogram a few px around it."""
    length, slope, sigma = int(rng.integers(40, 180)), rng.uniform(-0.15, 0.15), rng.uniform(1.0, 1.8)
    margin_y, half_band = 4, 3 * sigma + 6
    h, w = length + 2 * margin_y, int(abs(slope) * length + 2 * half_band) + 1
    yy, xx = np.ogrid[:h, :w]
    along = np.clip(yy - margin_y, 0, length)
    dx = xx - (w / 2 + slope * (along - length / 2))
    inside = ((yy >= margin_y) & (yy < margin_y + length)).astype(np.float32)
    brightness = 0.7 + 0.3 * np.tanh(_smooth_noise(rng, (h, 1), cell=24))
    amp = rng.uniform(60, 110) * (1 if rng.random() < 0.6 else -1)
    delta = (amp * inside * brightness * np.exp(-0.5 * (dx / sigma) ** 2)).astype(np.float32)
    return delta, np.abs(dx) <= half_band


def _streaks(rng):
    """Class 3: a long band of strong, slightly slanted horizontal scratch lines; the mask is the band."""
    h, w = int(rng.uniform(14, 90)), int(np.exp(rng.uniform(np.log(100), np.log(800))))
    skew = rng.uniform(-1, 1) * min(0.08, 40 / w)  # at most 40 px of vertical drift end to end
    box_h = h + int(abs(skew) * w) + 1
    yy, xx = np.ogrid[:box_h, :w]
    # Row coordinate inside the slanted band, 0..h at its edges.
    v = yy - (box_h - h) / 2 - skew * (xx - w / 2)
    lines = rng.standard_normal(h + 2).astype(np.float32)
    lines = np.sign(lines) * np.maximum(np.abs(lines) - 0.6, 0)  # sparse: a few strong lines, calm rows between
    texture = lines[np.clip(v.astype(np.int64), 0, h - 1)]
    envelope = 0.5 + 0.5 * np.tanh(1.5 * _smooth_noise(rng, (1, w), cell=60) + 1)
    taper = np.clip(np.minimum(xx, w - 1 - xx) / max(0.1 * w, 1), 0, 1) * np.clip(np.minimum(v, h - v) / 3, 0, 1)
    level = rng.uniform(-15, 20) + rng.uniform(30, 55) * texture * envelope
    return (taper * level).astype(np.float32), (v >= 0) & (v <= h)


def _blotch(rng):
    """Class 4: a dark region built from 2-5 overlapping ellipses with blotchy depth; the mask is their union."""
    h, w = int(rng.integers(80, HEIGHT + 1)), int(rng.integers(100, 500))
    k = int(rng.integers(2, 6))
    ry, rx = rng.uniform(0.25, 0.5, k) * h, rng.uniform(0.25, 0.5, k) * w
    cy, cx = rng.uniform(ry, h - ry), rng.uniform(rx, w - rx)
    yy, xx = np.ogrid[:h, :w]
    # Normalised distance to the nearest ellipse centre: <= 1 inside their union.
    dy = (yy[None] - cy[:, None, None]) / ry[:, None, None]
    dx = (xx[None] - cx[:, None, None]) / rx[:, None, None]
    dist = np.sqrt(dy**2 + dx**2).min(axis=0)
    alpha = np.clip((1 - dist) / 0.3, 0, 1)
    depth = rng.uniform(35, 70) * (0.6 + 0.4 * np.tanh(_smooth_noise(rng, (h, w), cell=20)))
    return (-depth * alpha).astype(np.float32), dist <= 1


_SHAPES = {1: _pits, 2: _scratch, 3: _streaks, 4: _blotch}
