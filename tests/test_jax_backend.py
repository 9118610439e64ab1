"""The JAX backend does TensorFlow's math: one train step, augmentation for given draws, 8 devices like one, a
workdir trained under one backend scored under the other; the backend is a visible, checked choice."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from steel_tpu import backend, install
from steel_tpu.device import augment, draws
from tests import backend_cases

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _jax(case, inputs, tmp_path, *, devices=1):
    """Run tests/jax_side.py CASE under KERAS_BACKEND=jax on `devices` virtual CPU devices; its outputs."""
    source, target = tmp_path / f"{case}-in.npz", tmp_path / f"{case}-out.npz"
    np.savez(source, **inputs)
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    env.pop("TF_USE_LEGACY_KERAS", None)
    done = subprocess.run([sys.executable, "-m", "tests.jax_side", case, str(source), str(target)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    with np.load(target) as npz:
        return {k: npz[k] for k in npz.files}


def _weights():
    return backend_cases.segmenter().get_weights()


# Tolerances: float32 convolutions of TensorFlow's kernels and XLA's differ in summation order (~1e-6 relative);
# one SGD step at lr 0.1 carries that into the weights.
STEP_RTOL, STEP_ATOL = 1e-4, 1e-6


@pytest.mark.parametrize("loss", ["bce+dice", "bce+batch_dice", "0.5*focal+lovasz"])
def test_one_train_step_gives_the_same_loss_and_weights_under_tensorflow_and_jax(single, loss, tmp_path):
    weights = _weights()
    got_tf, after_tf, _ = backend_cases.train(single, weights=weights, loss=loss, steps=1)
    jax_out = _jax("step", {"loss": np.array(loss), **{f"w{i:03d}": w for i, w in enumerate(weights)}}, tmp_path)
    np.testing.assert_allclose(jax_out["losses"], got_tf, rtol=STEP_RTOL)
    after_jax = [jax_out[f"w{i:03d}"] for i in range(len(after_tf))]
    for a, b, before in zip(after_jax, after_tf, weights):
        np.testing.assert_allclose(a, b, rtol=STEP_RTOL, atol=STEP_ATOL)
    # The step moved every weight group it trains (a no-op step would pass the equality above).
    assert sum(not np.allclose(a, w) for a, w in zip(after_tf, weights)) >= 4


def test_augmentation_of_given_draws_is_the_same_under_both_backends(tmp_path):
    images, masks = backend_cases.IMAGES[:backend_cases.BATCH], backend_cases.MASKS[:backend_cases.BATCH]
    log = []
    recorded = backend_cases.Recording(draws.TFDraws(np.array([3, 4])), log)
    out_images, out_masks = augment.augment_batch(images, masks, seed=recorded, config=backend_cases.CROP)
    jax_out = _jax("augment", {"images": images, "masks": masks, **{f"d{i:03d}": d for i, d in enumerate(log)}},
                   tmp_path)
    # Crops, flips, defect windows and cutout boxes are integer arithmetic: equal. Photometric floats: within
    # float32 rounding of a 0..255 value.
    np.testing.assert_array_equal(jax_out["masks"], np.asarray(out_masks))
    np.testing.assert_allclose(jax_out["images"], np.asarray(out_images), atol=1e-3)
    assert len(log) >= 10  # every draw of the augmentation was replayed


@pytest.mark.slow
def test_eight_jax_devices_train_exactly_like_one(tmp_path):
    out = _jax("devices", {f"w{i:03d}": w for i, w in enumerate(_weights())}, tmp_path, devices=8)
    assert int(out["all_replicas"]) == 8 and int(out["one_replicas"]) == 1
    np.testing.assert_allclose(out["all_losses"], out["one_losses"], rtol=1e-5)
    for kind in ("w", "ema"):
        names = sorted(k[len("all_"):] for k in out if k.startswith(f"all_{kind}"))
        assert names
        for name in names:
            np.testing.assert_allclose(out[f"all_{name}"], out[f"one_{name}"], rtol=1e-4, atol=1e-5)


# --- the choice ---

def _host(*, tpu, tensorflow=(), jax=True):
    return install.Host(tpu_signals=("TPU_ACCELERATOR_TYPE is set",) if tpu else (), gpu_signals=(),
                        tensorflow={name: "2.20.0" for name in tensorflow}, libtpu="0.0.21.1" if tpu else None,
                        jax={"jax": "0.7.2", "jaxlib": "0.7.2"} if jax else {})


@pytest.mark.parametrize("host, environ, want", [
    (_host(tpu=True), {}, "jax"),  # Colab's TPU runtime: JAX + libtpu, no TensorFlow
    (_host(tpu=True, tensorflow=("tensorflow-cpu",)), {}, "jax"),  # Kaggle's: tensorflow-cpu feeds tf.data only
    (_host(tpu=True, tensorflow=("tensorflow-tpu",)), {}, "tf"),  # a TensorFlow TPU VM
    (_host(tpu=False, tensorflow=("tensorflow-cpu",)), {}, "tf"),  # CPU / GPU machines
    (_host(tpu=True, tensorflow=("tensorflow-cpu",), jax=False), {}, "tf"),
    (_host(tpu=False), {"KERAS_BACKEND": "jax"}, "jax"),  # the user's own Keras switch
    (_host(tpu=True), {"KERAS_BACKEND": "tensorflow"}, "tf"),
])
def test_auto_chooses_jax_where_tensorflow_cannot_drive_the_tpu(host, environ, want):
    assert backend.choose("auto", environ=environ, host=host) == want
    assert backend.choose("tf", environ=environ, host=host) == "tf"


def test_a_process_that_loaded_keras_cannot_switch_backend():
    assert backend.activate("tf") == "tf"
    with pytest.raises(backend.BackendError, match="already loaded with the tensorflow backend"):
        backend.activate("jax")
    with pytest.raises(backend.BackendError, match="expected one of"):
        backend.choose("torch")


# --- refusals: one line, exit 2, before anything is written ---

def _console(*args, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in (*install.TPU_ENV_VARS, "KERAS_BACKEND")}
    script = os.path.join(os.path.dirname(sys.executable), "steel-tpu")
    return subprocess.run([script, *args], env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)


@pytest.mark.parametrize("chosen", ["tf", "jax"])
def test_a_tpu_preset_without_a_tpu_stops_in_one_line_naming_the_flag(tiny_data, tmp_path, chosen):
    if install.probe().tpu:
        pytest.skip("this host looks like a TPU host")
    work = tmp_path / "work"
    done = _console("train", "--config", "colab-tpu", "--shards", tiny_data["shards"], "--workdir", str(work),
                    "--folds", "0", "--backend", chosen, tmp_path=tmp_path)
    assert done.returncode == 2, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("steel-tpu train: error:")]
    assert len(errors) == 1 and "Traceback" not in done.stderr
    assert "TPU" in errors[0] and "--device cpu" in errors[0]
    # Nothing written but the workdir's config (what a resume must find): no fold was started.
    assert not (work / "segment").exists() and not (work / "classify").exists()


def test_segmentation_models_under_jax_are_refused_in_one_line(tiny_data, tmp_path):
    done = _console("train", "--config", "seed001", "--shards", tiny_data["shards"], "--workdir",
                    str(tmp_path / "work"), "--folds", "0", "--backend", "jax", "--device", "cpu", tmp_path=tmp_path)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert "trains under the TensorFlow backend only: --backend tf" in done.stderr
    assert not (tmp_path / "work").exists()


# --- a workdir crosses backends ---

def _train_args(shards, work, *extra):
    from tests.conftest import TINY_TRAIN_OVERRIDES

    sets = [a for o in TINY_TRAIN_OVERRIDES for a in ("--set", o)]
    return ["train", "--config", "tiny", "--shards", shards, "--workdir", str(work), "--folds", "0", *sets, *extra]


def _maps_both_ways(work, task, tmp_path):
    """(TensorFlow's, JAX's) uint8 full-resolution maps of fold 0's `task` model on the same images."""
    from steel_tpu import tasks
    from steel_tpu.device import distribute
    from steel_tpu.device import steps as device_steps
    from steel_tpu.formats.workdir import Workdir

    wd = Workdir(str(work))
    cfg = wd.config()
    data = getattr(cfg, task).data
    images = np.random.default_rng(0).integers(0, 256, size=(2, data.image_height, data.image_width, 3),
                                               dtype=np.uint8)
    device = distribute.select_strategy(prefer="cpu", verbose=False)
    spec = tasks.make(task, cfg)
    model = wd.load_model(spec, 0, strategy=device.strategy)
    predict = device_steps.predict_step(device=device, forward=spec.forward(model), models=[model], jit_compile=False)
    request = json.dumps({"workdir": str(work), "task": task, "fold": 0})
    return predict(images), _jax("forward", {"request": np.array(request), "images": images}, tmp_path)["maps"]


@pytest.mark.slow
def test_a_workdir_trained_under_jax_scores_under_tensorflow(tiny_data, tmp_path):
    work = tmp_path / "work"
    done = _console(*_train_args(tiny_data["shards"], work, "--backend", "jax", "--set", "segment.train.ema_decay=0.9"),
                    tmp_path=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "steel_tpu: backend jax, DataParallel on cpu" in done.stdout
    runs = [json.loads(line) for line in (work / "runs.jsonl").read_text().splitlines()]
    assert runs[-1]["backend"] == "jax" and runs[-1]["jax"]
    assert (work / "segment" / "fold0" / "ckpt" / "state.npz").exists()
    for task in ("segment", "classify"):
        ours, theirs = _maps_both_ways(work, task, tmp_path)
        assert np.abs(ours.astype(int) - theirs.astype(int)).max() <= 1  # one quantisation level (1/255)
    # The whole scoring path, under each backend: the same submission's Dice.
    from steel_tpu.metrics import evaluate

    tuned = _console("tune", "--workdir", str(work), tmp_path=tmp_path)
    assert tuned.returncode == 0, tuned.stderr[-3000:]
    scores = {}
    for chosen in ("tf", "jax"):
        out = tmp_path / f"{chosen}.csv"
        done = _console("predict", "--workdir", str(work), "--images", os.path.join(tiny_data["data"], "test_images"),
                        "--out", str(out), "--backend", chosen, tmp_path=tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
        scores[chosen] = evaluate(pred_path=str(out), truth_path=os.path.join(tiny_data["data"], "test_truth.csv"),
                                  images=os.path.join(tiny_data["data"], "test_images"), intersection=False).mean
    assert abs(scores["tf"] - scores["jax"]) <= 1e-3


@pytest.mark.slow
def test_a_workdir_trained_under_tensorflow_scores_under_jax(trained_workdir, tmp_path):
    for task in ("segment", "classify"):
        ours, theirs = _maps_both_ways(trained_workdir, task, tmp_path)
        assert np.abs(ours.astype(int) - theirs.astype(int)).max() <= 1


@pytest.mark.slow
def test_a_jax_fold_killed_mid_training_resumes_and_refuses_the_other_backend(tiny_data, tmp_path):
    import signal
    import time

    work = tmp_path / "work"
    args = _train_args(tiny_data["shards"], work, "--backend", "jax", "--task", "segment",
                       "--set", "segment.train.epochs=3")
    env = {k: v for k, v in os.environ.items() if k not in (*install.TPU_ENV_VARS, "KERAS_BACKEND")}
    script = os.path.join(os.path.dirname(sys.executable), "steel-tpu")
    proc = subprocess.Popen([script, *args], env=env, cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    state = work / "segment" / "fold0" / "ckpt" / "state.npz"
    deadline = time.monotonic() + 300
    while not state.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert state.exists() and not (work / "segment" / "fold0" / "done.json").exists()
    refused = _console(*args, "--backend", "tf", tmp_path=tmp_path)
    assert refused.returncode == 2 and "checkpointed under the jax backend" in refused.stderr
    assert "Traceback" not in refused.stderr
    resumed = _console(*args, tmp_path=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming after epoch" in resumed.stdout
    assert (work / "segment" / "fold0" / "done.json").exists()


@pytest.mark.slow
def test_preset_memory_smoke_reports_each_task_beside_the_chips_hbm(tmp_path):
    """benchmarks/preset_memory.py at its smoke size: XLA's memory analysis of the compiled JAX step, per task."""
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    done = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "preset_memory.py"), "--smoke"],
                          cwd=tmp_path, env={**env, "PYTHONPATH": ROOT}, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(done.stdout.strip().splitlines()[-1])
    assert [r["task"] for r in rows] == ["segment", "classify"]
    for row in rows:
        # The step holds at least its weights and batch, and activations beyond them.
        assert 0 < row["arguments_gib"] < row["total_gib"] and row["temporaries_gib"] > 0
        assert "of a v5e chip's 16 GiB" in done.stdout


def test_a_multi_host_slice_is_refused_under_jax(monkeypatch):
    from steel_tpu.device import distribute, jax_device

    monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "host0,host1")
    with pytest.raises(distribute.DeviceUnavailable, match="runs on one host; this TPU slice has 2"):
        jax_device.choose(prefer=None, tpu_expected=True, no_tpu=distribute.TPUUnavailable,
                          no_device=distribute.DeviceUnavailable)
