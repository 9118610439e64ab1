"""Learning, measured: train the `tiny` classifier and UNet++ (plaincnn) on the synthetic set, score the held-out fold.

    python benchmarks/bench_train.py [--train 500] [--classify-epochs 6] [--segment-epochs 8] [--heads multilabel]
                                     [--height 128] [--width 800] [--folds 0] [--out DIR] [--smoke]

Prints the held-out Kaggle Dice with predict's default thresholds (pixel 0.5, no minimum area, no gate) and with
a 0.5 gate on the classifier, next to the all-empty baseline on the same images, and the training images/s of
both models, and the host memory after each fold and task (resident, and the process's peak: it must not grow
with folds). Target: Dice >= 0.92 and >= the empty baseline + 0.10, within 20 minutes on a 2-core CPU.
"""

import argparse
import os
import shutil
import tempfile
import time

import numpy as np

from steel_tpu import config, memory, postprocess, tasks, train
from steel_tpu.data.shard_folder import MANIFEST
from steel_tpu.workdir import Workdir
from steel_tpu.data.shards import build_shards
from steel_tpu.synth import synthesize


def gated_dice(seg, cls, *, gate):
    """Full-resolution Dice per (image, class) after the classifier gate, with predict's rule (postprocess.gate_kept):
    a binary head empties the whole image below the gate, a multilabel head each class below it."""
    order = {i: k for k, i in enumerate(cls["image_ids"])}
    probs = cls["probs"][[order[i] for i in seg["image_ids"]]]
    kept = np.broadcast_to(postprocess.gate_kept(probs, gate), seg["dice"].shape)
    empty_truth = seg["truth_area"] == 0
    return np.where(kept, seg["dice"], empty_truth.astype(float))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=int, default=500, help="synthetic images; 4/5 train, 1/5 held out")
    parser.add_argument("--classify-epochs", type=int, default=6)
    parser.add_argument("--segment-epochs", type=int, default=8)
    parser.add_argument("--heads", default="multilabel", choices=("binary", "multilabel"),
                        help="classifier head: gate every class at once, or each class on its own")
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=800)
    parser.add_argument("--folds", default="0", help="held-out folds to train, e.g. 0,1,2 (Dice is the first one's)")
    parser.add_argument("--out", default=None, help="keep the data and workdir here (default: a temp dir)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: proves the benchmark runs (tests use it)")
    args = parser.parse_args(argv)
    steps = []
    if args.smoke:
        args.train, args.classify_epochs, args.segment_epochs, args.height, args.width = 20, 1, 1, 32, 160
        steps = ["classify.train.steps_per_epoch=1", "segment.train.steps_per_epoch=1"]
    folds = tuple(int(f) for f in args.folds.split(","))

    root = args.out or tempfile.mkdtemp(prefix="bench_train_")
    data, shards, work = (os.path.join(root, n) for n in ("data", "shards", "work"))
    shutil.rmtree(work, ignore_errors=True)
    if not os.path.exists(os.path.join(shards, MANIFEST)):
        shutil.rmtree(data, ignore_errors=True)
        synthesize(data, n_train=args.train, n_test=0, seed=0)
        build_shards(data=data, out=shards, folds=5, seed=0, shard_mb=8, progress=False)

    size = [f"{task}.data.image_height={args.height}" for task in ("classify", "segment")]
    size += [f"{task}.data.image_width={args.width}" for task in ("classify", "segment")]
    # The segmenter trains on 128x384 crops and is validated on whole images; the classifier sees whole images
    # (a global average over a crop would not match one over the whole image).
    crops = [f"segment.augment.crop_height={min(args.height, 128)}",
             f"segment.augment.crop_width={min(args.width, 384)}"]
    cfg = config.apply_overrides(config.preset("tiny"), size + crops + [
        f"classify.train.epochs={args.classify_epochs}", f"segment.train.epochs={args.segment_epochs}",
        f"classify.model.heads={args.heads}", "classify.data.batch_per_replica=16",
        "segment.data.batch_per_replica=8", *steps,
    ])
    start = time.perf_counter()
    train.run(shards=shards, workdir=work, cfg=cfg, folds=folds)
    minutes = (time.perf_counter() - start) / 60

    wd = Workdir(work)
    seg, cls = wd.oof("segment", folds[0]), wd.oof("classify", folds[0])
    gated = gated_dice(seg, cls, gate=0.5)
    empty = (seg["truth_area"] == 0).astype(float)
    rates = {}
    for task in tasks.NAMES:
        speeds = [row["train_images_per_s"] for row in wd.read_log(task, folds[0])]
        rates[task] = float(np.median(speeds[1:] or speeds))  # the first epoch includes the XLA compile

    print(f"held-out fold: {len(seg['image_ids'])} images, trained on the other 4 folds at {args.height}x{args.width}")
    # predict's defaults (postprocess.PostProcess(): pixel 0.5, no minimum area, no gate) are what a workdir
    # scores with before `tune` has chosen a gate; the gated line shows what a 0.5 gate on the classifier would do.
    for name, d in (("default thresholds (pixel 0.5)", seg["dice"]), ("with classifier gate 0.5", gated)):
        print(f"Kaggle Dice, {name:31s} {d.mean():.4f}  margin over empty {d.mean() - empty.mean():+.4f}  per class "
              + " ".join(f"{v:.4f}" for v in d.mean(axis=0)))
    print(f"all-empty baseline                        {empty.mean():.4f}  (target: Dice >= 0.92 and margin >= +0.10)")
    print(f"training images/s: classifier {rates['classify']:.1f}, segmenter {rates['segment']:.1f} "
          f"(median epoch after the first); wall time {minutes:.1f} min")
    # The last epoch's row of each fold and task, in training order: flat resident memory means nothing leaks.
    after = [(f, t, wd.read_log(t, f)[-1]["rss_mb"]) for f in folds for t in tasks.NAMES]
    print("host memory, resident MB after each fold's last epoch: "
          + ", ".join(f"{t} fold {f} {mb:.0f}" for f, t, mb in after)
          + f"; peak {memory.peak_rss_mb():.0f} MB")


if __name__ == "__main__":
    main()
