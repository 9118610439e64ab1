"""One object per task (classify, segment) owning its model, targets, loss, augment, forward and validation."""

from steel_tpu.tasks.base import Task
from steel_tpu.tasks.classify import Classify
from steel_tpu.tasks.segment import Segment

TASKS = {"classify": Classify, "segment": Segment}
NAMES = tuple(TASKS)  # the order training runs them in, and the seed offset of each

__all__ = ["NAMES", "TASKS", "Classify", "Segment", "Task", "make"]


def make(name, cfg):
    """The task object `name` for a run Config (its ClassifyConfig or SegmentConfig and the run-wide OOF scale)."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}: choose from {NAMES}")
    return TASKS[name](getattr(cfg, name), oof_scale=cfg.oof_scale)
