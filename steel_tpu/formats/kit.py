"""The one owner of an exported kit folder (`steel-tpu export`): its file names, and reading its model sets.

One workdir's kit (format 1):
```
KIT/kit.json                        format, package wheel, fold models per task, where they came from
KIT/config.json                     the training config (the workdir's, as the user wrote it)
KIT/models/{task}_fold{k}.keras     the fold models, Keras-native (custom layers registered by steel_tpu.models)
KIT/thresholds.json                 tune's thresholds
KIT/steel_tpu-V-py3-none-any.whl    this package
KIT/score.py                        scores a folder of test images into submission.csv, offline
```
An ensemble's or a system's kit (format 2) holds one folder per member, `KIT/<member>/config.json` and
`KIT/<member>/models/...`; kit.json lists the members with the workdir each came from and the identity of its fold
models there, and the workdirs its thresholds were tuned for (what the ensemble's thresholds.json records).
`predict --workdir KIT` (and KIT/score.py, which runs it) reads a kit where it would read the workdirs
(scoring.source.ModelSource).
"""

import os
import re
import tempfile

from steel_tpu import config as config_lib
from steel_tpu import storage
from steel_tpu.formats.fold_models import FoldModels
from steel_tpu.formats.workdir import WorkdirError, read_json

FORMATS = (1, 2)  # 1: one model set at the root; 2: one folder per member
KIT_JSON, CONFIG, THRESHOLDS, MODELS, SCORE = "kit.json", "config.json", "thresholds.json", "models", "score.py"
_MEMBER = re.compile(r"[a-z][a-z0-9_-]{0,31}")  # a member's folder: never a path or a pattern


def model_name(task, fold):
    return f"{task}_fold{int(fold)}.keras"


def is_kit(path):
    return isinstance(path, (str, os.PathLike)) and storage.exists(storage.join(str(path), KIT_JSON))


def check_member_name(name, *, where):
    if not isinstance(name, str) or not _MEMBER.fullmatch(name):
        raise WorkdirError(f"{where}: member name {name!r} must be lowercase letters, digits, - and _")
    return name


class KitMember(FoldModels):
    """One model set of a kit: its config and `.keras` fold models under `path` (the kit, or its member folder)."""

    def __init__(self, path, *, models, identity=None):
        self.path = str(path)
        self.models = {task: sorted(int(f) for f in folds) for task, folds in models.items()}
        self._identity = identity  # format 2: {task: {fold: (weights path, bytes)}} in the source workdir

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
        return storage.join(self.path, MODELS, model_name(task, fold))

    def identity(self, folds):
        """The fold models' identity in the workdir they came from (format 2: what an ensemble's thresholds record),
        else the kit's own files."""
        if self._identity is None:
            return super().identity(folds)
        return {task: [tuple(self._identity[task][str(f)]) for f in use] for task, use in folds.items()}

    def load_model(self, task, fold, *, strategy):
        """The fold's `.keras` model of `task` (a task object), loaded under `strategy`'s scope."""
        import steel_tpu.models  # noqa: F401 - registers the custom layers the files name
        from steel_tpu.keras_api import keras

        path = self.model_path(task.name, fold)
        with tempfile.TemporaryDirectory() as tmp:
            local = os.path.join(tmp, model_name(task.name, fold))
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

    def __str__(self):
        return self.path

    def thresholds_path(self):
        return storage.join(self.path, THRESHOLDS)

    def tuned_for(self):
        """The normalized workdirs the kit's thresholds were tuned for (format 2), else None (one workdir's kit)."""
        if self.info["format"] == 1:
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
            if self.info["format"] == 1:
                return (KitMember(self.path, models=self.info["models"]),)
            return tuple(KitMember(storage.join(self.path, check_member_name(m["name"], where=where)),
                                   models=m["models"], identity=m["identity"])
                         for m in self.info["members"])
        except (KeyError, TypeError, AttributeError, ValueError) as error:
            raise WorkdirError(f"{where}: not a valid kit description ({type(error).__name__}: {error})") from None
