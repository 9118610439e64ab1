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
    got_tf, after_tf, _ = backend_cases.train(single, weights=weights, loss=loss, steps=1, optimizer="sgd")
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
