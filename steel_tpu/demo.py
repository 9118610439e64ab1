"""`make demo`: the main job end to end on the embedded synthetic data set, printing each stage's result."""

import argparse
import json
import os
import shutil
import sys
import time

from steel_tpu import config, kaggle, metrics, predict, synth, train, tune
from steel_tpu.data.shards import build_shards
from steel_tpu.data.verify import verify


def _stage(title):
    print(f"\n== {title}", flush=True)


def run(*, out, n_train=160, n_test=40, seed=0, overrides=()):
    start = time.perf_counter()
    shutil.rmtree(out, ignore_errors=True)  # the demo always starts from scratch: its folder is its own
    data, shards, work = (os.path.join(out, name) for name in ("data", "shards", "work"))
    truth_path = os.path.join(data, "test_truth.csv")
    test_images = os.path.join(data, "test_images")

    _stage(f"synthesise {n_train} train + {n_test} test images (Kaggle layout) -> {data}")
    print(json.dumps(synth.synthesize(data, n_train=n_train, n_test=n_test, seed=seed)))

    _stage("evaluate: the truth against itself")
    print(metrics.evaluate(pred_path=truth_path, truth_path=truth_path, images=test_images).format())
    _stage("evaluate: an all-empty submission (the baseline every model must beat)")
    test_ids = metrics.read_image_set(test_images)
    empty_path = os.path.join(out, "submission_empty.csv")
    kaggle.write_submission(empty_path, kaggle.Labels(image_ids=tuple(test_ids), rles={i: ("",) * 4 for i in test_ids}))
    empty = metrics.evaluate(pred_path=empty_path, truth_path=truth_path, images=test_images)
    print(empty.format())

    _stage(f"shard the train images into 5 stratified folds -> {shards}")
    print(build_shards(data=data, out=shards, folds=5, seed=seed, shard_mb=1, progress=False))
    _stage("verify the shards byte for byte against the source")
    print(verify(shards, data=data))

    cfg = config.apply_overrides(config.preset("tiny"), list(overrides))
    _stage(f"train the classifier and the segmenter on fold 0 (config {cfg.name!r}) -> {work}")
    train.run(shards=shards, workdir=work, cfg=cfg, folds=(0,))

    _stage("tune thresholds, minimum areas and the classifier gate on the out-of-fold predictions")
    tune.tune(workdir=work)

    submission = os.path.join(out, "submission.csv")
    _stage(f"predict the {n_test} test images -> {submission}")
    predict.predict(workdir=work, images=test_images, out=submission, progress=False)

    _stage("evaluate the submission against the test truth")
    scored = metrics.evaluate(pred_path=submission, truth_path=truth_path, images=test_images)
    print(f"model      {scored.format()}")
    print(f"all-empty  {empty.format()}")
    print(f"\ndemo done in {time.perf_counter() - start:.0f}s; everything is under {out}/")
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="demo_out")
    parser.add_argument("--train", type=int, default=160)
    parser.add_argument("--test", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config overrides")
    args = parser.parse_args(argv)
    return run(out=args.out, n_train=args.train, n_test=args.test, seed=args.seed, overrides=args.set)


if __name__ == "__main__":
    sys.exit(main())
