"""Held-out Dice over training seeds beside the all-empty Dice: the verdict and lines the learning benchmarks share."""

import numpy as np


def every_class_above_empty(per_seed, *, empty):
    """True when, in every seed, each class some held-out image has ([S, C] Dice against `empty` [C]) beats its
    all-empty Dice; a class no held-out image has can only equal its empty Dice, so it is not asked to."""
    present = np.asarray(empty) < 1.0
    return bool((per_seed[:, present] > np.asarray(empty)[None, present]).all())


def mean_line(name, per_seed, *, empty):
    """'NAME: mean Dice m +- s over N seed(s) (margin over empty d)' of the per-seed means of [S, C] Dice."""
    means = per_seed.mean(axis=1)
    return (f"{name}: mean Dice {means.mean():.4f} +- {means.std():.4f} over {len(per_seed)} seed(s) "
            f"(margin over empty {means.mean() - np.mean(empty):+.4f})")


def class_line(c, per_seed, *, empty):
    """'  class c+1: Dice m +- s (empty e; above empty in k/N seeds)' for column c of [S, C] Dice."""
    dice = per_seed[:, c]
    return (f"  class {c + 1}: Dice {dice.mean():.4f} +- {dice.std():.4f} (empty {empty[c]:.4f}; above empty in "
            f"{(dice > empty[c]).sum()}/{len(per_seed)} seeds)")
