"""benchmarks/bench_learning.py's smoke size: every seed of every option trains, and the per-class table compares each
class with its all-empty baseline and the baseline option."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # four tiny segmenter runs: ~1-2 min on a loaded 2-core machine
def test_bench_learning_smoke_reports_every_seed_and_class(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_learning.py"), "--smoke", "--seeds", "2",
                           "--options", "baseline,lovasz+ema", "--out", str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    results = re.findall(r"^RESULT ([\w+]+) seed (\d): Dice ([0-9.]+) per class((?: [0-9.]+){4})", out, re.M)
    assert [(name, int(seed)) for name, seed, *_ in results] == [("baseline", 0), ("lovasz+ema", 0), ("baseline", 1),
                                                                  ("lovasz+ema", 1)]
    for _, _, dice, per_class in results:
        # The mean is the mean of the per-class Dice, each a Dice in [0, 1].
        values = [float(v) for v in per_class.split()]
        assert all(0.0 <= v <= 1.0 for v in values) and abs(sum(values) / 4 - float(dice)) < 1e-3
    assert re.search(r"^all-empty Dice per class:( [0-9.]{6}){4}  mean [0-9.]{6}$", out, re.M)
    final = out[out.rindex("seeds [0, 1]"):]  # the table over both seeds, printed after the last one
    for name in ("baseline", r"lovasz\+ema"):
        assert re.search(rf"^{name}: mean Dice [0-9.]+ \+- [0-9.]+ over 2 seed\(s\)", final, re.M)
    class_lines = re.findall(r"^  class (\d): Dice .* above empty in \d/2 seeds\) defect images hit", final, re.M)
    assert class_lines == ["1", "2", "3", "4"] * 2
    assert len(re.findall(r"vs baseline [+-][0-9.]+$", final, re.M)) == 4  # the lovasz+ema rows only
    bad = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_learning.py"), "--options", "lovasz+magic"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert bad.returncode == 2 and "--options ['magic']:" in bad.stderr  # the unknown part only
