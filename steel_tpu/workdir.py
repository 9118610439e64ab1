"""The one owner of a training workdir (local or gs://): every file in it is named, written and read here.

```
W/config.json                      the user's config (per-replica batches: the same file on any slice)
W/runs.jsonl                       one line per train invocation: host, device, versions, resolved batches/LRs
W/thresholds.json, W/tune/         tune's choice (its content is tune's) and its plots
W/{classify,segment}/fold{k}/
    ckpt/                          latest tf.train.Checkpoint (model + optimizer + epoch), for resume
    best.weights.h5                weights of the best validation epoch
    log.csv                        one row per epoch; tb/ holds the same as TensorBoard scalars
    oof.npz                        out-of-fold predictions of the best epoch (see save_oof)
    done.json                      written last, only when best.weights.h5 exists and is finite
```
"""

import csv
import dataclasses
import io
import json
import os
import posixpath
import re
import tempfile

import h5py
import numpy as np

from steel_tpu import config as config_lib
from steel_tpu import storage

CONFIG, RUNS, THRESHOLDS, TUNE = "config.json", "runs.jsonl", "thresholds.json", "tune"
CKPT, TB, WEIGHTS, LOG, OOF, DONE = "ckpt", "tb", "best.weights.h5", "log.csv", "oof.npz", "done.json"
_FOLD = re.compile(r"fold(\d+)")


class WorkdirError(ValueError):
    """A workdir file that cannot be used (unreadable, not finite, missing); the message names the file."""


def read_json(path, *, what):
    """A JSON file as a dict; a file that is not JSON is named in one line."""
    try:
        return json.loads(storage.read_text(path))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise WorkdirError(f"{path}: not a valid {what} (bad JSON: {error})") from None


def read_thresholds(path):
    """A thresholds.json anywhere (the workdir's or one a user names) as a dict; its keys are tune's."""
    if not storage.exists(path):
        raise FileNotFoundError(f"{path}: no such thresholds file")
    return read_json(path, what="thresholds file")


def check_weights(path, data):
    """Refuse weights bytes that are not HDF5 (garbage, truncated) or hold a non-finite number, naming `path`."""
    bad = []

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset) and obj.dtype.kind == "f" and not np.isfinite(obj[()]).all():
            bad.append(name)

    try:
        with h5py.File(io.BytesIO(data), "r") as f:
            f.visititems(visit)
    except OSError as error:
        raise WorkdirError(f"{path}: not a readable HDF5 weights file ({error})") from None
    if bad:
        raise WorkdirError(f"{path}: {len(bad)} weight array(s) hold NaN or inf (e.g. {bad[0]}); this fold "
                           "diverged and cannot be used")


class Workdir:
    """A training workdir at `path`; all reads and writes of its files go through this object."""

    def __init__(self, path):
        self.path = str(path)

    def __str__(self):
        return self.path

    def _file(self, *parts):
        return storage.join(self.path, *parts)

    # --- config.json ---

    def save_config(self, cfg):
        """Write config.json; resuming into a workdir trained with another config is refused."""
        path = self._file(CONFIG)
        if storage.exists(path):
            old = config_lib.from_dict(read_json(path, what="config file"))
            # Where it runs may change between sessions (a preempted TPU resumed on another host); what it
            # trains may not.
            if dataclasses.replace(old, tpu=cfg.tpu, device=cfg.device) != cfg:
                raise ValueError(f"{path} holds a different config; use a new --workdir (or delete it) to change it")
            return
        storage.write_text(path, config_lib.to_json(cfg))

    def config(self):
        path = self._file(CONFIG)
        if not storage.exists(path):
            raise FileNotFoundError(f"{path}: not a training workdir (no config.json)")
        return config_lib.from_dict(read_json(path, what="config file"))

    # --- runs.jsonl ---

    def runs_path(self):
        return self._file(RUNS)

    def runs(self):
        """Every recorded train invocation, oldest first ([] before the first); a bad line is named."""
        path = self.runs_path()
        if not storage.exists(path):
            return []
        entries = []
        for line, text in enumerate(storage.read_text(path).splitlines(), start=1):
            try:
                entries.append(json.loads(text))
            except json.JSONDecodeError as error:
                raise WorkdirError(f"{path}: line {line}: not a JSON run entry ({error})") from None
        return entries

    def add_run(self, entry):
        """Append one run entry (a JSON object). Rewritten whole: gs:// objects cannot be appended to."""
        path = self.runs_path()
        before = storage.read_text(path) if storage.exists(path) else ""
        storage.write_text(path, before + json.dumps(entry, sort_keys=True) + "\n")

    # --- fold folders ---

    def fold_dir(self, task, fold):
        return self._file(task, f"fold{int(fold)}")

    def ckpt_dir(self, task, fold):
        return storage.join(self.fold_dir(task, fold), CKPT)

    def tb_dir(self, task, fold):
        return storage.join(self.fold_dir(task, fold), TB)

    def folds(self, task):
        """Fold numbers of `task` that have a folder (finished or not), sorted; listed, never globbed, so no
        character of the workdir's path acts as a pattern."""
        root = self._file(task)
        if not storage.isdir(root):
            return []
        names = (posixpath.basename(p.rstrip("/")) for p in storage.listdir(root))
        return sorted(int(m[1]) for m in map(_FOLD.fullmatch, names) if m)

    # --- log.csv ---

    def log_path(self, task, fold):
        return storage.join(self.fold_dir(task, fold), LOG)

    def read_log(self, task, fold):
        """The fold's log rows as {column: float} (epoch as int), [] before the first epoch; a bad cell raises
        naming the file and line."""
        path = self.log_path(task, fold)
        if not storage.exists(path):
            return []
        rows = []
        for line, row in enumerate(csv.DictReader(io.StringIO(storage.read_text(path))), start=2):
            try:
                values = {k: float(v) for k, v in row.items() if v != ""}
                values["epoch"] = int(values["epoch"])
            except (KeyError, TypeError, ValueError) as error:
                raise WorkdirError(f"{path}: line {line}: expected numbers with an epoch column ({error})") from None
            rows.append(values)
        return rows

    def write_log(self, task, fold, rows):
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(rows[-1]))
        writer.writeheader()
        writer.writerows(rows)
        storage.write_text(self.log_path(task, fold), buf.getvalue())

    # --- oof.npz ---

    def oof_path(self, task, fold):
        return storage.join(self.fold_dir(task, fold), OOF)

    def save_oof(self, task, fold, **arrays):
        """Out-of-fold arrays, one row per validation image, `image_ids` first (compressed npz, atomic).

        classify: `probs` float32 [N, heads] (the gating probabilities); segment: `probs` uint8 [N, 256/s,
        1600/s, 4] (p * 255, block-mean downsampled by the config's oof_scale), `truth` bool [N, 256/s, 1600/s,
        4], `truth_area` int64 [N, 4] (full-resolution pixel counts) and `dice` float32 [N, 4]
        (full-resolution Dice at the eval threshold). Both: `labels` bool [N, 4] class presence.
        """
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        storage.write_bytes(self.oof_path(task, fold), buf.getvalue())

    def oof(self, task, fold):
        path = self.oof_path(task, fold)
        try:
            with np.load(io.BytesIO(storage.read_bytes(path))) as data:
                return {k: data[k] for k in data.files}
        except (OSError, ValueError) as error:
            raise WorkdirError(f"{path}: not a readable out-of-fold file ({error})") from None

    # --- best.weights.h5 ---

    def weights_path(self, task, fold):
        return storage.join(self.fold_dir(task, fold), WEIGHTS)

    def save_weights(self, model, task, fold):
        """Keras writes HDF5 through h5py (local files only): write locally, then publish atomically."""
        with tempfile.TemporaryDirectory() as tmp:
            local = os.path.join(tmp, "model.weights.h5")
            model.save_weights(local)
            with open(local, "rb") as f:
                storage.write_bytes(self.weights_path(task, fold), f.read())

    def load_model(self, task, fold, *, strategy):
        """`task`'s model (a task object) built under `strategy` with the fold's best weights (ensemble.load)."""
        with strategy.scope():
            model = task.build_model(pretrained=False)
        self.load_weights(model, task.name, fold)
        return model

    def model_path(self, task, fold):
        """The file a fold's model comes from (what a resumed predict must find unchanged)."""
        return self.weights_path(task, fold)

    def _checked_weights(self, task, fold):
        path = self.weights_path(task, fold)
        if not storage.exists(path):
            raise WorkdirError(f"{path}: missing: the fold has no best weights (did any epoch finish?)")
        data = storage.read_bytes(path)
        check_weights(path, data)
        return path, data

    def load_weights(self, model, task, fold):
        """Load the fold's best weights into `model`; a missing, non-HDF5 or non-finite file is refused by name."""
        path, data = self._checked_weights(task, fold)
        with tempfile.TemporaryDirectory() as tmp:
            local = os.path.join(tmp, "model.weights.h5")
            with open(local, "wb") as f:
                f.write(data)
            try:
                model.load_weights(local)
            except (ValueError, KeyError, OSError) as error:
                raise WorkdirError(f"{path}: does not fit the model the workdir's config builds ({error})") from None

    # --- done.json ---

    def done_path(self, task, fold):
        return storage.join(self.fold_dir(task, fold), DONE)

    def done(self, task, fold):
        """The fold's done.json as a dict, or None while the fold is unfinished."""
        path = self.done_path(task, fold)
        return read_json(path, what="done marker") if storage.exists(path) else None

    def mark_done(self, task, fold, info):
        """Write done.json, but only over best weights that exist and are finite: done means usable."""
        self._checked_weights(task, fold)
        storage.write_text(self.done_path(task, fold), json.dumps(info, indent=2))
        return info

    def completed_folds(self, task):
        """Fold numbers of `task` whose training finished (done.json present), sorted."""
        return [f for f in self.folds(task) if storage.exists(self.done_path(task, f))]

    # --- thresholds.json and tune/ ---

    def thresholds_path(self):
        return self._file(THRESHOLDS)

    def save_thresholds(self, doc):
        storage.write_text(self.thresholds_path(), json.dumps(doc, indent=2) + "\n")

    def thresholds(self):
        """thresholds.json as a dict, or None before tuning."""
        path = self.thresholds_path()
        return read_thresholds(path) if storage.exists(path) else None

    def tune_dir(self):
        return self._file(TUNE)
