"""`make demo`: the main job end to end on the embedded synthetic data set, printing each stage's result."""

import argparse
import os
import shutil
import sys
import time

from steel_tpu import kaggle, metrics, synth
from steel_tpu.data.shards import build_shards
from steel_tpu.data.verify import verify


def _stage(title):
    print(f"\n== {title}", flush=True)
    return time.perf_counter()


def run(*, out, n_train=120, n_test=40, seed=0):
    data = os.path.join(out, "data")
    shutil.rmtree(out, ignore_errors=True)  # the demo always starts from scratch: its folder is its own
    t = _stage(f"synthesise {n_train} train + {n_test} test images -> {data}")
    print(synth.synthesize(data, n_train=n_train, n_test=n_test, seed=seed))
    print(f"   {time.perf_counter() - t:.1f}s")

    truth_path = os.path.join(data, "test_truth.csv")
    test_images = os.path.join(data, "test_images")
    test_ids = metrics.read_image_set(test_images)

    _stage("evaluate: the truth against itself")
    print(metrics.evaluate(pred_path=truth_path, truth_path=truth_path, images=test_images).format())

    _stage("evaluate: an all-empty submission (the baseline every model must beat)")
    empty_path = os.path.join(out, "submission_empty.csv")
    empty = kaggle.Labels(image_ids=tuple(test_ids), rles={i: ("",) * 4 for i in test_ids})
    kaggle.write_submission(empty_path, empty)
    print(metrics.evaluate(pred_path=empty_path, truth_path=truth_path, images=test_images).format())

    shards = os.path.join(out, "shards")
    t = _stage(f"shard the train images into 5 stratified folds -> {shards}")
    print(build_shards(data=data, out=shards, folds=5, seed=seed, shard_mb=1, progress=False))
    _stage("verify the shards byte for byte against the source")
    print(verify(shards, data=data))
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="demo_out")
    parser.add_argument("--train", type=int, default=120)
    parser.add_argument("--test", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    return run(out=args.out, n_train=args.train, n_test=args.test, seed=args.seed)


if __name__ == "__main__":
    sys.exit(main())
