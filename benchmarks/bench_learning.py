"""Learning over seeds: the `tiny` segmenter trained with each option on (one at a time) and off, scored per class
on a held-out fold of the synthetic set beside the all-empty baseline.

    python benchmarks/bench_learning.py [--seeds 3] [--train 200] [--epochs 30] [--height 64] [--width 320]
        [--options baseline,defect_crop,ema,pos_weight,bce_only,lovasz,wide_decoder,softmax,efficientnetb0]
        [--smoke] [--out DIR]

An option joined with "+" (e.g. defect_crop+ema) is one run with both on.

Every run trains the segmenter of the `tiny` preset (with the size and epochs given) on folds 1-4 and validates on
fold 0; its held-out Dice is what `train` keeps for the best epoch, at full resolution with pixel threshold 0.5, no
minimum area and no gate (what predict does before `tune`). Seeds change the training (initialisation, order,
augmentation), not the data. Printed: per seed and option the mean Dice and per class Dice; then per option and
class mean +- standard deviation over seeds beside the class's all-empty Dice, the share of defect images hit (Dice
> 0) and the change against `baseline` measured in the same process; and whether every class beats its empty
baseline in every seed. A class whose Dice equals its empty Dice with a hit rate of 0 is not learned.
"""

import argparse
import os
import shutil
import tempfile
import time

import numpy as np

import over_seeds
from steel_tpu import config
from steel_tpu.constants import NUM_CLASSES
from steel_tpu.data.manifest import MANIFEST
from steel_tpu.data.shards import build_shards
from steel_tpu.data.synth import synthesize
from steel_tpu.formats.workdir import Workdir
from steel_tpu.training import train

# Each option as `--set` overrides on top of the baseline (the `tiny` preset at the benchmark's size).
OPTIONS = {
    "baseline": [],
    # Half the crops of defect images centred on a defect pixel, rare classes (1, 2, 4) favoured.
    "defect_crop": ["segment.augment.defect_crop_prob=0.5", "segment.augment.defect_crop_weights=[2, 3, 1, 2]"],
    # A short horizon: the tiny runs take a few hundred steps.
    "ema": ["segment.train.ema_decay=0.98"],
    "pos_weight": ["segment.train.pos_weight=auto"],
    # BCE alone: the soft Dice of a class an example lacks saturates (1 - 1/(S + 1) for S predicted pixels), so it
    # barely pushes back on false positives there, while it pulls hard where the class is.
    "bce_only": ["segment.train.loss={'bce': 1.0}"],
    "lovasz": ["segment.train.loss={'bce': 0.5, 'lovasz': 0.5}"],
    # The Dice term summed over the global batch (losses.batch_dice): false positives in images that lack a class
    # then cost, so the class-1 and class-2 channels cannot both fire on pits and on scratches for free.
    "batch_dice": ["segment.train.loss={'bce': 0.5, 'batch_dice': 0.5}"],
    # tiny's decoder at twice the width (1.77M parameters instead of 1.12M, ~1.7x the time a step): a test of
    # whether its 16 and 8 channels at strides 2 and 1 are why the class-1 and class-2 maps fire alike on pits and
    # scratches (at 128x800 it separated them in one seed of three).
    "wide_decoder": ["segment.model.decoder_filters=[128, 64, 32, 32, 16]"],
    # Seed 002's head: one softmax over background + the classes, cross-entropy + Dice.
    "softmax": ["segment.model.head=softmax", "segment.train.loss={'cce': 0.5, 'dice': 0.5}"],
    # What `tiny` trained before plaincnn: EfficientNet-B0 for 8 epochs (~2x slower a step; --epochs does not apply).
    "efficientnetb0": ["segment.model.encoder=efficientnetb0", "segment.train.epochs=8"],
}


def overrides_of(option):
    """The `--set` overrides of an option; "a+b" is options a and b on together."""
    return [item for part in option.split("+") for item in OPTIONS[part]]


def run_one(*, shards, work, overrides, seed):
    """Held-out (fold 0) Dice [N, C] and truth areas [N, C] of one training run."""
    shutil.rmtree(work, ignore_errors=True)
    cfg = config.apply_overrides(config.preset("tiny"), overrides + [f"seed={seed}"])
    train.run(shards=shards, workdir=work, cfg=cfg, tasks=("segment",), folds=(0,))
    oof = Workdir(work).oof("segment", 0)
    return oof["dice"].astype(np.float64), oof["truth_area"]


def summarize(results, *, options):
    """Lines of the per-option table: {option: [(dice [N, C], truth_area [N, C]) per seed]}."""
    lines = []
    empty = (results[options[0]][0][1] == 0).astype(np.float64).mean(axis=0)  # the same held-out images every run
    base = np.stack([d.mean(axis=0) for d, _ in results["baseline"]]) if "baseline" in results else None
    lines.append(f"all-empty Dice per class: {' '.join(f'{e:.4f}' for e in empty)}  mean {empty.mean():.4f}")
    for name in options:
        per_seed = np.stack([d.mean(axis=0) for d, _ in results[name]])  # [S, C]
        hits = np.stack([[(d[a[:, c] > 0, c] > 0).mean() if (a[:, c] > 0).any() else np.nan
                          for c in range(NUM_CLASSES)] for d, a in results[name]])
        above = over_seeds.every_class_above_empty(per_seed, empty=empty)
        lines.append(f"{over_seeds.mean_line(name, per_seed, empty=empty)}; every class with held-out defects "
                     f"above empty in every seed: {'yes' if above else 'no'}")
        for c in range(NUM_CLASSES):
            delta = "" if base is None or name == "baseline" else \
                f"  vs baseline {per_seed[:, c].mean() - base[:, c].mean():+.4f}"
            # No held-out image with the class: its Dice can only reach the empty one; nothing to hit.
            hit = "-" if np.isnan(hits[:, c]).all() else f"{np.nanmean(hits[:, c]):.2f}"
            lines.append(f"{over_seeds.class_line(c, per_seed, empty=empty)} defect images hit {hit}{delta}")
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3, help="training seeds 0..N-1 per option")
    parser.add_argument("--train", type=int, default=200, help="synthetic images; 4/5 train, 1/5 held out")
    parser.add_argument("--epochs", type=int, default=None, help="default: the tiny preset's")
    parser.add_argument("--steps-per-epoch", type=int, default=None, help="default: one pass over the folds")
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--options", default=",".join(OPTIONS),
                        help=f"comma-separated, of {', '.join(OPTIONS)}; a+b: both on in one run")
    parser.add_argument("--smoke", action="store_true", help="a few images, one step per epoch (the test's size)")
    parser.add_argument("--out", default=None, help="keep the data and workdirs here (default: a temp dir)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.train, args.epochs, args.steps_per_epoch, args.height, args.width = 25, 1, 1, 32, 192
    options = [o.strip() for o in args.options.split(",") if o.strip()]
    unknown = [part for o in options for part in o.split("+") if part not in OPTIONS]
    if unknown or not options or args.seeds < 1:
        parser.error(f"--options {unknown or '(none)'}: choose from {', '.join(OPTIONS)}; --seeds must be >= 1")

    root = args.out or tempfile.mkdtemp(prefix="bench_learning_")
    data, shards = os.path.join(root, "data"), os.path.join(root, f"shards_{args.train}")
    if not os.path.exists(os.path.join(shards, MANIFEST)):
        shutil.rmtree(data, ignore_errors=True)
        synthesize(data, n_train=args.train, n_test=0, seed=0)
        build_shards(data=data, out=shards, folds=5, seed=0, shard_mb=8, progress=False)

    size = [f"segment.data.image_height={args.height}", f"segment.data.image_width={args.width}",
            f"segment.augment.crop_height={args.height}", f"segment.augment.crop_width={min(args.width, 192)}"]
    args.epochs = args.epochs or config.preset("tiny").segment.train.epochs
    size.append(f"segment.train.epochs={args.epochs}")
    if args.steps_per_epoch:
        size.append(f"segment.train.steps_per_epoch={args.steps_per_epoch}")
    results, start = {name: [] for name in options}, time.perf_counter()
    # Seed by seed, every option within a seed: a run cut short still compares the options over equal seeds, and
    # the table is printed after each seed.
    for seed in range(args.seeds):
        for name in options:
            t0 = time.perf_counter()
            dice, area = run_one(shards=shards, work=os.path.join(root, "work", f"{name}_{seed}"),
                                 overrides=size + overrides_of(name), seed=seed)
            results[name].append((dice, area))
            print(f"RESULT {name} seed {seed}: Dice {dice.mean():.4f} per class "
                  + " ".join(f"{v:.4f}" for v in dice.mean(axis=0)) + f" ({time.perf_counter() - t0:.0f} s)",
                  flush=True)
        seeds = list(range(seed + 1))
        n = len(results[options[0]][0][0])
        print(f"\n{n} held-out images (fold 0 of {args.train}) at {args.height}x{args.width}, {args.epochs} epochs, "
              f"seeds {seeds}; wall time {(time.perf_counter() - start) / 60:.1f} min")
        for line in summarize(results, options=options):
            print(line, flush=True)
    if not args.out:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
