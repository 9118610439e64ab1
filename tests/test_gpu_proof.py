"""benchmarks/gpu_proof.py's smoke size runs end to end on the CPU and reports real, positive rates."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # ~2 min on a loaded 2-core machine: two B0 UNet++ graphs
def test_gpu_proof_smoke_runs_on_cpu(tmp_path):
    out = tmp_path / "proof.json"
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_proof.py"), "--smoke", "--prefer", "cpu",
                           "--backends", "--out", str(out)], capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert (result["device"], result["replicas"], result["precision"]) == ("cpu", 1, "float32")
    assert (result["input"], result["crop"]) == ("64x320", "64x128")
    assert result["model"] == "efficientnetb0 unetpp (colab-tpu segmenter)"
    assert result["train_images_per_s"] > 0 and result["predict_images_per_s"] > 0
    for what in ("train_images_per_s", "predict_images_per_s"):  # --backends: both Keras backends, same model
        assert set(result["backends"][what]) == {"tf", "jax"} and min(result["backends"][what].values()) > 0
