"""Scores: the Kaggle mean Dice (from masks or RLE CSVs), ROC AUC, and out-of-fold pixel and per-image summaries."""

from dataclasses import dataclass, field

import numpy as np

from steel_tpu import postprocess, storage
from steel_tpu.constants import HEIGHT, NUM_CLASSES, WIDTH
from steel_tpu.data.source import list_jpegs
from steel_tpu.formats.kaggle import EMPTY, CsvError, image_id_problem, read_labels
from steel_tpu.formats.rle import parse_runs

_BATCH = 64  # images thresholded at once: bounds the bool copies to ~25 MB at oof_scale 4


def _binary(name, array):
    array = np.asarray(array)
    if array.dtype != bool and not np.isin(array, (0, 1)).all():
        bad = array[~np.isin(array, (0, 1))].flat[0]
        raise ValueError(f"{name} must be boolean or 0/1 (threshold probabilities first); found {bad}")
    return array.astype(bool, copy=False)


def dice_matrix(pred, truth):
    """float64 [N, C] Dice of each image x class from [N, H, W, C] boolean or 0/1 masks; 1.0 where both are empty."""
    pred, truth = _binary("pred", pred), _binary("truth", truth)
    if pred.ndim != 4 or pred.shape != truth.shape:
        raise ValueError(f"pred {pred.shape} and truth {truth.shape} must both be [N, H, W, C]")
    inter = np.logical_and(pred, truth).sum(axis=(1, 2), dtype=np.int64)
    total = pred.sum(axis=(1, 2), dtype=np.int64) + truth.sum(axis=(1, 2), dtype=np.int64)
    return np.divide(2.0 * inter, total, out=np.ones(total.shape), where=total > 0)


@dataclass(frozen=True)
class Scores:
    """Mean Dice over every image x class pair, per-class means, and how many images were scored."""

    mean: float
    per_class: tuple[float, float, float, float]
    n_images: int

    @classmethod
    def from_dice(cls, dice):
        """Scores of a [N, C] Dice matrix (from dice_matrix or score_labels)."""
        dice = np.asarray(dice, dtype=np.float64)
        if dice.ndim != 2 or dice.shape[1] != NUM_CLASSES or dice.shape[0] == 0:
            raise ValueError(f"expected a non-empty [N, {NUM_CLASSES}] Dice matrix, got shape {dice.shape}")
        return cls(
            mean=float(dice.mean()), per_class=tuple(float(d) for d in dice.mean(axis=0)), n_images=dice.shape[0]
        )

    def format(self):
        classes = "  ".join(f"class{c} {d:.4f}" for c, d in enumerate(self.per_class, start=1))
        return f"dice {self.mean:.4f}  {classes}  (n={self.n_images} images)"


def _overlap(runs_a, runs_b):
    """Pixels two validated run lists (sorted, disjoint) share, by interval arithmetic: no mask is decoded."""
    (starts_a, lengths_a), (starts_b, lengths_b) = runs_a, runs_b
    ends_a, ends_b = starts_a + lengths_a, starts_b + lengths_b  # half-open
    cuts = np.unique(np.concatenate([starts_a, ends_a, starts_b, ends_b]))
    left = cuts[:-1]
    # Between two consecutive cuts membership is constant: (#starts <= x) - (#ends <= x) is 1 inside a run.
    in_a = np.searchsorted(starts_a, left, "right") - np.searchsorted(ends_a, left, "right")
    in_b = np.searchsorted(starts_b, left, "right") - np.searchsorted(ends_b, left, "right")
    return int(np.sum(np.diff(cuts) * in_a * in_b))


def _dice_rle(pred, truth, height, width):
    if not pred and not truth:
        return 1.0
    if not pred or not truth:
        return 0.0
    runs_p = parse_runs(pred, height=height, width=width)
    runs_t = parse_runs(truth, height=height, width=width)
    return 2.0 * _overlap(runs_p, runs_t) / (runs_p[1].sum() + runs_t[1].sum())


def score_labels(pred, truth, *, image_ids, height=HEIGHT, width=WIDTH):
    """Scores of `pred` against `truth` (both Labels) over `image_ids`; an image either lacks is clean there."""
    image_ids = tuple(image_ids)
    if not image_ids:
        raise ValueError("no images to score")
    dice = [
        [_dice_rle(p, t, height, width) for p, t in zip(pred.rles.get(i, EMPTY), truth.rles.get(i, EMPTY))]
        for i in image_ids
    ]
    return Scores.from_dice(dice)


def read_image_set(images):
    """Image ids of a folder's JPEG files (source.is_jpeg_name), or of a text file with one id per line (local or
    gs://)."""
    if storage.isdir(images):
        ids = sorted(list_jpegs(images))
        if not ids:
            raise ValueError(f"{images}: no JPEG images (.jpg, .jpeg) in this folder")
        return ids
    try:
        lines = storage.read_text(images).splitlines()
    except FileNotFoundError:
        raise FileNotFoundError(f"{images}: no such image folder or id list") from None
    ids = {}
    for line, text in enumerate(lines, start=1):
        image_id = text.strip()
        if not image_id:
            continue
        problem = image_id_problem(image_id)
        if problem:
            raise ValueError(f"{images} line {line}: {problem}")
        if image_id in ids:
            raise ValueError(f"{images} line {line}: image {image_id} listed twice (first on line {ids[image_id]})")
        ids[image_id] = line
    if not ids:
        raise ValueError(f"{images}: no image ids in this file")
    return list(ids)


def evaluate(*, pred_path, truth_path, images=None, intersection=False, height=HEIGHT, width=WIDTH):
    """Kaggle score of a submission CSV against a truth CSV (either layout; an image without rows is clean).

    The evaluated set is `images` (a folder or an id list) if given, else the truth's images. A prediction that
    names an image outside it, or misses an image of the truth in it, is refused (CsvError with counts and
    examples) unless `intersection`: then only the set's images the prediction names are scored, and how many
    were left out is printed.
    """
    pred = read_labels(pred_path, height=height, width=width)
    truth = read_labels(truth_path, height=height, width=width)
    evaluated = tuple(read_image_set(images)) if images is not None else truth.image_ids
    where = images if images is not None else truth_path
    allowed, named = set(evaluated), set(pred.image_ids)
    extra = [i for i in pred.image_ids if i not in allowed]
    missing = [i for i in truth.image_ids if i in allowed and i not in named]
    if (extra or missing) and not intersection:
        raise CsvError(f"{pred_path}: does not cover the evaluated set ({len(evaluated)} images of {where}): "
                       f"{_some(extra, f'predicted image(s) not in {where}')}"
                       f"{'; ' if extra and missing else ''}{_some(missing, f'image(s) of {truth_path} not predicted')}"
                       "; pass --intersection to score only the images both name")
    image_ids = tuple(i for i in evaluated if i in named) if intersection else evaluated
    if intersection:
        print(f"evaluate: scoring the intersection, {len(image_ids)} images; left out {len(missing)} image(s) of "
              f"{truth_path} not predicted and {len(extra)} predicted image(s) not in {where}")
        if not image_ids:
            raise CsvError(f"{pred_path}: no image in common with {where}")
    return score_labels(pred, truth, image_ids=image_ids, height=height, width=width)


def _some(ids, what):
    """'N what (e.g. a, b, c, d, e)' naming at most 5 ids; '' for none."""
    return f"{len(ids)} {what} (e.g. {', '.join(ids[:5])})" if ids else ""


def roc_auc(labels, scores):
    """Area under the ROC curve of 1-D 0/1 `labels` ranked by `scores` (Mann-Whitney U; tied scores share ranks)."""
    labels, scores = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    if labels.ndim != 1 or labels.shape != scores.shape:
        raise ValueError(f"labels {labels.shape} and scores {scores.shape} must be 1-D and the same length")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("labels must be 0/1")
    if np.isnan(scores).any():
        raise ValueError("scores contain NaN")
    positive = labels == 1
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"ROC AUC needs both classes; got {n_pos} positive and {n_neg} negative labels")
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    mean_rank = np.cumsum(counts) - (counts - 1) / 2.0  # 1-based ranks; a tie group shares its mean rank
    ranks = mean_rank[inverse]
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def pixel_confusion(probs, truth, thresholds):
    """int64 [C, 2, 2] pixel counts indexed [truth, predicted] of uint8 maps at per-class pixel thresholds."""
    counts = np.zeros((NUM_CLASSES, 2, 2), np.int64)
    for i in range(0, len(probs), _BATCH):
        pred, t = postprocess.binarize(probs[i:i + _BATCH], thresholds), truth[i:i + _BATCH]
        tp = (pred & t).sum(axis=(0, 1, 2))
        p, pos = pred.sum(axis=(0, 1, 2)), t.sum(axis=(0, 1, 2))
        counts[:, 1, 1] += tp
        counts[:, 0, 1] += p - tp
        counts[:, 1, 0] += pos - tp
        counts[:, 0, 0] += pred[..., 0].size - p - pos + tp
    return counts


def class_labels(masks):
    """int [...] one label per pixel from bool or 0/1 masks [..., C]: 0 background, else the class id claiming it; a
    pixel two classes claim goes to the higher id (the softmax head's targets use the same rule, tasks/segment.py)."""
    masks = np.asarray(masks) > 0
    ids = np.arange(1, masks.shape[-1] + 1, dtype=np.int64)
    return (masks * ids).max(axis=-1)


def predicted_labels(quantized, threshold):
    """int [...] one label per pixel from uint8 maps [..., C]: the class of the highest map among those over
    `threshold` (ties to the higher id, as class_labels), 0 (background) where none is over it."""
    q = np.asarray(quantized).astype(np.int64)
    classes = q.shape[-1]
    # q * C + c orders by the map first, then by the class index: argmax breaks ties towards the higher id.
    score = np.where(q > postprocess.levels(threshold), q * classes + np.arange(classes), -1)
    best = score.argmax(axis=-1)
    return np.where(score.max(axis=-1) >= 0, best + 1, 0)


def class_confusion(probs, truth, threshold):
    """int64 [C + 1, C + 1] pixel counts, rows truth and columns prediction, background first: class_labels of the
    truth against predicted_labels of the uint8 maps at one pixel `threshold`."""
    n = NUM_CLASSES + 1
    counts = np.zeros((n, n), np.int64)
    for i in range(0, len(probs), _BATCH):
        pairs = class_labels(truth[i:i + _BATCH]) * n + predicted_labels(probs[i:i + _BATCH], threshold)
        counts += np.bincount(pairs.ravel(), minlength=n * n).reshape(n, n)
    return counts


def confusion_rates(counts):
    """float64 [C, 6] from pixel_confusion counts: TP, FP, FN, TN shares of all pixels, precision, recall."""
    (tn, fp), (fn, tp) = np.moveaxis(np.asarray(counts, np.float64), 0, -1)
    total = tn + fp + fn + tp
    return np.stack([tp / total, fp / total, fn / total, tn / total,
                     tp / np.maximum(tp + fp, 1), tp / np.maximum(tp + fn, 1)], axis=1)


def pick_examples(dice, has_defect, *, k):
    """(best, worst) row indices by mean Dice over classes: worst of all images, best of those with a defect.

    Clean images predicted clean all score 1.0, so "best" among them says nothing; defective images fill in
    for the best only when too few exist. Ties keep the earlier row; no image is in both lists.
    """
    score = dice.mean(axis=1)
    worst = np.argsort(score, kind="stable")[:k]
    order = np.argsort(-score, kind="stable")
    order = np.concatenate([order[has_defect[order]], order[~has_defect[order]]])
    taken = set(worst.tolist())
    best = [i for i in order if i not in taken][:k]
    return np.asarray(best, np.int64), worst


@dataclass
class OofSummary:
    """Segment folds' out-of-fold data reduced one fold at a time: per-image Dice, pixel confusion, example maps."""

    thresholds: tuple  # per-class pixel thresholds of the confusion counts
    k: int  # best and worst images kept
    eval_threshold: float = 0.5  # the one pixel threshold of the background + classes confusion
    dice: dict = field(default_factory=dict)  # fold -> float32 [N, C]
    counts: np.ndarray = field(default_factory=lambda: np.zeros((NUM_CLASSES, 2, 2), np.int64))
    class_counts: np.ndarray = field(default_factory=lambda: np.zeros((NUM_CLASSES + 1,) * 2, np.int64))
    candidates: list = field(default_factory=list)  # dicts: fold, image_id, dice [C], has_defect, probs, truth

    @property
    def folds(self):
        return sorted(self.dice)

    def add_fold(self, fold, oof):
        """Add one fold's segment oof arrays (image_ids, probs, truth, truth_area, dice); keeps only a few maps."""
        self.dice[fold] = oof["dice"]
        self.counts += pixel_confusion(oof["probs"], oof["truth"], self.thresholds)
        self.class_counts += class_confusion(oof["probs"], oof["truth"], self.eval_threshold)
        has_defect = oof["truth_area"].sum(axis=1) > 0
        # The global best/worst k are among each fold's best/worst k, so only those maps are kept.
        best, worst = pick_examples(oof["dice"], has_defect, k=self.k)
        for i in np.concatenate([best, worst]):
            self.candidates.append(dict(fold=fold, image_id=str(oof["image_ids"][i]), dice=oof["dice"][i],
                                        has_defect=bool(has_defect[i]), probs=oof["probs"][i].copy(),
                                        truth=oof["truth"][i].copy()))  # copies free the fold's arrays

    def per_class_dice(self):
        """[(label, float [C] mean Dice)] per fold, plus all folds together when there are several."""
        rows = [(f"fold {f} ({len(self.dice[f])} images)", self.dice[f].mean(axis=0)) for f in self.folds]
        if len(rows) > 1:
            everything = np.concatenate([self.dice[f] for f in self.folds])
            rows.append((f"all ({len(everything)} images)", everything.mean(axis=0)))
        return rows

    def examples(self):
        """[("best" | "worst", candidate)]: the k best (among images with a defect) and k worst over all folds."""
        cands = self.candidates
        best, worst = pick_examples(np.stack([c["dice"] for c in cands]),
                                    np.array([c["has_defect"] for c in cands]), k=self.k)
        return [("best", cands[i]) for i in best] + [("worst", cands[i]) for i in worst]
