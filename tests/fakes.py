"""Fakes built through the real API: workdirs holding out-of-fold data and finished folds, with no trained model.

Every file goes through Workdir (config, OOF, done markers), so a fake obeys the rules train obeys: a fold is done
only over finite best weights (Workdir.mark_done checks them).
"""

import io

import h5py
import numpy as np

from steel_tpu import config as config_lib
from steel_tpu import metrics, postprocess, storage
from steel_tpu.constants import HEIGHT, NUM_CLASSES, WIDTH
from steel_tpu.formats.workdir import Workdir


def finish_fold(wd, task, fold, *, info=None):
    """Mark `task` fold `fold` of the Workdir `wd` done as train does: a (tiny, finite) best-weights file, then
    Workdir.mark_done, which refuses missing or non-finite weights."""
    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        f["weights"] = np.zeros(4, np.float32)
    storage.write_bytes(wd.weights_path(task, fold), buf.getvalue())
    return wd.mark_done(task, fold, info or {"task": task, "fold": fold})


SCALE = 8  # OOF maps of 32x200: small and fast, still a real oof.npz
H, W = HEIGHT // SCALE, WIDTH // SCALE


def oof_image(rng, *, speck_prob, clean_specks_only):
    """One OOF image: truth rectangles, a noisy probability map that follows them, and small false specks."""
    truth = np.zeros((H, W, NUM_CLASSES), bool)
    for c in range(NUM_CLASSES):
        if rng.random() < 0.4:
            y, x = rng.integers(0, H - 8), rng.integers(0, W - 30)
            truth[y:y + rng.integers(4, 8), x:x + rng.integers(10, 30), c] = True
    p = np.clip(truth * rng.uniform(0.45, 0.9) + rng.normal(0.1, 0.12, truth.shape), 0, 1)
    for c in range(NUM_CLASSES):
        if rng.random() < speck_prob and not (clean_specks_only and truth.any()):  # a 2x2 false positive: 256 full-resolution pixels
            y, x = rng.integers(0, H - 2), rng.integers(0, W - 2)
            p[y:y + 2, x:x + 2, c] = 0.9
    return np.round(p * 255).astype(np.uint8), truth


def tiny_workdir(work, *, scale=SCALE):
    """(Workdir, its config): a workdir at `work` holding the tiny preset's config with OOF maps at 1/`scale`."""
    cfg = config_lib.preset("tiny")
    cfg.oof_scale = scale
    wd = Workdir(work)
    wd.save_config(cfg)
    return wd, cfg


def oof_workdir(work, *, n=40, folds=(0, 1), seed=0, speck_prob=0.3, clean_specks_only=False,
                classifier="binary", make_image=oof_image):
    """A workdir with out-of-fold data and finished folds for tune (which reads no model): config.json, oof.npz and
    done.json, each written through Workdir."""
    rng = np.random.default_rng(seed)
    wd, _ = tiny_workdir(work)
    for fold in folds:
        q, truth = map(np.stack, zip(*[make_image(rng, speck_prob=speck_prob, clean_specks_only=clean_specks_only)
                                       for _ in range(n)]))
        ids = np.array([f"f{fold}_{i:03d}.jpg" for i in range(n)])
        full_pred = np.repeat(np.repeat(postprocess.binarize(q, 0.5), SCALE, 1), SCALE, 2)
        full_truth = np.repeat(np.repeat(truth, SCALE, 1), SCALE, 2)
        wd.save_oof("segment", fold, image_ids=ids, probs=q, truth=truth,
                         truth_area=full_truth.sum(axis=(1, 2)), labels=truth.any(axis=(1, 2)),
                         dice=metrics.dice_matrix(full_pred, full_truth).astype(np.float32))
        finish_fold(wd, "segment", fold)
        if classifier:
            any_defect = truth.any(axis=(1, 2, 3)) if classifier == "binary" else truth.any(axis=(1, 2))
            probs = np.clip(any_defect * 0.6 + rng.uniform(0, 0.4, any_defect.shape), 0, 1)
            probs = probs.reshape(n, -1).astype(np.float32)
            wd.save_oof("classify", fold, image_ids=ids[::-1],
                             probs=probs[::-1], labels=truth.any(axis=(1, 2))[::-1])
            finish_fold(wd, "classify", fold)
