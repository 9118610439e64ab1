"""Keep a class off unless switching it on gains at least `min_gain` images' worth of out-of-fold Dice over all-empty."""

from steel_tpu import postprocess
from steel_tpu.constants import NUM_CLASSES
from steel_tpu.tuning.oof_stats import empty_dice

# One image's Dice: below it, a class is switched on by a single image's luck (measured on the demo: a class tuned
# on from 1 defect image among 32 OOF images drew 8 false positives on the 40 test images). Ties at a gain of 0
# (no setting draws anything on OOF) would otherwise keep the loosest setting, which draws on unseen images.
MIN_GAIN = 1.0


def switch_off(stats, pp, dice, *, min_gain=MIN_GAIN):
    """(`pp` with every class whose summed OOF Dice `dice` [N, C] beats all-empty by less than `min_gain` images
    switched off, that choice's [N, C] Dice, the per-class gains in images before switching)."""
    empty = empty_dice(stats)
    gains = dice.sum(axis=0) - empty.sum(axis=0)
    off = [c for c in range(NUM_CLASSES) if gains[c] < min_gain]
    dice = dice.copy()
    dice[:, off] = empty[:, off]
    return postprocess.switched_off(pp, off), dice, [float(g) for g in gains]
