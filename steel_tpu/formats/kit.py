"""The one owner of an exported kit folder (`steel-tpu export`): its file names, and reading its model sets.

One workdir's kit (format 3):
```
KIT/kit.json                            format, package wheel, fold models per task, where they came from
KIT/config.json                         the training config (the workdir's, as the user wrote it)
KIT/models/{task}_fold{k}.weights.h5    the fold models' weights: the wheel's own builders make the models
KIT/thresholds.json                     tune's thresholds
KIT/steel_tpu-V-py3-none-any.whl        this package
KIT/score.py                            scores a folder of test images into submission.csv, offline
```
An ensemble's or a system's kit (format 4) holds one folder per member, `KIT/<member>/config.json` and
`KIT/<member>/models/...`; kit.json lists the members with the workdir each came from and the identity of its fold
models there, and the workdirs its thresholds were tuned for (what the ensemble's thresholds.json records).

Weights, not `.keras` files: a `.keras` file holds Keras' serialised model graph, which an older Keras cannot read
(Keras 3.13, Kaggle's and Colab's, refuses what 3.15 writes); HDF5 weights loaded into the package's own builders
cross Keras versions and backends. Formats 1 and 2 (the same layouts with `{task}_fold{k}.keras` models) still read.
`predict --workdir KIT` (and KIT/score.py, which runs it) reads a kit where it would read the workdirs
(scoring.source.ModelSource).
"""

import os
import posixpath
import re
import tempfile

from steel_tpu import config as config_lib
from steel_tpu import storage
from steel_tpu.formats.fold_models import FoldModels
from steel_tpu.formats.workdir import WorkdirError, read_json

# format -> (one model set at the root, or one folder per member; model files): 3 and 4 are what export writes.
FORMATS = {1: ("root", "keras"), 2: ("members", "keras"), 3: ("root", "weights"), 4: ("members", "weights")}
WRITTEN = {"root": 3, "members": 4}
KIT_JSON, CONFIG, THRESHOLDS, MODELS, SCORE = "kit.json", "config.json", "thresholds.json", "models", "score.py"
_MEMBER = re.compile(r"[a-z][a-z0-9_-]{0,31}")  # a member's folder: never a path or a pattern


def model_name(task, fold, *, files="weights"):
    return f"{task}_fold{int(fold)}" + {"weights": ".weights.h5", "keras": ".keras"}[files]


def is_kit(path):
    return isinstance(path, (str, os.PathLike)) and storage.exists(storage.join(str(path), KIT_JSON))


def check_member_name(name, *, where):
    if not isinstance(name, str) or not _MEMBER.fullmatch(name):
        raise WorkdirError(f"{where}: member name {name!r} must be lowercase letters, digits, - and _")
    return name


class KitMember(FoldModels):
    """One model set of a kit: its config and fold models under `path` (the kit, or its member folder)."""

    def __init__(self, path, *, models, identity=None, files="weights"):
        self.path, self.files = str(path), files
        self.models = {task: sorted(int(f) for f in folds) for task, folds in models.items()}
        self._identity = identity  # formats 2, 4: {task: {fold: (weights path, bytes)}} in the source workdir

    def config(self):
        path = storage.join(self.path, CONFIG)
        try:
            return config_lib.from_json_doc(read_json(path, what="config file"))
        except WorkdirError:
            raise
        except ValueError as error:
            raise WorkdirError(f"{path}: not a valid config file ({error})") from None

    def completed_folds(self, task):
        return list(self.models.get(task, []))

    def model_path(self, task, fold):
        return storage.join(self.path, MODELS, model_name(task, fold, files=self.files))

    def identity(self, folds):
        """The fold models' identity in the workdir they came from (formats 2, 4: what an ensemble's thresholds record),
        else the kit's own files."""
        if self._identity is None:
            return super().identity(folds)
        return {task: [tuple(self._identity[task][str(f)]) for f in use] for task, use in folds.items()}

    def load_model(self, task, fold, *, strategy):
        """The fold's model of `task` (a task object), built under `strategy`'s scope: the task's own builder with
        the kit's weights (formats 3, 4), or a `.keras` file as it is (formats 1, 2)."""
        path = self.model_path(task.name, fold)
        if self.files == "weights":
            from steel_tpu.formats import weights

            with strategy.scope():
                model = task.build_model(pretrained=False)
            weights.load(model, path)
            return model
        import steel_tpu.models  # noqa: F401 - registers the custom layers the files name
        from steel_tpu.keras_api import keras

        with tempfile.TemporaryDirectory() as tmp:
            local = os.path.join(tmp, posixpath.basename(path))
            with open(local, "wb") as f:
                f.write(storage.read_bytes(path))
            try:
                with strategy.scope():
                    return keras.saving.load_model(local, compile=False)
            except (ValueError, TypeError, KeyError, OSError) as error:
                raise WorkdirError(f"{path}: not a loadable Keras model ({type(error).__name__}: "
                                   f"{str(error).splitlines()[0] if str(error) else ''})") from None


class Kit:
    """An exported kit at `path`: its description, its thresholds file and its model sets (members)."""

    def __init__(self, path):
        self.path = str(path).rstrip("/") or str(path)
        where = storage.join(self.path, KIT_JSON)
        self.info = read_json(where, what="kit description")
        if not isinstance(self.info, dict) or self.info.get("format") not in FORMATS:
            found = self.info.get("format") if isinstance(self.info, dict) else None
            raise WorkdirError(f"{where}: kit format {found!r}, this steel_tpu reads formats {list(FORMATS)}: score "
                               "it with the wheel inside the kit")
        self.layout, self.files = FORMATS[self.info["format"]]

    def __str__(self):
        return self.path

    def thresholds_path(self):
        return storage.join(self.path, THRESHOLDS)

    def tuned_for(self):
        """The normalized workdirs the kit's thresholds were tuned for (format 2), else None (one workdir's kit)."""
        if self.layout == "root":
            return None
        try:
            return tuple(str(p) for p in self.info["tuned_for"])
        except (KeyError, TypeError) as error:
            raise WorkdirError(f"{storage.join(self.path, KIT_JSON)}: not a valid kit description (tuned_for: "
                               f"{type(error).__name__})") from None

    def members(self):
        """The kit's model sets: one KitMember (format 1), or one per member folder (format 2)."""
        where = storage.join(self.path, KIT_JSON)
        try:
            if self.layout == "root":
                return (KitMember(self.path, models=self.info["models"], files=self.files),)
            return tuple(KitMember(storage.join(self.path, check_member_name(m["name"], where=where)),
                                   models=m["models"], identity=m["identity"], files=self.files)
                         for m in self.info["members"])
        except (KeyError, TypeError, AttributeError, ValueError) as error:
            raise WorkdirError(f"{where}: not a valid kit description ({type(error).__name__}: {error})") from None
