"""What a config means on a slice of R replicas: its global batches, learning rates and steps per execution.

The user's config (the workdir's config.json) says per replica what fits one core, and at which global batch
(`reference_batch`) its learning rate and steps per execution were chosen. `resolve_for` turns it into the concrete
config one run trains with, once per run; the run records `summary` of it in the workdir (Workdir.add_run).

- global batch = batch_per_replica x replicas (or a fixed batch_size, split over the replicas).
- learning rate x sqrt(global / reference_batch): the square-root rule for Adam (Malladi et al., "On the SDEs and
  Scaling Rules for Adaptive Gradient Algorithms", NeurIPS 2022). The linear rule (Goyal et al. 2017) is SGD's: it
  would move Adam's step size 8x between a v5e-1 and a v5e-8, where the sqrt rule moves it 2.8x.
- steps per execution x reference_batch / global: the same number of images a host call on every slice, so the
  host round trips cost the same share of the time, and the epoch (whole calls, train.py) is cut at the same
  granularity on one chip as on 64.
"""

import dataclasses
import math

from steel_tpu.config.schema import TASKS, Config


def global_batch(data, *, replicas):
    """The global batch of a DataConfig on `replicas` replicas; a fixed batch_size must split evenly over them."""
    if data.batch_per_replica is not None:
        return data.batch_per_replica * replicas
    if data.batch_size % replicas:
        raise ValueError(f"batch_size={data.batch_size} does not split over {replicas} replicas: set a multiple of "
                         f"{replicas}, or batch_per_replica instead")
    return data.batch_size


def _task(tcfg, *, replicas, where):
    try:
        batch = global_batch(tcfg.data, replicas=replicas)
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None
    t = tcfg.train
    lr, spe = t.learning_rate, t.steps_per_execution
    if t.reference_batch is not None:
        lr = t.learning_rate * math.sqrt(batch / t.reference_batch)
        spe = max(1, round(t.steps_per_execution * t.reference_batch / batch))
    try:
        return dataclasses.replace(
            tcfg, data=dataclasses.replace(tcfg.data, batch_size=batch, batch_per_replica=None),
            train=dataclasses.replace(t, learning_rate=lr, steps_per_execution=spe, reference_batch=None))
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None


def resolve_for(cfg: Config, *, replicas: int) -> Config:
    """The concrete config of a run on `replicas` replicas: fixed global batches (batch_per_replica None), learning
    rates and steps per execution as used, reference_batch None. Everything else is `cfg`'s."""
    if replicas < 1:
        raise ValueError(f"replicas={replicas}: must be >= 1")
    return dataclasses.replace(cfg, **{task: _task(getattr(cfg, task), replicas=replicas, where=task)
                                       for task in TASKS})


def summary(resolved: Config, *, replicas: int) -> dict:
    """What a run records about its resolution: {"replicas", task: {global_batch, batch_per_replica,
    learning_rate, steps_per_execution}}."""
    out = {"replicas": replicas}
    for task in TASKS:
        t = getattr(resolved, task)
        out[task] = {"global_batch": t.data.batch_size, "batch_per_replica": t.data.batch_size // replicas,
                     "learning_rate": t.train.learning_rate, "steps_per_execution": t.train.steps_per_execution}
    return out


def changes(before: dict, after: dict) -> list:
    """Lines saying how `after` (a summary) differs from `before`: what a resumed run on another slice prints."""
    lines = []
    for task in TASKS:
        old, new = before.get(task) or {}, after[task]
        if old and old.get("global_batch") != new["global_batch"]:
            lines.append(f"{task}: global batch {old['global_batch']} -> {new['global_batch']} "
                         f"({before.get('replicas')} -> {after['replicas']} replicas), learning rate "
                         f"{old.get('learning_rate', 0):.3g} -> {new['learning_rate']:.3g}, steps per execution "
                         f"{old.get('steps_per_execution')} -> {new['steps_per_execution']}")
    return lines
