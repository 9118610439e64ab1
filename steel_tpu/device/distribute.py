"""Chooses the device: TPU connection, tf.distribute strategy (or, under JAX, a Keras DataParallel mesh,
jax_device.py) and precision policy; step.py and jax_step.py run the steps on it."""

import dataclasses
import glob
import importlib.metadata
import importlib.util
import json
import os

import tensorflow as tf

from steel_tpu import install, keras_api
from steel_tpu.keras_api import keras

KINDS = ("tpu", "gpu", "cpu")
PREFER = ("tpu", "gpu", "cpu", "mirrored")
# What to do when a TPU was asked for (or is detected) and cannot be reached: the one-line fix printed with the reason.
NO_TPU_FIX = (f"fix: on a TensorFlow TPU VM run `python -m steel_tpu.install --tensorflow-tpu` (tensorflow-tpu "
              f"{install.TF_VERSION} + libtpu {install.LIBTPU_VERSION}); to run on this machine's CPU or GPU instead, "
              "choose it explicitly: --device cpu or --device gpu (--set device=cpu|gpu in a config)")
NO_TPU_FIX_JAX = ("fix: on a Colab or Kaggle TPU runtime, use the image's own jax and libtpu (`python -m "
                  "steel_tpu.install` keeps them); to run on this machine's CPU or GPU instead, choose it explicitly: "
                  "--device cpu or --device gpu (--set device=cpu|gpu in a config)")


class DeviceUnavailable(ValueError):
    """The device asked for is not there: the run stops before anything is built, and the CLI says so in one line
    naming the flag that chooses another (a ValueError: cli/errors.py prints those as they are)."""


class TPUUnavailable(DeviceUnavailable):
    """A TPU was asked for or detected, and none could be reached."""


@dataclasses.dataclass(frozen=True)
class Device:
    """The chosen strategy, what it runs on and how many replicas it has.

    Under JAX, `strategy` is TensorFlow's default one (its scope() does nothing) and `distribution` the Keras
    DataParallel mesh: the host feeds one global batch, which Keras shards over the `replicas` devices.
    """

    strategy: tf.distribute.Strategy
    kind: str
    replicas: int
    backend: str = "tf"
    distribution: object = None

    @property
    def input_replicas(self):
        """How many per-replica batches make the global batch on the host: the replicas under TensorFlow (one
        pipeline slice each), 1 under JAX (one global batch, sharded on the way to the devices)."""
        return 1 if self.backend == "jax" else self.replicas


def tpu_detected(*, environ=None, accel_paths=None):
    """Whether this host looks like it has a TPU (Colab / Cloud TPU VM / TPU node variables, devices or libtpu)."""
    environ = os.environ if environ is None else environ
    accel_paths = glob.glob("/dev/accel*") + glob.glob("/dev/vfio/[0-9]*") if accel_paths is None else accel_paths
    has_libtpu = importlib.util.find_spec("libtpu") is not None
    return bool(set(install.TPU_ENV_VARS) & set(environ)) or bool(accel_paths) or has_libtpu


def tpu_candidates(tpu, *, environ=None):
    """TPU names to try, in order. An explicit name is tried alone."""
    environ = os.environ if environ is None else environ
    if tpu:
        return [tpu]
    # TPUClusterResolver() with no name raises ValueError on Colab TPU VMs, so 'local' (a TPU attached to this
    # VM) goes first; the named / grpc forms cover TPU nodes and old Colab runtimes.
    names = ["local"]
    if environ.get("TPU_NAME"):
        names.append(environ["TPU_NAME"])
    if environ.get("COLAB_TPU_ADDR"):
        names.append("grpc://" + environ["COLAB_TPU_ADDR"])
    return names


def _connect_tpu(names):
    errors = []
    for name in names:
        try:
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver.connect(tpu=name)
            return tf.distribute.TPUStrategy(resolver)
        except (ValueError, RuntimeError, tf.errors.OpError) as error:
            errors.append(f"tpu={name!r}: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}")
    raise TPUUnavailable("could not connect to a TPU; tried " + "; ".join(errors) + f" -- {NO_TPU_FIX}")


def _tf_config_workers(environ):
    raw = environ.get("TF_CONFIG")
    if not raw:
        return 0
    try:
        return len(json.loads(raw).get("cluster", {}).get("worker", []))
    except (json.JSONDecodeError, AttributeError) as error:
        raise ValueError(f"TF_CONFIG is not a JSON object with cluster.worker: {error}") from error


def _local_choice(prefer, environ):
    gpus = tf.config.list_physical_devices("GPU")
    kind = "gpu" if gpus else "cpu"
    # A multi-worker cluster beats local GPUs: MirroredStrategy would silently train on one host only.
    if prefer != "cpu" and _tf_config_workers(environ) > 1:
        return tf.distribute.MultiWorkerMirroredStrategy(), kind
    if prefer == "gpu" and not gpus:
        raise DeviceUnavailable("--device gpu, but TensorFlow sees no GPU: choose --device cpu (or auto)")
    if prefer == "mirrored" or (gpus and prefer != "cpu"):
        # With no GPU this mirrors over the logical CPU devices: the 8-core TPU stand-in used by the tests.
        return tf.distribute.MirroredStrategy(), kind
    return tf.distribute.get_strategy(), "cpu"


def prefer_for(setting):
    """A config's `device` setting (choices.DEVICES) as select_strategy's `prefer`: 'auto' detects."""
    return None if setting == "auto" else setting


# One strategy per choice for the life of the process: two MirroredStrategy objects reuse the same collective
# instance keys and abort each other's all-reduces ("Shape mismatch in the collective instance"), and a TPU
# system must not be initialised twice. Training then scoring in one notebook must share the strategy.
_CHOSEN = {}


def select_strategy(*, tpu=None, prefer=None, require_tpu=False, verbose=True):
    """Pick TPU (named or detected), multi-worker, local GPUs (Mirrored) or the default strategy (once per process).

    No silent fallback: a named `tpu`, `prefer='tpu'`, `require_tpu` (a TPU preset) or a host that looks like a TPU
    host with no TPU reachable raises TPUUnavailable (reason + fix). Running elsewhere is an explicit choice:
    `prefer='cpu'|'gpu'|'mirrored'` (config `device`), which also overrides `require_tpu`.
    """
    if prefer not in (None, *PREFER):
        raise ValueError(f"prefer={prefer!r}: expected one of {PREFER} or None")
    require_tpu = require_tpu and prefer in (None, "tpu")
    key = (tpu, prefer, require_tpu)
    if key not in _CHOSEN:
        _CHOSEN[key] = _choose(tpu=tpu, prefer=prefer, require_tpu=require_tpu)
    device = _CHOSEN[key]
    if verbose:
        print(summary(device))
    return device


def _choose(*, tpu, prefer, require_tpu):
    environ = os.environ
    if keras_api.backend() == "jax":
        from steel_tpu.device import jax_device

        expected = bool(tpu) or prefer == "tpu" or require_tpu or (prefer is None and tpu_detected(environ=environ))
        no_tpu = lambda reason: TPUUnavailable(f"{reason} -- {NO_TPU_FIX_JAX}")  # noqa: E731
        kind, replicas, distribution = jax_device.choose(prefer=prefer, tpu_expected=expected, no_tpu=no_tpu,
                                                         no_device=DeviceUnavailable)
        return Device(strategy=tf.distribute.get_strategy(), kind=kind, replicas=replicas, backend="jax",
                      distribution=distribution)
    if tpu or prefer == "tpu" or require_tpu or (prefer is None and tpu_detected(environ=environ)):
        if not tpu and not tpu_detected(environ=environ):
            # Nothing on this host says TPU: say so at once instead of waiting on connection attempts.
            raise TPUUnavailable(f"a TPU is required but this host shows none (no {'/'.join(install.TPU_ENV_VARS)}, "
                                 f"/dev/accel*, /dev/vfio/N or libtpu) -- {NO_TPU_FIX}")
        strategy, kind = _connect_tpu(tpu_candidates(tpu, environ=environ)), "tpu"
    else:
        strategy, kind = _local_choice(prefer, environ)
    return Device(strategy=strategy, kind=kind, replicas=strategy.num_replicas_in_sync)


def _version(distribution):
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def describe(device):
    """What a run used, for printing and for the workdir: device, replicas, precision and library versions."""
    tf_dists = install.probe().tensorflow
    return {
        "backend": device.backend,
        "device": device.kind,
        "strategy": type(device.distribution or device.strategy).__name__,
        "replicas": device.replicas,
        "precision": keras.mixed_precision.global_policy().name,
        "tensorflow": tf.__version__,
        "tensorflow_distributions": tf_dists,
        "keras": keras_api.describe(),
        "jax": _version("jax"),
        "libtpu": _version("libtpu") or _version("libtpu-nightly"),
    }


def summary(device):
    """One line: 'steel_tpu: backend jax, DataParallel on tpu, 8 replica(s), mixed_bfloat16, TensorFlow 2.20.0,
    Keras 3.13.2, JAX 0.7.2, libtpu 0.0.21.1' (precision: the Keras policy in force when called)."""
    d = describe(device)
    jax = f", JAX {d['jax']}" if device.backend == "jax" else ""
    return (f"steel_tpu: backend {d['backend']}, {d['strategy']} on {d['device']}, {d['replicas']} replica(s), "
            f"{d['precision']}, TensorFlow {d['tensorflow']}, {d['keras']}{jax}, "
            f"libtpu {d['libtpu'] or 'not installed'}")


def use_xla(device, requested=None):
    """Whether to jit-compile steps on `device`: `requested` if given, else everywhere but the CPU.

    XLA's CPU backend runs EfficientNet's depthwise convolutions ~6x slower than TensorFlow's own kernels
    (measured: 2 tiny B0 UNet++ at 64x320, 1.65 s vs 0.29 s a batch of 8); a TPU compiles everything anyway.
    """
    return device.kind != "cpu" if requested is None else requested


def set_precision(kind, *, gpu_float16=False):
    """Set Keras' global dtype policy for `kind` and return its name."""
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r}: expected one of {KINDS}")
    # bfloat16 is the TPU MXU's native input type and needs no loss scaling; float16 only pays on GPU tensor cores.
    policy = {"tpu": "mixed_bfloat16", "gpu": "mixed_float16" if gpu_float16 else "float32", "cpu": "float32"}[kind]
    keras.mixed_precision.set_global_policy(policy)
    return policy


def wrap_optimizer(optimizer, policy):
    """Add dynamic loss scaling where `policy` computes in float16 (its gradients underflow otherwise)."""
    name = policy if isinstance(policy, str) else policy.name
    if name == "mixed_float16":
        return keras_api.loss_scale_optimizer(optimizer)
    return optimizer


def per_replica_batch_size(device, global_batch_size):
    """global / replicas, refusing a remainder (every replica must see the same static batch shape)."""
    if global_batch_size <= 0 or global_batch_size % device.replicas:
        raise ValueError(
            f"global batch size {global_batch_size} must be a positive multiple of the "
            f"{device.replicas} replicas of {type(device.strategy).__name__}"
        )
    return global_batch_size // device.replicas


def distribute_dataset(device, dataset_fn, *, global_batch_size):
    """A distributed dataset from `dataset_fn(input_context)`, which yields per-replica batches of
    `input_context.get_per_replica_batch_size(global_batch_size)` rows (what pipeline.train_dataset does)."""
    per_replica_batch_size(device, global_batch_size)  # refuse a remainder before any pipeline is built
    return device.strategy.distribute_datasets_from_function(dataset_fn)
