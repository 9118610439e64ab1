"""The layout of a training workdir (local or gs://) and the files in it: config, weights, logs, out-of-fold data.

```
W/config.json                      the resolved config of the run
W/{classify,segment}/fold{k}/
    ckpt/                          latest tf.train.Checkpoint (model + optimizer + epoch), for resume
    best.weights.h5                weights of the best validation epoch
    log.csv                        one row per epoch; tb/ holds the same as TensorBoard scalars
    oof.npz                        out-of-fold predictions of the best epoch (see save_oof)
    done.json                      written last: the fold is complete
```
"""

import dataclasses
import io
import json
import os
import tempfile

import numpy as np

from steel_tpu import config as config_lib
from steel_tpu import storage

TASKS = ("classify", "segment")


def fold_dir(workdir, task, fold):
    return storage.join(workdir, task, f"fold{fold}")


def fold_file(workdir, task, fold, name):
    return storage.join(fold_dir(workdir, task, fold), name)


def save_config(workdir, cfg):
    """Write config.json; resuming into a workdir trained with another config is refused."""
    path = storage.join(workdir, "config.json")
    text = config_lib.to_json(cfg)
    if storage.exists(path):
        old = config_lib.from_dict(json.loads(storage.read_text(path)))
        # Where it runs may change between sessions (a preempted TPU resumed on another host); what it trains may not.
        if dataclasses.replace(old, tpu=cfg.tpu) != cfg:
            raise ValueError(f"{path} holds a different config; use a new --workdir (or delete it) to change it")
        return
    storage.write_text(path, text)


def load_config(workdir):
    path = storage.join(workdir, "config.json")
    if not storage.exists(path):
        raise FileNotFoundError(f"{path}: not a training workdir (no config.json)")
    return config_lib.from_dict(json.loads(storage.read_text(path)))


def completed_folds(workdir, task):
    """Fold numbers of `task` whose training finished (done.json present), sorted."""
    done = storage.glob(storage.join(workdir, task, "fold*", "done.json"))
    return sorted(int(os.path.basename(os.path.dirname(p)).removeprefix("fold")) for p in done)


def save_weights(model, path):
    """Keras writes HDF5 through h5py (local files only): write locally, then publish atomically."""
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, "model.weights.h5")
        model.save_weights(local)
        with open(local, "rb") as f:
            storage.write_bytes(path, f.read())


def load_weights(model, path):
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, "model.weights.h5")
        with open(local, "wb") as f:
            f.write(storage.read_bytes(path))
        model.load_weights(local)


def save_oof(path, **arrays):
    """Out-of-fold arrays, one row per validation image, `image_ids` first (compressed npz, atomic).

    classify: `probs` float32 [N, heads]; segment: `probs` uint8 [N, 256/s, 1600/s, 4] (p * 255, block-mean
    downsampled by the config's oof_scale), `truth` bool [N, 256/s, 1600/s, 4], `truth_area` int64 [N, 4]
    (full-resolution pixel counts) and `dice` float32 [N, 4] (full-resolution Dice at the eval threshold).
    """
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    storage.write_bytes(path, buf.getvalue())


def load_oof(path):
    with np.load(io.BytesIO(storage.read_bytes(path))) as data:
        return {k: data[k] for k in data.files}
