"""Images/s of an exported kit's score.py (a new process, as on Kaggle) against `steel-tpu predict` on the workdir
it came from, same models and images; and the projected time for Kaggle's 5,506 test images.

    .venv/bin/python benchmarks/bench_kit.py [--images 16] [--folds 5] [--config colab-tpu] [--smoke]

Models: the preset's classifiers and segmenters, random init (speed only), --folds folds of each, gated (a gate of
0 per classifier head: every classifier runs, nothing is dropped), scored at the preset's resolution on whatever
device the host has (`--device auto`). score.py runs twice, on --images and on twice as many: the difference is
the time per image, the rest the process's fixed cost (Python, TensorFlow, loading the models), so
projected = fixed + 5,506 x per image. The baseline (`predict` in this process, on the larger set) gives the ratio:
the kit should score as fast as the workdir it came from.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from steel_tpu import config as config_lib  # noqa: E402
from steel_tpu import postprocess, tasks  # noqa: E402
from steel_tpu.constants import NUM_CLASSES  # noqa: E402
from steel_tpu.data import synth
from steel_tpu.formats import kit
from steel_tpu.formats.workdir import Workdir  # noqa: E402
from steel_tpu.scoring import export, predict

KAGGLE_TEST_IMAGES = 5506


def _workdir(work, *, cfg, folds):
    """A tuned-looking workdir of random-init fold models, saved exactly as training saves them."""
    cfg.folds = tuple(range(max(folds, 2)))
    wd = Workdir(work)
    wd.save_config(cfg)
    for task in tasks.NAMES:
        for fold in range(folds):
            model = tasks.make(task, cfg).build_model(pretrained=False)
            wd.save_weights(model, task, fold)
            wd.mark_done(task, fold, {"task": task})
    heads = 1 if cfg.classify.model.heads == "binary" else NUM_CLASSES
    with open(wd.thresholds_path(), "w") as f:
        json.dump(postprocess.PostProcess(gate=(0.0,) * heads).to_dict(), f)


def _score(kit_dir, images, out):
    """Wall seconds of score.py in a new process on `images` (a folder)."""
    # steel_tpu from the kit's own wheel (a zip on the path), ahead of any steel_tpu this venv has installed.
    env = {**os.environ, "PYTHONPATH": os.path.join(kit_dir, export.wheel_name())}
    start = time.perf_counter()
    subprocess.run([sys.executable, os.path.join(kit_dir, kit.SCORE), "--images", images, "--out", out],
                   check=True, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16, help="images of the smaller run (the larger has twice)")
    parser.add_argument("--folds", type=int, default=5, help="fold models per task")
    parser.add_argument("--config", default="colab-tpu", choices=sorted(config_lib.PRESETS))
    parser.add_argument("--smoke", action="store_true", help="tiny config, 4 + 8 images, 1 fold (the test's size)")
    args = parser.parse_args()
    if args.smoke:
        args.images, args.folds, args.config = 4, 1, "tiny"
    root = tempfile.mkdtemp(prefix="steel_bench_kit_")
    try:
        small, large = os.path.join(root, "small"), os.path.join(root, "large")
        synth.synthesize(large, n_train=0, n_test=2 * args.images, seed=5)
        os.makedirs(os.path.join(small, "test_images"))
        for name in sorted(os.listdir(os.path.join(large, "test_images")))[:args.images]:
            shutil.copy(os.path.join(large, "test_images", name), os.path.join(small, "test_images", name))
        work, kit_dir = os.path.join(root, "work"), os.path.join(root, "kit")
        _workdir(work, cfg=config_lib.preset(args.config), folds=args.folds)
        export.export(workdir=work, out=kit_dir)

        start = time.perf_counter()
        predict.predict(workdir=work, images=os.path.join(large, "test_images"), out=os.path.join(root, "ref.csv"),
                        progress=False)
        baseline = time.perf_counter() - start
        t_small = _score(kit_dir, os.path.join(small, "test_images"), os.path.join(root, "small.csv"))
        t_large = _score(kit_dir, os.path.join(large, "test_images"), os.path.join(root, "large.csv"))
        with open(os.path.join(root, "ref.csv"), "rb") as a, open(os.path.join(root, "large.csv"), "rb") as b:
            same = a.read() == b.read()
        per_image = max(t_large - t_small, 1e-9) / args.images
        fixed = max(t_small - args.images * per_image, 0.0)
        projected = fixed + KAGGLE_TEST_IMAGES * per_image
        result = {
            "config": args.config, "folds_per_task": args.folds, "images": [args.images, 2 * args.images],
            "score_py_seconds": [round(t_small, 1), round(t_large, 1)],
            "score_py_images_per_s": round(1 / per_image, 2), "score_py_fixed_seconds": round(fixed, 1),
            "predict_in_process_images_per_s_incl_model_load": round(2 * args.images / baseline, 2),
            "ratio_kit_vs_predict_same_images": round(baseline / t_large, 2), "same_csv_bytes": same,
            "projected_minutes_for_5506": round(projected / 60, 1),
        }
        print(json.dumps(result, indent=1))
        return 0 if same else 1
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
