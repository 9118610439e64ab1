"""The tf-keras fallback (TF_USE_LEGACY_KERAS=1): replicated steps and a train -> tune -> predict run under it."""

import csv
import os
import subprocess
import sys

import pytest
from conftest import TINY_NO_XLA_OVERRIDES

from steel_tpu.formats import kaggle

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.slow


def legacy_run(args, *, cwd=REPO):
    """Run `args` with TF_USE_LEGACY_KERAS=1; return its output, failing with that output on a non-zero exit."""
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=1800)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{' '.join(args)} failed under tf-keras:\n{output[-6000:]}"
    return output


def test_the_replicated_step_tests_pass_under_tf_keras():
    # The same module as under Keras 3: 8 replicas == 1 device for every loss, float16 loss scaling, XLA steps.
    output = legacy_run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow",
                         "tests/test_step.py"])
    summary = output.strip().splitlines()[-1]
    assert " passed" in summary and "failed" not in summary and "error" not in summary, output[-3000:]
    passed = int(summary.split(" passed")[0].split()[-1])
    assert passed >= 15, summary


def test_train_tune_predict_under_tf_keras(tiny_data, tmp_path):
    work, submission = str(tmp_path / "work"), str(tmp_path / "submission.csv")
    cli = [sys.executable, "-m", "steel_tpu.cli"]
    sets = [arg for override in TINY_NO_XLA_OVERRIDES for arg in ("--set", override)]
    output = legacy_run([*cli, "train", "--shards", tiny_data["shards"], "--workdir", work, "--task", "both",
                         "--folds", "0", "--config", "tiny", *sets])
    assert "tf-keras 2." in output, output[-3000:]
    legacy_run([*cli, "tune", "--workdir", work])
    legacy_run([*cli, "predict", "--workdir", work, "--images", os.path.join(tiny_data["data"], "test_images"),
                "--out", submission])

    images = sorted(os.listdir(os.path.join(tiny_data["data"], "test_images")))
    with open(submission, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(images) * 4
    labels = kaggle.read_labels(submission)
    assert sorted(labels.image_ids) == images
