"""Strategy selection, TPU detection, precision policies and per-replica batching on the 8 logical CPUs."""

import importlib.util
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from steel_tpu.device import distribute

TPU_VARS = (*distribute.install.TPU_ENV_VARS, "TF_CONFIG")


@pytest.fixture
def clean_env(monkeypatch):
    for name in TPU_VARS:
        monkeypatch.delenv(name, raising=False)
    # A fresh choice under this environment; the process' shared strategies come back afterwards.
    monkeypatch.setattr(distribute, "_CHOSEN", {})
    return monkeypatch


@pytest.fixture(scope="module")
def mirrored():
    return distribute.select_strategy(prefer="mirrored", verbose=False)


@pytest.fixture
def restore_policy():
    before = keras.mixed_precision.global_policy().name
    yield
    keras.mixed_precision.set_global_policy(before)


def test_default_strategy_on_this_machine(clean_env, capsys, logical_cpus):
    if distribute.tpu_detected():
        pytest.skip("this host looks like a TPU host")
    device = distribute.select_strategy()
    assert device.kind == "cpu" and device.replicas == 1
    assert device.strategy is tf.distribute.get_strategy()
    assert capsys.readouterr().out.strip().splitlines() == [
        f"steel_tpu: backend tf, _DefaultDistributionStrategy on cpu, 1 replica(s), "
        f"{keras.mixed_precision.global_policy().name}, "
        f"TensorFlow {tf.__version__}, Keras {keras.__version__}, libtpu not installed"]


def test_describe_records_what_the_run_used(mirrored, restore_policy):
    distribute.set_precision("cpu")
    info = distribute.describe(mirrored)
    assert info["device"] == "cpu" and info["replicas"] == 8 and info["strategy"] == "MirroredStrategy"
    assert info["precision"] == "float32" and info["tensorflow"] == tf.__version__
    assert info["keras"] == f"Keras {keras.__version__}" and info["libtpu"] is None
    assert set(info["tensorflow_distributions"]) & {"tensorflow", "tensorflow-cpu"}
    json.dumps(info)  # the workdir stores it as JSON


def test_a_required_tpu_on_a_host_without_one_stops_with_the_fix(clean_env):
    if distribute.tpu_detected():
        pytest.skip("this host looks like a TPU host")
    with pytest.raises(distribute.TPUUnavailable) as error:
        distribute.select_strategy(require_tpu=True, verbose=False)
    message = str(error.value)
    assert "\n" not in message and "a TPU is required but this host shows none" in message
    assert "python -m steel_tpu.install" in message and "device=cpu" in message
    # The explicit choice runs the same request on the CPU.
    assert distribute.select_strategy(require_tpu=True, prefer="cpu", verbose=False).kind == "cpu"


def test_a_detected_but_unreachable_tpu_stops_instead_of_falling_back():
    # A subprocess: a failed TPU initialisation may leave this process' runtime half-configured.
    code = ("from steel_tpu.device import distribute\n"
            "try:\n    distribute.select_strategy()\nexcept distribute.TPUUnavailable as e:\n    print('STOPPED', e)\n"
            "print(distribute.select_strategy(prefer='cpu', verbose=False).kind)")
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "TF_CPP_MIN_LOG_LEVEL": "3", "TPU_ACCELERATOR_TYPE": "v5litepod-1"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[0].startswith("STOPPED could not connect to a TPU; tried tpu='local'") and "fix:" in lines[0]
    assert lines[-1] == "cpu"


def test_mirrored_over_the_logical_cpus(mirrored, logical_cpus):
    assert isinstance(mirrored.strategy, tf.distribute.MirroredStrategy)
    assert (mirrored.kind, mirrored.replicas) == ("cpu", len(logical_cpus))


def test_bad_requests_are_clear(clean_env):
    with pytest.raises(ValueError, match="prefer"):
        distribute.select_strategy(prefer="quantum")
    if not tf.config.list_physical_devices("GPU"):
        with pytest.raises(distribute.DeviceUnavailable, match="no GPU: choose --device cpu"):
            distribute.select_strategy(prefer="gpu", verbose=False)
    clean_env.setenv("TF_CONFIG", "{not json")
    with pytest.raises(ValueError, match="TF_CONFIG"):
        distribute.select_strategy(verbose=False)


def test_requested_tpu_that_is_absent_fails_naming_what_was_tried():
    # A subprocess: a failed TPU initialisation may leave this process' runtime half-configured.
    code = "from steel_tpu.device import distribute\ndistribute.select_strategy(tpu='local')"
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode != 0
    assert "TPUUnavailable: could not connect to a TPU; tried tpu='local'" in done.stderr and "fix:" in done.stderr


def test_tpu_detection_and_candidates():
    has_libtpu = importlib.util.find_spec("libtpu") is not None
    assert distribute.tpu_detected(environ={}, accel_paths=[]) == has_libtpu
    assert distribute.tpu_detected(environ={"COLAB_TPU_ADDR": "10.0.0.2:8470"}, accel_paths=[])
    assert distribute.tpu_detected(environ={}, accel_paths=["/dev/accel0"])
    assert distribute.tpu_candidates("my-tpu", environ={"TPU_NAME": "other"}) == ["my-tpu"]
    assert distribute.tpu_candidates(None, environ={}) == ["local"]
    env = {"TPU_NAME": "node-1", "COLAB_TPU_ADDR": "10.0.0.2:8470"}
    assert distribute.tpu_candidates(None, environ=env) == ["local", "node-1", "grpc://10.0.0.2:8470"]


@pytest.mark.parametrize("kind,gpu_float16,expected", [
    ("tpu", False, "mixed_bfloat16"),
    ("gpu", False, "float32"),
    ("gpu", True, "mixed_float16"),
    ("cpu", True, "float32"),
])
def test_set_precision(restore_policy, kind, gpu_float16, expected):
    assert distribute.set_precision(kind, gpu_float16=gpu_float16) == expected
    assert keras.mixed_precision.global_policy().name == expected


def test_set_precision_rejects_unknown_kind():
    with pytest.raises(ValueError, match="npu"):
        distribute.set_precision("npu")


def test_wrap_optimizer_adds_loss_scaling_only_for_float16():
    sgd = keras.optimizers.SGD(0.1)
    assert distribute.wrap_optimizer(sgd, "float32") is sgd
    assert distribute.wrap_optimizer(sgd, keras.mixed_precision.DTypePolicy("mixed_bfloat16")) is sgd
    wrapped = distribute.wrap_optimizer(sgd, "mixed_float16")
    assert isinstance(wrapped, keras.optimizers.LossScaleOptimizer) and wrapped.inner_optimizer is sgd


def test_distribute_dataset_gives_each_replica_its_share(mirrored):
    seen = []

    def dataset_fn(input_context):
        batch_size = input_context.get_per_replica_batch_size(16)
        seen.append((batch_size, input_context.num_replicas_in_sync))
        return tf.data.Dataset.range(64).batch(batch_size, drop_remainder=True)

    dist = distribute.distribute_dataset(mirrored, dataset_fn, global_batch_size=16)
    first = mirrored.strategy.experimental_local_results(next(iter(dist)))
    assert seen == [(2, 8)]
    assert [t.shape.as_list() for t in first] == [[2]] * 8
    assert sorted(np.concatenate([t.numpy() for t in first])) == list(range(16))


def test_distribute_dataset_rejects_indivisible_batches(mirrored):
    with pytest.raises(ValueError, match="12 must be a positive multiple of the 8 replicas"):
        distribute.distribute_dataset(mirrored, lambda _: None, global_batch_size=12)


def test_multi_worker_is_only_chosen_for_several_workers(clean_env):
    clean_env.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["localhost:1"]}, "task": {}}))
    if distribute.tpu_detected():
        pytest.skip("this host looks like a TPU host")
    assert distribute.select_strategy(verbose=False).strategy is tf.distribute.get_strategy()


def test_the_same_choice_returns_the_same_strategy(mirrored):
    # A second MirroredStrategy in one process would collide with the first one's collective instance keys.
    assert distribute.select_strategy(prefer="mirrored", verbose=False) is mirrored
