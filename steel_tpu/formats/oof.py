"""oof.npz: a fold's out-of-fold predictions, one row per validation image; written by the task's validation, read
(and checked once, here) by tune, report, compare and an ensemble's averaging.

classify: `image_ids` [N], `labels` bool [N, 4] class presence, `probs` float32 [N, heads] (the gating
probabilities). segment: the same `image_ids` and `labels`, `probs` uint8 [N, 256/s, 1600/s, 4] (p x 255,
block-mean downsampled by the config's oof_scale s), `truth` bool [N, 256/s, 1600/s, 4], `truth_area` [N, 4]
(full-resolution pixel counts) and `dice` float32 [N, 4] (full-resolution Dice at the eval threshold).
"""

import io

import numpy as np

from steel_tpu import storage
from steel_tpu.constants import NUM_CLASSES

FILE = "oof.npz"
KEYS = {"classify": ("image_ids", "labels", "probs"),
        "segment": ("image_ids", "labels", "probs", "truth", "truth_area", "dice")}


class OofError(ValueError):
    """An out-of-fold file that cannot be used; the message names it."""


def write(path, **arrays):
    """Write the arrays as one compressed npz, atomically."""
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    storage.write_bytes(path, buf.getvalue())


def _problem(task, arrays):
    """Why `arrays` is not a `task` out-of-fold file, or None."""
    missing = [k for k in KEYS[task] if k not in arrays]
    lengths = sorted({len(v) for k, v in arrays.items() if k in KEYS[task] and v.ndim})
    if missing or len(lengths) > 1:
        return f"not a {task} out-of-fold file (missing {missing or 'nothing'}; row counts {lengths})"
    if task == "segment":
        probs, truth, n = arrays["probs"], arrays["truth"], len(arrays["image_ids"])
        if (probs.dtype != np.uint8 or probs.ndim != 4 or probs.shape[-1] != NUM_CLASSES or truth.shape != probs.shape
                or arrays["dice"].shape != (n, NUM_CLASSES) or arrays["truth_area"].shape != (n, NUM_CLASSES)):
            return (f"not a segment out-of-fold file: expected uint8 maps and bool truth [N, h, w, {NUM_CLASSES}], "
                    f"dice and truth_area [N, {NUM_CLASSES}]; got {probs.dtype} {probs.shape}, {truth.shape}, "
                    f"{arrays['dice'].shape}, {arrays['truth_area'].shape}")
    return None


def read(path, task):
    """The `task` out-of-fold arrays in `path`, checked: every key of KEYS[task], one row count, the segment maps'
    dtypes and shapes. A file that is not one is named in one line."""
    if task not in KEYS:
        raise ValueError(f"unknown task {task!r}: choose from {tuple(KEYS)}")
    try:
        with np.load(io.BytesIO(storage.read_bytes(path))) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError) as error:
        raise OofError(f"{path}: not a readable out-of-fold file ({error})") from None
    problem = _problem(task, arrays)
    if problem:
        raise OofError(f"{path}: {problem}")
    return arrays
