"""`steel-tpu env`'s report on this CPU host (8 logical devices) and on simulated TPU-host facts."""

import json

import keras
import pytest
import tensorflow as tf

from steel_tpu import env_report, install

from steel_tpu.device import distribute


@pytest.fixture(scope="module")
def mirrored():
    return distribute.select_strategy(prefer="mirrored", verbose=False)


def clean_environ(tmp_path, **extra):
    # No credential file and no TPU variables unless a test adds them.
    return {"CLOUDSDK_CONFIG": str(tmp_path / "gcloud"), **extra}


def test_report_on_this_cpu_host(tmp_path, mirrored, logical_cpus):
    report = env_report.env_report(device=mirrored, environ=clean_environ(tmp_path), dev=tmp_path)
    json.dumps(report)
    assert report["tensorflow"] == tf.__version__ and report["keras"] == f"Keras {keras.__version__}"
    assert (report["strategy"], report["device"], report["replicas"]) == ("MirroredStrategy", "cpu", 8)
    assert sum(d.startswith("CPU:") for d in report["devices"]) == len(logical_cpus)
    assert report["presets"]["tiny"] == "fits" and report["recommended_preset"] == "tiny"
    assert "not on a TPU" in report["presets"]["colab-tpu"]
    assert report["gcs_credentials"]["usable"] is None
    lines = env_report.format_report(report)
    assert lines[0].startswith(f"TensorFlow {tf.__version__}")
    assert "strategy: MirroredStrategy on cpu, 8 replica(s), backend tf" in lines
    assert "preset tiny: fits" in lines and "recommended preset: tiny" in lines


def test_simulated_tpu_host_with_the_wrong_tensorflow_says_what_is_wrong(tmp_path, mirrored):
    report = env_report.env_report(
        device=mirrored, environ=clean_environ(tmp_path, TPU_ACCELERATOR_TYPE="v2-8"), dev=tmp_path,
        distributions={"tensorflow": "2.20.0", "tensorflow-cpu": "2.20.0", "keras": "3.15.1"})
    assert report["tpu_signals"] == ["TPU_ACCELERATOR_TYPE is set"]
    problems = "\n".join(report["problems"])
    assert "several TensorFlow distributions" in problems
    assert "no tensorflow-tpu is installed" in problems and "python -m steel_tpu.install" in problems


def test_tensorflow_tpu_with_a_newer_libtpu_is_a_problem(tmp_path, mirrored):
    report = env_report.env_report(device=mirrored, environ=clean_environ(tmp_path), dev=tmp_path,
                                   distributions={"tensorflow-tpu": "2.20.0", "libtpu": "0.0.52"})
    assert report["libtpu"] == "0.0.52"
    assert any(f"released with libtpu {install.LIBTPU_VERSION}" in p for p in report["problems"])
    ok = env_report.env_report(device=mirrored, environ=clean_environ(tmp_path), dev=tmp_path,
                               distributions={"tensorflow-tpu": "2.20.0", "libtpu": install.LIBTPU_VERSION})
    assert ok["problems"] == [] and env_report.format_report(ok)[-1] == "no problems found"


def test_a_bad_credential_file_is_reported(tmp_path, mirrored):
    bad = tmp_path / "key.json"
    bad.write_text('{"type": "service_account"}')
    report = env_report.env_report(device=mirrored, dev=tmp_path,
                                   environ=clean_environ(tmp_path, GOOGLE_APPLICATION_CREDENTIALS=str(bad)))
    assert report["gcs_credentials"]["usable"] is False
    assert any("do not load" in p for p in report["problems"])


def test_an_unreachable_required_tpu_is_a_problem_not_a_crash(tmp_path, monkeypatch):
    if distribute.tpu_detected():
        pytest.skip("this host looks like a TPU host")
    monkeypatch.setattr(distribute, "_CHOSEN", {})
    for name in install.TPU_ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    report = env_report.env_report(require_tpu=True, environ=clean_environ(tmp_path), dev=tmp_path)
    assert report["strategy"] is None and report["presets"] == {}
    assert any("a TPU is required but this host shows none" in p for p in report["problems"])


def test_a_jax_tpu_runtime_is_told_what_runs_there(tmp_path, mirrored):
    report = env_report.env_report(
        device=mirrored, environ=clean_environ(tmp_path, COLAB_TPU_1VM="1"), dev=tmp_path,
        distributions={"tensorflow-cpu": "2.20.0", "jax": "0.7.2", "jaxlib": "0.7.2", "libtpu": "0.0.21.1"})
    problems = "\n".join(report["problems"])
    assert "this TPU is JAX's (jax 0.7.2, jaxlib 0.7.2 on libtpu 0.0.21.1)" in problems
    # This process runs Keras on TensorFlow: it is told to choose JAX, which auto picks on that host.
    assert "--backend jax (what auto chooses here)" in problems and "uninstall" not in problems
