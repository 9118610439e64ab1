"""What a folder of trained fold models offers scoring, whether a training workdir or an exported kit's member."""

import abc


class FoldModels(abc.ABC):
    """One model set: its config, which folds of each task are complete, where each fold model comes from and how
    it loads. Workdir and kit.KitMember implement it; scoring.source.ModelSource holds one per member."""

    path: str

    def __str__(self):
        return self.path

    @abc.abstractmethod
    def config(self):
        """The training Config the models were built from."""

    @abc.abstractmethod
    def completed_folds(self, task):
        """Fold numbers of `task` with usable models, sorted."""

    @abc.abstractmethod
    def model_path(self, task, fold):
        """The file a fold model is loaded from."""

    @abc.abstractmethod
    def load_model(self, task, fold, *, strategy):
        """The fold's Keras model of `task` (a tasks.Task), built or loaded under `strategy`'s scope."""

    def identity(self, folds):
        """{task: [(file, bytes)]} of the fold models `folds` ({task: fold numbers}): what thresholds tuned on them
        and a resumed run must find unchanged."""
        from steel_tpu import storage

        return {task: [(p, storage.size(p)) for p in (self.model_path(task, f) for f in use)]
                for task, use in folds.items()}
