"""Shard building on Beam: scan, validate and assign folds once (a global step), write one shard per task,
then the manifest, all through the single-machine builder's own functions (steel_tpu.data.shards)."""

import time

import apache_beam as beam

from steel_tpu.beam.options import pipeline_options
from steel_tpu.data import shards
from steel_tpu.data import manifest as manifest_lib


def build_shards(*, data, out, runner, pipeline_flags=(), folds=5, seed=0, shard_mb=100.0, split="train",
                 workers=None, overwrite=False, skip_bad=False):
    """`steel-tpu shards` on `runner`: the same folder (shards, manifest) as shards.build_shards; returns Summary."""
    start = time.perf_counter()
    options = pipeline_options(runner, pipeline_flags)  # a bad flag fails before the folder is touched
    build = shards.plan_build(data=data, out=out, folds=folds, seed=seed, shard_mb=shard_mb, split=split,
                              workers=workers, overwrite=overwrite, skip_bad=skip_bad)
    with beam.Pipeline(options=options) as p:
        _ = (p
             | "Plan" >> beam.Create(build.todo)
             | "Spread" >> beam.Reshuffle()  # one shard per worker task, not one worker for the whole Create
             | "WriteShard" >> beam.Map(shards.write_shard, build=build)
             | "Entries" >> beam.combiners.ToList()
             | "WriteManifest" >> beam.Map(lambda written, b: shards.finish_build(b, written) and None, b=build))
    _, manifest = manifest_lib.read(out)  # written by a worker: the launcher reads it back
    return shards.summarize(build, manifest, seconds=time.perf_counter() - start)
