"""A really trained tiny workdir (2 folds x {classify, segment}, 1 epoch, 2 steps), shared by test modules."""

import dataclasses
import os

from steel_tpu import config as config_lib
from steel_tpu import train
from steel_tpu.data import shards
from steel_tpu.synth import synthesize


def trained_workdir(base):
    """(synthetic data folder, workdir) under `base`; a second call finds the folds done and trains nothing."""
    data = os.path.join(base, "trained_data")
    if not os.path.exists(os.path.join(data, "train.csv")):
        synthesize(data, n_train=32, n_test=0, seed=5)
    shard_dir = os.path.join(data, "shards")
    if not os.path.exists(os.path.join(shard_dir, "manifest.json")):
        shards.build_shards(data=data, out=shard_dir, folds=2, shard_mb=0.3, progress=False)
    cfg = config_lib.tiny()
    cfg.folds = (0, 1)
    for task in (cfg.classify, cfg.segment):
        task.train = dataclasses.replace(task.train, epochs=1, steps_per_epoch=2)
    work = os.path.join(data, "work")
    train.run(data=shard_dir, work=work, cfg=cfg, folds=(0, 1))
    return data, work
