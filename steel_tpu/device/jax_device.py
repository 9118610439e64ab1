"""The JAX backend's device: the local chips as one Keras DataParallel mesh (weights replicated, batch sharded)."""

import os

import jax

from steel_tpu.keras_api import keras


def _hosts(environ):
    # A TPU VM slice lists every worker's hostname; one host (v5e-1, v5e-8, v6e-8) has one.
    return len([h for h in environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h])


def choose(*, prefer, tpu_expected, no_tpu, no_device):
    """(kind, devices, distribution) of the JAX device `prefer` ('tpu' | 'gpu' | 'cpu' | 'mirrored' | None)
    names; `tpu_expected`: a TPU was asked for or this host shows one, so anything else is refused with `no_tpu`;
    a GPU asked for and absent with `no_device` (exception classes taking the one-line reason)."""
    environ = os.environ
    if _hosts(environ) > 1:
        # keras.distribution.initialize() would join the hosts, but each host's tf.data would still read every
        # image and validation would gather arrays no one host holds: refused rather than trained wrong.
        raise no_device(f"the JAX backend runs on one host; this TPU slice has {_hosts(environ)} "
                        "(TPU_WORKER_HOSTNAMES): train on one host's chips (v5e-8, v6e-8) or with --backend tf on "
                        "tensorflow-tpu")
    if prefer in ("cpu", "mirrored"):
        # Explicitly the host's CPU, even where JAX's default platform is an accelerator; 'mirrored' is the TPU
        # stand-in of the tests: every virtual CPU device (XLA_FLAGS=--xla_force_host_platform_device_count=8).
        devices = jax.devices("cpu") if prefer == "mirrored" else jax.devices("cpu")[:1]
    else:
        devices = jax.devices()
    kind = devices[0].platform
    if tpu_expected and kind != "tpu":
        raise no_tpu(f"JAX sees no TPU (its devices: {kind} x{len(devices)})")
    if prefer == "gpu" and kind != "gpu":
        raise no_device(f"--device gpu, but JAX sees no GPU (its devices: {kind} x{len(devices)}): choose --device "
                        "cpu (or auto)")
    names = [f"{d.platform}:{d.id}" for d in devices]
    # Every run gets a distribution, one device included: variables are then placed on the chosen devices, not on
    # JAX's default platform (which may be a TPU when the CPU was chosen).
    distribution = keras.distribution.DataParallel(devices=names)
    keras.distribution.set_distribution(distribution)
    return kind, len(devices), distribution
