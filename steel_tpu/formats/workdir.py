"""The one owner of a training workdir (local or gs://): every file in it is named, written and read here.

```
W/config.json                      the user's config (per-replica batches: the same file on any slice)
W/shards.json                      which shard folder (path and fingerprint) every fold was trained on, and
                                   which pseudo-label folder (path, fingerprint, manifest sha256) if any
W/runs.jsonl                       one line per train invocation: host, device, versions, resolved batches/LRs
W/thresholds.json, W/tune/         tune's choice (formats/thresholds.py owns its content) and its plots
W/rescore.json                     that choice scored at full resolution on the OOF images (rescore.py's)
W/{classify,segment}/fold{k}/
    ckpt/                          latest tf.train.Checkpoint (model + optimizer + epoch), for resume; under the
                                   JAX backend ckpt/state.npz instead (formats/fold_state.py)
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
import posixpath
import re

from steel_tpu import config as config_lib
from steel_tpu import storage
from steel_tpu.formats import fold_state
from steel_tpu.formats import oof as oof_format
from steel_tpu.formats import thresholds as thresholds_format
from steel_tpu.formats import weights
from steel_tpu.formats.fold_models import FoldModels

CONFIG, SHARDS, RUNS, THRESHOLDS, TUNE = "config.json", "shards.json", "runs.jsonl", thresholds_format.FILE, "tune"
CKPT, TB, WEIGHTS, LOG, OOF, DONE = "ckpt", "tb", "best.weights.h5", "log.csv", oof_format.FILE, "done.json"
_FOLD = re.compile(r"fold(\d+)")
_CKPT_FILE = re.compile(r"(ckpt-\d+)\.(index|data-\d{5}-of-\d{5})")


class WorkdirError(ValueError):
    """A workdir file that cannot be used (unreadable, not finite, missing); the message names the file."""


def read_json(path, *, what):
    """A JSON file as a dict; a file that is not JSON is named in one line."""
    try:
        return json.loads(storage.read_text(path))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise WorkdirError(f"{path}: not a valid {what} (bad JSON: {error})") from None


def _identity(record):
    """A pseudo-label record without its path: the same folder moved (to gs://, renamed) is the same data."""
    return None if not isinstance(record, dict) else (record.get("fingerprint"), record.get("manifest_sha256"))


class Workdir(FoldModels):
    """A training workdir at `path`; all reads and writes of its files go through this object."""

    def __init__(self, path):
        self.path = str(path)

    def _file(self, *parts):
        return storage.join(self.path, *parts)

    # --- config.json ---

    def check_config(self, cfg):
        """True when config.json holds `cfg`, False when there is none; a different one is refused (a resume may
        change where it runs, not what it trains)."""
        path = self._file(CONFIG)
        if not storage.exists(path):
            return False
        old = self._read_config(path)
        # Where it runs may change between sessions (a preempted TPU resumed on another host); what it trains may not.
        if dataclasses.replace(old, tpu=cfg.tpu, device=cfg.device, backend=cfg.backend) != cfg:
            raise ValueError(f"{path} holds a different config; use a new --workdir (or delete it) to change it")
        return True

    def save_config(self, cfg):
        """Write config.json; resuming into a workdir trained with another config is refused."""
        if not self.check_config(cfg):
            storage.write_text(self._file(CONFIG), config_lib.to_json(cfg))

    def config(self):
        path = self._file(CONFIG)
        if not storage.exists(path):
            raise FileNotFoundError(f"{path}: not a training workdir (no config.json)")
        return self._read_config(path)

    @staticmethod
    def _read_config(path):
        try:
            return config_lib.from_json_doc(read_json(path, what="config file"))
        except WorkdirError:
            raise
        except ValueError as error:  # valid JSON, but not a config this code builds: the key is named, the file too
            raise WorkdirError(f"{path}: not a valid config file ({error})") from None

    # --- shards.json ---

    def bind_shards(self, folder, pseudo=None):
        """Record the shard folder this workdir trains on, and the pseudo-label folder (or none) its batches mix in;
        resuming (or skipping done folds) over different shards or pseudo-labels is refused: folds trained on other
        data would be mixed into one ensemble and one out-of-fold file."""
        path = self._file(SHARDS)
        mine = None if pseudo is None else {"path": pseudo.path, "fingerprint": pseudo.fingerprint,
                                            "manifest_sha256": pseudo.manifest_sha256}
        if storage.exists(path):
            old = self._trained_on(folder, hint="use a new --workdir (or the same shards) so folds are not mixed")
            before = old.get("pseudo")  # a record from before pseudo-labels has none: it trained without
            if _identity(before) != _identity(mine):
                was = f"pseudo-labels {before['path']}" if before else "no pseudo-labels"
                now = f"pseudo-labels {pseudo.path}" if pseudo else "none"
                raise WorkdirError(f"{path}: this workdir was trained with {was}, not {now}; use a new --workdir "
                                   "(or the same --pseudo) so folds are not mixed")
            return
        storage.write_text(path, json.dumps({"path": folder.path, "fingerprint": folder.fingerprint, "pseudo": mine},
                                            indent=2))

    def _trained_on(self, folder, *, hint):
        """shards.json's record, refused in one line (ending in `hint`) unless it names the ShardFolder `folder`."""
        path = self._file(SHARDS)
        old = read_json(path, what="shards record")
        if not isinstance(old, dict) or old.get("fingerprint") != folder.fingerprint:
            where = old.get("path") if isinstance(old, dict) else None
            raise WorkdirError(f"{path}: this workdir was trained on other shards ({where}), not {folder.path}; {hint}")
        return old

    def shards_record(self):
        """shards.json as a dict (path, fingerprint, pseudo), or None where train never wrote one."""
        path = self._file(SHARDS)
        if not storage.exists(path):
            return None
        record = read_json(path, what="shards record")
        if not isinstance(record, dict) or "fingerprint" not in record:
            raise WorkdirError(f"{path}: not a valid shards record (a JSON object with a fingerprint expected)")
        return record

    def check_shards(self, folder):
        """Refuse any ShardFolder but the one every fold was trained on (moved or renamed is the same: fingerprint)."""
        path = self._file(SHARDS)
        if not storage.exists(path):
            raise WorkdirError(f"{path}: missing: no record of the shards {self.path} was trained on (train writes it)")
        self._trained_on(folder, hint="give the shard folder this workdir was trained from")

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

    def checkpoint_manager(self, checkpoint, task, fold):
        """A tf.train.CheckpointManager over the fold's ckpt/ that never deletes: TensorFlow removes old checkpoints
        by glob, so a workdir named `runs/a*b` would delete `runs/aXb`'s. prune_checkpoints removes them by name."""
        import tensorflow as tf  # only training needs it; the rest of the workdir is host-side

        return tf.train.CheckpointManager(checkpoint, self.ckpt_dir(task, fold), max_to_keep=None)

    def tf_checkpoint(self, task, fold):
        """Whether the fold holds a TensorFlow-backend checkpoint (its `checkpoint` index file)."""
        return storage.exists(storage.join(self.ckpt_dir(task, fold), "checkpoint"))

    def state_path(self, task, fold):
        """The fold's JAX-backend training state (formats/fold_state.py)."""
        return storage.join(self.ckpt_dir(task, fold), fold_state.FILE)

    def prune_checkpoints(self, task, fold, latest):
        """Delete, by exact name from one literal listing, the fold's checkpoint files other than `latest`'s."""
        folder = self.ckpt_dir(task, fold)
        keep = posixpath.basename(str(latest))
        for name in storage.list_files(folder):
            m = _CKPT_FILE.fullmatch(name)
            if m and m[1] != keep:
                storage.remove(storage.join(folder, name))

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
        """Write the fold's out-of-fold arrays (formats/oof.py says what each task's are)."""
        oof_format.write(self.oof_path(task, fold), **arrays)

    def oof(self, task, fold):
        """The fold's out-of-fold arrays of `task`, checked (formats/oof.py)."""
        return oof_format.read(self.oof_path(task, fold), task)

    # --- best.weights.h5 ---

    def weights_path(self, task, fold):
        return storage.join(self.fold_dir(task, fold), WEIGHTS)

    def save_weights(self, model, task, fold):
        weights.save(model, self.weights_path(task, fold))

    def load_model(self, task, fold, *, strategy):
        """`task`'s model (a task object) built under `strategy` with the fold's best weights (scoring.ensemble)."""
        with strategy.scope():
            model = task.build_model(pretrained=False)
        self.load_weights(model, task.name, fold)
        return model

    def model_path(self, task, fold):
        """The file a fold's model comes from (what a resumed predict must find unchanged)."""
        return self.weights_path(task, fold)

    def load_weights(self, model, task, fold):
        """Load the fold's best weights into `model`; a missing, non-HDF5 or non-finite file is refused by name."""
        weights.load(model, self.weights_path(task, fold))

    # --- done.json ---

    def done_path(self, task, fold):
        return storage.join(self.fold_dir(task, fold), DONE)

    def done(self, task, fold):
        """The fold's done.json as a dict, or None while the fold is unfinished."""
        path = self.done_path(task, fold)
        return read_json(path, what="done marker") if storage.exists(path) else None

    def mark_done(self, task, fold, info):
        """Write done.json, but only over best weights that exist and are finite: done means usable."""
        weights.read_checked(self.weights_path(task, fold))
        storage.write_text(self.done_path(task, fold), json.dumps(info, indent=2))
        return info

    def completed_folds(self, task):
        """Fold numbers of `task` whose training finished (done.json present), sorted."""
        return [f for f in self.folds(task) if storage.exists(self.done_path(task, f))]

    # --- thresholds.json and tune/ ---

    def thresholds_path(self):
        return self._file(THRESHOLDS)

    def thresholds(self):
        """thresholds.json as a formats.thresholds.Thresholds, or None before tuning."""
        return thresholds_format.read_if_present(self.thresholds_path())

    def tune_dir(self):
        return self._file(TUNE)
