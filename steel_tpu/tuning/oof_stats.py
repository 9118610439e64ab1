"""Out-of-fold statistics tune searches: per (image, class) histograms of the uint8 maps, and Dice from counts.

Every completed fold's oof.npz is reduced once to per-(image, class) histograms of its uint8 probability maps
(all pixels, and truth pixels), from which the intersection and predicted area at ANY pixel threshold are suffix
sums. Candidate settings are judged with postprocess' own rules (levels, area_kept, gate_kept), and Dice goes
through PostProcess.keep, which `predict` uses.
"""

from dataclasses import dataclass

import numpy as np

from steel_tpu import postprocess
from steel_tpu.constants import HEIGHT, NUM_CLASSES
from steel_tpu.scoring import members

_LEVELS = 256
_BATCH = 64  # images per histogram pass: bounds the int32 index array to ~30 MB at oof_scale 4


@dataclass(frozen=True)
class OofStats:
    """Out-of-fold counts of every (image, class), at OOF resolution unless said otherwise."""

    image_ids: np.ndarray  # [N]
    at_least: np.ndarray  # int32 [N, C, 257]: pixels with q >= v (v = 256 holds 0)
    truth_at_least: np.ndarray  # int32 [N, C, 257]: truth pixels with q >= v
    truth_area: np.ndarray  # int64 [N, C], full resolution
    dice_full: np.ndarray | None  # float32 [N, C]: training's full-resolution Dice at its eval threshold (one
    # workdir; an ensemble's averaged maps have none)
    class_probs: np.ndarray | None  # float32 [N, heads] out-of-fold classifier probabilities, or None
    scale: int  # OOF maps are full resolution / scale: one OOF pixel stands for scale**2 pixels
    folds: tuple
    fold_of: np.ndarray  # int [N]: the fold each image was held out in

    def subset(self, rows):
        """These statistics restricted to the images `rows` (a bool [N] or index array)."""
        def take(x):
            return None if x is None else x[rows]

        return OofStats(image_ids=take(self.image_ids), at_least=take(self.at_least),
                        truth_at_least=take(self.truth_at_least), truth_area=take(self.truth_area),
                        dice_full=take(self.dice_full), class_probs=take(self.class_probs), scale=self.scale,
                        folds=tuple(sorted(set(take(self.fold_of).tolist()))), fold_of=take(self.fold_of))

    def counts(self, thresholds):
        """(predicted pixels, intersection with truth) [N, C, K] at pixel thresholds [C, K] (or [K] for all)."""
        above = postprocess.levels(thresholds).astype(np.int64) + 1
        above = np.broadcast_to(above, (NUM_CLASSES,) + above.shape[-1:])[None]
        return (np.take_along_axis(self.at_least, above, axis=2),
                np.take_along_axis(self.truth_at_least, above, axis=2))

    @property
    def truth(self):
        """int32 [N, C] truth pixels at OOF resolution."""
        return self.truth_at_least[:, :, 0]


def _suffix_counts(q, truth):
    """int32 [n, C, 257] counts of q >= v over all pixels and over truth pixels of uint8 maps [n, h, w, C]."""
    n, c = q.shape[0], q.shape[-1]
    flat = q.reshape(n, -1, c).astype(np.int32)
    index = flat + (np.arange(n * c, dtype=np.int32).reshape(n, 1, c) * _LEVELS)
    hist = np.bincount(index.ravel(), minlength=n * c * _LEVELS).reshape(n, c, _LEVELS)
    hit = np.bincount(index[truth.reshape(n, -1, c)], minlength=n * c * _LEVELS).reshape(n, c, _LEVELS)
    out = []
    for h in (hist, hit):
        suffix = np.zeros((n, c, _LEVELS + 1), np.int32)
        suffix[:, :, :_LEVELS] = np.cumsum(h[:, :, ::-1], axis=2)[:, :, ::-1]
        out.append(suffix)
    return out


def _fold_stats(wd, fold):
    oof = wd.oof("segment", fold)  # checked by formats/oof.py: uint8 maps and bool truth of one shape
    q, truth = oof["probs"], oof["truth"]
    parts = [_suffix_counts(q[i:i + _BATCH], truth[i:i + _BATCH]) for i in range(0, len(q), _BATCH)]
    return oof, [np.concatenate(p) for p in zip(*parts)], HEIGHT // q.shape[1]


def _class_probs(wd, image_ids):
    """Out-of-fold gating probabilities (the classify task chose which head they come from) for `image_ids`,
    or None (with the reason) when not all have one."""
    by_id = {}
    for fold in wd.completed_folds("classify"):
        oof = wd.oof("classify", fold)
        by_id.update(zip(oof["image_ids"].tolist(), np.asarray(oof["probs"], np.float32)))
    if not by_id:
        return None, "no completed classifier folds"
    missing = [i for i in image_ids.tolist() if i not in by_id]
    if missing:
        return None, f"{len(missing)} segmenter OOF images have no classifier OOF probability (e.g. {missing[0]})"
    return np.stack([by_id[i] for i in image_ids.tolist()]), None


def _check_disjoint(wd, folds, ids):
    """Each image once in the OOF data: a repeat names the image and both files (or the one file, twice)."""
    seen = {}
    for fold, fold_ids in zip(folds, ids):
        for image_id in fold_ids.tolist():
            if image_id in seen:
                first, second = wd.oof_path("segment", seen[image_id]), wd.oof_path("segment", fold)
                where = f"twice in {first}" if first == second else f"in both {first} and {second}"
                raise ValueError(f"image {image_id} is {where}: out-of-fold data must hold each image once (were "
                                 "the folds trained from different shard folders?)")
            seen[image_id] = fold


def collect(paths):
    """OofStats of every completed segment fold of the member workdirs `paths` (a ModelSource's), joined with the
    classifier's OOF on image ids; with several, of their averaged OOF data on the folds complete in every one
    (members.AveragedOof)."""
    wd, label = members.open_oof(paths), ", ".join(paths)
    folds = wd.completed_folds("segment")
    if not folds:
        every = " in every workdir" if isinstance(wd, members.AveragedOof) else ""
        raise FileNotFoundError(f"{label}: no completed segment folds (segment/fold*/done.json){every}; train first")
    if isinstance(wd, members.AveragedOof):
        print(f"tune: {wd.describe()}")
    ids, at_least, truth_at_least, area, full, scales = [], [], [], [], [], set()
    for fold in folds:
        oof, (a, t), scale = _fold_stats(wd, fold)
        ids.append(oof["image_ids"]), at_least.append(a), truth_at_least.append(t)
        area.append(oof["truth_area"]), full.append(oof.get("dice")), scales.add(scale)
    if len(scales) != 1:
        raise ValueError(f"{label}: segment folds {folds} store OOF maps at different scales {sorted(scales)}")
    image_ids = np.concatenate(ids)
    _check_disjoint(wd, folds, ids)
    class_probs, why = _class_probs(wd, image_ids)
    if why:
        print(f"tune: no classifier gate ({why})")
    return OofStats(image_ids=image_ids, at_least=np.concatenate(at_least),
                    truth_at_least=np.concatenate(truth_at_least), truth_area=np.concatenate(area),
                    dice_full=None if full[0] is None else np.concatenate(full), class_probs=class_probs,
                    scale=scales.pop(), folds=tuple(folds), fold_of=np.repeat(folds, [len(i) for i in ids]))


def dice(inter, pred, truth):
    """Kaggle Dice from pixel counts (broadcasting): 2|A∩B| / (|A| + |B|), 1 where both are empty."""
    total = pred + truth
    return np.divide(2.0 * inter, total, out=np.ones(total.shape), where=total > 0)


def gate_passes(stats, pp):
    """bool [N, C]: which images the hard gate of `pp` lets through."""
    n = len(stats.image_ids)
    if not pp.gate:
        return np.ones((n, NUM_CLASSES), bool)
    return np.broadcast_to(postprocess.gate_kept(stats.class_probs, pp.gate), (n, NUM_CLASSES))


def empty_dice(stats):
    """float64 [N, C]: the OOF Dice of submitting nothing (1 where the class is absent, else 0)."""
    return (stats.truth == 0).astype(np.float64)


def dice_of(stats, pp):
    """float64 [N, C] OOF Dice of the post-processing `pp` (areas at full resolution = OOF pixels * scale**2):
    presence counted at its image_levels, masks drawn at its mask_levels (the same level under one threshold)."""
    n = len(stats.image_ids)
    presence, _ = counts_at(stats, pp.image_levels(stats.class_probs, n=n))
    pred, inter = counts_at(stats, pp.mask_levels(stats.class_probs, n=n))
    kept = pp.keep(presence * stats.scale ** 2, stats.class_probs)
    return dice(inter * kept, pred * kept, stats.truth)


def counts_at(stats, image_levels):
    """(predicted pixels, intersection) [N, C, ...] at OOF resolution, thresholding image i's class c at
    `image_levels[i, c, ...]` (uint8, `q > level`): one lookup per image into its histogram."""
    index = np.asarray(image_levels).astype(np.int64) + 1
    shape = index.shape
    index = index.reshape(shape[0], NUM_CLASSES, -1)
    pred, inter = (np.take_along_axis(x, index, axis=2).reshape(shape) for x in (stats.at_least,
                                                                                   stats.truth_at_least))
    return pred, inter
