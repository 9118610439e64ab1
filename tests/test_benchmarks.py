"""Every benchmark runs at its smoke size, so a change that breaks one turns the suite red."""

import glob
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCHMARKS = sorted(os.path.basename(p) for p in glob.glob(os.path.join(ROOT, "benchmarks", "bench_*.py")))
# Seconds each (no TensorFlow): cheap enough for every run; the others build shards or models (a minute or more).
FAST = {"bench_rle.py"}
# These check more than "it runs" in their own test, at their smoke size: not run twice.
OWN_TEST = {"bench_beam.py": "tests/test_beam.py", "bench_kit.py": "tests/test_export.py",
            "bench_learning.py": "tests/test_bench_learning.py"}
# Options a benchmark's smoke run exercises too.
SMOKE_ARGS = {"bench_train.py": ["--set", "segment.train.loss={'bce': 0.5, 'batch_dice': 0.5}"]}


def test_every_benchmark_is_listed():
    assert {"bench_pipeline.py", "bench_predict.py", "bench_rle.py", "bench_shards.py", "bench_train.py"} <= set(
        BENCHMARKS)
    for name, test in OWN_TEST.items():
        assert name in BENCHMARKS and f"{name}\"" in open(os.path.join(ROOT, test)).read().replace("'", '"')


@pytest.mark.parametrize("name", [pytest.param(n, marks=() if n in FAST else pytest.mark.slow)
                                  for n in BENCHMARKS if n not in OWN_TEST])
def test_benchmark_smoke_size_runs_and_prints_its_figures(name, tmp_path):
    env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2", "TMPDIR": str(tmp_path)}
    command = [sys.executable, os.path.join(ROOT, "benchmarks", name), "--smoke", *SMOKE_ARGS.get(name, [])]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    # Contenders print interleaved ratios (median and spread); bench_train prints the Dice each seed learned (its
    # cross-fitted tuned variant too), the table over its smoke size's two seeds, and memory.
    wanted = ("segment.train.loss={'bce': 0.5, 'batch_dice': 0.5}", "Kaggle Dice", "tuned on the other half",
              "over seeds [0, 1]:", "above empty in", "host memory") if name == "bench_train.py" \
        else ("ratio ", " over ")
    for text in wanted:
        assert text in done.stdout, done.stdout[-3000:]
