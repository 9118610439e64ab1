"""Host-only work (evaluate, tune, synth, CSV and RLE on numpy) never imports TensorFlow: checked in fresh processes."""

import os
import subprocess
import sys
import textwrap

import pytest
from test_multi_workdir import _bind, _perturbed_copy
from fakes import oof_workdir

HOST_ONLY_MODULES = ["steel_tpu.metrics", "steel_tpu.data.synth", "steel_tpu.formats.kaggle", "steel_tpu.formats.rle",
                     "steel_tpu.postprocess", "steel_tpu.storage", "steel_tpu.formats.submission",
                     "steel_tpu.scoring.pseudo_rule"]


def _without_tensorflow(code):
    """Run `code` in a fresh interpreter, then fail unless TensorFlow stayed unimported; returns its stdout."""
    check = "\nimport sys\nassert 'tensorflow' not in sys.modules, 'TensorFlow was imported'\n"
    # A fresh process: this one imported TensorFlow long ago (conftest, other test modules).
    run = subprocess.run([sys.executable, "-c", textwrap.dedent(code) + check], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    return run.stdout


def _cli(*args):
    """Code running `steel-tpu ARGS` in-process (so sys.modules can be inspected after it); --help exits 0."""
    return f"""
from steel_tpu import cli
try:
    code = cli.main({list(args)!r})
except SystemExit as stop:
    code = stop.code
assert code in (0, None), code
"""


@pytest.mark.parametrize("module", HOST_ONLY_MODULES)
def test_module_imports_without_tensorflow(module):
    _without_tensorflow(f"import {module}")


def test_the_check_can_fail():
    with pytest.raises(AssertionError, match="TensorFlow was imported"):
        _without_tensorflow("import steel_tpu.device.augment")


@pytest.mark.parametrize("command", ["evaluate", "tune", "synth", "report", "train", "pseudo", "compare", "rescore"])
def test_help_without_tensorflow(command):
    assert "usage:" in _without_tensorflow(_cli(command, "--help"))


def test_evaluate_and_synth_run_without_tensorflow(tmp_path):
    data = str(tmp_path / "synth")
    _without_tensorflow(f"from steel_tpu.data.synth import synthesize; synthesize({data!r}, n_train=2, n_test=3, seed=1)")
    truth = f"{data}/test_truth.csv"
    out = _without_tensorflow(_cli("evaluate", "--pred", truth, "--truth", truth, "--images", f"{data}/test_images"))
    assert "dice 1.0000" in out and "n=3 images" in out


def test_tune_runs_without_tensorflow(tmp_path):
    work = str(tmp_path / "work")
    oof_workdir(work, n=8)
    assert "tune: OOF dice" in _without_tensorflow(_cli("tune", "--workdir", work))


def test_tune_of_several_workdirs_runs_without_tensorflow(tmp_path):
    a, ens = str(tmp_path / "a"), str(tmp_path / "ens")
    oof_workdir(a, n=8)
    _bind(a)
    b = _perturbed_copy(a, str(tmp_path / "b"), seed=1)
    out = _without_tensorflow(_cli("tune", "--workdir", a, "--workdir", b, "--out", ens))
    assert "tune: ensemble of 2 workdirs" in out and os.path.exists(os.path.join(ens, "thresholds.json"))
