"""`make demo`: the main job end to end on the embedded synthetic data set, printing each stage's result."""

import argparse
import json
import os
import shutil
import sys
import time

from steel_tpu import console


def _stage(title):
    print(f"\n== {title}", flush=True)


MARKER = ".steel_tpu_demo"  # written first into a demo's --out: later demos may clear only a folder holding it
_OWN = ("data", "shards", "work", "submission_empty.csv", "submission.csv", "submission.csv.parts",
        "submission.csv.errors.csv")


def _claim(out):
    """Start from scratch, deleting only what a previous demo wrote: --out must be new, empty or a demo's."""
    if os.path.lexists(out) and not os.path.isdir(out):
        raise ValueError(f"--out {out}: is a file, not a folder")
    if os.path.isdir(out) and os.listdir(out) and not os.path.exists(os.path.join(out, MARKER)):
        raise ValueError(f"--out {out}: holds files a demo did not write ({', '.join(sorted(os.listdir(out))[:10])})"
                         "; nothing was changed: give a new or empty folder")
    os.makedirs(out, exist_ok=True)
    open(os.path.join(out, MARKER), "w").close()
    for name in _OWN:
        path = os.path.join(out, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        elif os.path.lexists(path):
            os.remove(path)


def run(*, out, n_train=160, n_test=40, seed=0, overrides=()):
    # Imported here so that main() quiets TensorFlow's log lines before TensorFlow loads.
    from steel_tpu import config, metrics
    from steel_tpu.data import synth
    from steel_tpu.data.shards import build_shards
    from steel_tpu.data.verify import verify
    from steel_tpu.formats import kaggle
    from steel_tpu.scoring import predict
    from steel_tpu.training import train
    from steel_tpu.tuning.tune import tune

    start = time.perf_counter()
    _claim(out)
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
    tune(workdir=work)

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
    parser.add_argument("--verbose", action="store_true", help="show TensorFlow's C++ log lines")
    args = parser.parse_args(argv)
    console.quiet_tensorflow(verbose=args.verbose)
    if not args.verbose:
        console.drop_native_logs()
    return run(out=args.out, n_train=args.train, n_test=args.test, seed=args.seed, overrides=args.set)


if __name__ == "__main__":
    sys.exit(main())
