"""Interleaved timing shared by the benchmarks: every contender once per repeat, ratios as median and spread."""

import os
import time

import numpy as np


def load():
    """The 1/5/15-minute load averages as text: printed beside every figure, since the machine may be shared."""
    return "load " + "/".join(f"{v:.1f}" for v in os.getloadavg())


def interleaved(contenders, *, repeats, warmup=0):
    """{name: [seconds per repeat]} of zero-argument callables run one after the other within each repeat.

    Interleaving makes every contender meet the same load from other processes, so a ratio taken within one
    repeat is fair even when the machine is busy; `warmup` untimed repeats come first (caches, autotuning).
    """
    times = {name: [] for name in contenders}
    for r in range(warmup + repeats):
        for name, fn in contenders.items():
            start = time.perf_counter()
            fn()
            if r >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def spread(values):
    """(median, min, max) of a list of numbers."""
    values = np.asarray(values, dtype=float)
    return float(np.median(values)), float(values.min()), float(values.max())


def ratio_line(label, values, *, target=None, unit="x"):
    """One `ratio LABEL MEDIAN (MIN..MAX over N) ...` line; tests/test_benchmarks.py looks for these."""
    median, lo, hi = spread(values)
    verdict = "" if target is None else f"  target >= {target}: {'OK' if median >= target else 'BELOW TARGET'}"
    return f"ratio {label} {median:.2f}{unit} ({lo:.2f}..{hi:.2f} over {len(values)}){verdict}  [{load()}]"


def speedups(times, *, baseline, contender):
    """Per-repeat baseline seconds / contender seconds: > 1 means the contender is faster."""
    return list(np.divide(times[baseline], times[contender]))
