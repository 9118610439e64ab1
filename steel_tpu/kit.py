"""The one owner of an exported kit folder (`steel-tpu export`): its file names, and reading it like a workdir.

```
KIT/kit.json                        what the kit holds: format, package wheel, fold models per task, its source
KIT/config.json                     the training config (the workdir's, as the user wrote it)
KIT/thresholds.json                 tune's thresholds
KIT/models/{task}_fold{k}.keras     the fold models, Keras-native (custom layers registered by steel_tpu.models)
KIT/steel_tpu-V-py3-none-any.whl    this package
KIT/score.py                        scores a folder of test images into submission.csv, offline
```
`predict --workdir KIT` (and KIT/score.py, which runs it) reads a kit where it would read a workdir.
"""

import os
import tempfile

from steel_tpu import config as config_lib
from steel_tpu import storage
from steel_tpu.workdir import Workdir, WorkdirError, read_json, read_thresholds

FORMAT = 1
KIT_JSON, CONFIG, THRESHOLDS, MODELS, SCORE = "kit.json", "config.json", "thresholds.json", "models", "score.py"


def model_name(task, fold):
    return f"{task}_fold{int(fold)}.keras"


def is_kit(path):
    return storage.exists(storage.join(str(path), KIT_JSON))


def open_models(path):
    """What predict reads models, config and thresholds from: a Kit when `path` holds kit.json, else a Workdir."""
    return Kit(path) if is_kit(path) else Workdir(path)


class Kit:
    """An exported kit at `path`, read through the methods predict and ensemble use on a Workdir."""

    def __init__(self, path):
        self.path = str(path)
        self.info = read_json(self._file(KIT_JSON), what="kit description")
        if self.info.get("format") != FORMAT:
            raise WorkdirError(f"{self._file(KIT_JSON)}: kit format {self.info.get('format')!r}, this steel_tpu "
                               f"reads format {FORMAT}: score it with the wheel inside the kit")

    def __str__(self):
        return self.path

    def _file(self, *parts):
        return storage.join(self.path, *parts)

    def config(self):
        return config_lib.from_dict(read_json(self._file(CONFIG), what="config file"))

    def completed_folds(self, task):
        return sorted(int(f) for f in self.info["models"].get(task, []))

    def thresholds_path(self):
        return self._file(THRESHOLDS)

    def thresholds(self):
        path = self.thresholds_path()
        return read_thresholds(path) if storage.exists(path) else None

    def model_path(self, task, fold):
        return self._file(MODELS, model_name(task, fold))

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
