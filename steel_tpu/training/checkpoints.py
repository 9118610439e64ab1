"""What a resumed fold restores (weights, optimizer slots, weight average, epoch, best score), one class per
backend behind one interface: restore() once, then best / set_best / save(epoch) after each epoch."""

import numpy as np
import tensorflow as tf

from steel_tpu import storage
from steel_tpu.formats import fold_state


def _other_backend(wd, task, fold, *, found, resume_with):
    return ValueError(f"{wd.ckpt_dir(task, fold)}: {task} fold {fold} was checkpointed under the {found} backend; "
                      f"resume it with --backend {resume_with}, or train into a new --workdir")


class _TFState(tf.Module):
    """The tf.train.Checkpoint's root; its attribute names are the checkpoint's layout."""

    def __init__(self, model, optimizer, average=None):
        super().__init__()
        self.model, self.optimizer = model, optimizer
        if average is not None:  # only then: checkpoints of runs without an average keep their layout
            self.average = average
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.best = tf.Variable(-np.inf, dtype=tf.float64, trainable=False)


class TFCheckpoint:
    """The TensorFlow backend's: a tf.train.Checkpoint in ckpt/, older ones pruned by exact name."""

    def __init__(self, wd, task, fold, *, model, optimizer, average):
        self.wd, self.task, self.fold = wd, task, fold
        self.state = _TFState(model, optimizer, average)
        self.manager = wd.checkpoint_manager(tf.train.Checkpoint(state=self.state), task, fold)

    def restore(self):
        """The epoch to start from (0 for a new fold)."""
        if storage.exists(self.wd.state_path(self.task, self.fold)):
            raise _other_backend(self.wd, self.task, self.fold, found="jax", resume_with="jax")
        if self.manager.latest_checkpoint:
            restored = tf.train.Checkpoint(state=self.state).restore(self.manager.latest_checkpoint)
            restored.assert_existing_objects_matched()
        return int(self.state.epoch.numpy())

    @property
    def best(self):
        return float(self.state.best.numpy())

    def set_best(self, score):
        self.state.best.assign(score)

    def save(self, epoch):
        """Record that `epoch` epochs are done, with everything a resume needs."""
        self.state.epoch.assign(epoch)
        self.wd.prune_checkpoints(self.task, self.fold, latest=self.manager.save())


class JaxCheckpoint:
    """The JAX backend's: ckpt/state.npz (formats/fold_state.py), replaced whole after each epoch."""

    def __init__(self, wd, task, fold, *, model, optimizer, average):
        self.wd, self.task, self.fold = wd, task, fold
        self.model, self.optimizer, self.average = model, optimizer, average
        self.best = -np.inf

    def restore(self):
        if self.wd.tf_checkpoint(self.task, self.fold):
            raise _other_backend(self.wd, self.task, self.fold, found="tf", resume_with="tf")
        if not storage.exists(self.wd.state_path(self.task, self.fold)):
            return 0
        counts = {"model": len(self.model.variables), "optimizer": len(self.optimizer.variables),
                  "average": 0 if self.average is None else len(self.average.shadow) + 1}
        arrays, epoch, self.best = fold_state.read(self.wd.state_path(self.task, self.fold), counts=counts)
        for variables, values in ((self.model.variables, arrays["model"]),
                                  (self.optimizer.variables, arrays["optimizer"])):
            for v, value in zip(variables, values):
                v.assign(value)
        if self.average is not None:
            *self.average.shadow, count = arrays["average"]
            self.average.count = count.astype(np.int32)
        return epoch

    def set_best(self, score):
        self.best = float(score)

    def save(self, epoch):
        average = [] if self.average is None else [*self.average.values(), np.asarray(self.average.count)]
        arrays = {"model": [np.asarray(v) for v in self.model.variables],
                  "optimizer": [np.asarray(v) for v in self.optimizer.variables], "average": average}
        fold_state.write(self.wd.state_path(self.task, self.fold), arrays=arrays, epoch=epoch, best=self.best)


def for_device(device, wd, task, fold, *, model, optimizer, average):
    """The checkpoint of `device`'s backend."""
    kind = JaxCheckpoint if device.backend == "jax" else TFCheckpoint
    return kind(wd, task, fold, model=model, optimizer=optimizer, average=average)
