"""Which Keras backend runs the device side (`--backend`): TensorFlow or JAX, fixed before Keras loads."""

import os
import sys

from steel_tpu import install
from steel_tpu.config.choices import BACKENDS as CHOICES

KERAS_NAMES = {"tf": "tensorflow", "jax": "jax"}
# TensorFlow distributions that can drive a TPU; any other TensorFlow on a TPU host only feeds tf.data.
_TF_TPU = ("tensorflow-tpu", "tf-nightly-tpu")


class BackendError(ValueError):
    """The backend asked for cannot run in this process (a ValueError: the CLI prints it as one line)."""


def choose(setting="auto", *, environ=None, host=None):
    """'tf' or 'jax' for a `setting` from CHOICES.

    auto: KERAS_BACKEND when the user set it (Keras' own switch); else JAX on a TPU host whose TensorFlow cannot
    reach the TPU (Colab's and Kaggle's TPU runtimes ship JAX + libtpu and no TensorFlow TPU stack), TensorFlow
    everywhere else (CPU, GPU, a TPU VM with tensorflow-tpu).
    """
    if setting not in CHOICES:
        raise BackendError(f"backend={setting!r}: expected one of {', '.join(CHOICES)}")
    if setting != "auto":
        return setting
    environ = os.environ if environ is None else environ
    named = environ.get("KERAS_BACKEND", "")
    if named in KERAS_NAMES.values():
        return ours(named)
    host = install.probe(environ=environ) if host is None else host
    if host.tpu and host.jax and not set(_TF_TPU) & set(host.tensorflow):
        return "jax"
    return "tf"


def ours(keras_name):
    """'tf' / 'jax' for a name keras.backend.backend() returns (any other name as it is)."""
    return {v: k for k, v in KERAS_NAMES.items()}.get(keras_name, keras_name)


def loaded():
    """The backend of the Keras this process already imported ('tf' / 'jax'), or None before `import keras`."""
    keras = sys.modules.get("keras")
    if keras is None or not hasattr(keras, "backend"):
        return None
    return ours(keras.backend.backend())


def activate(name):
    """Make `name` ('tf' / 'jax') the backend of every Keras model this process builds; returns it.

    Keras reads KERAS_BACKEND once, at import: a process (a notebook kernel) that already loaded Keras with
    another backend cannot switch, and is refused in one line instead of mixing arrays of two frameworks.
    """
    if name not in KERAS_NAMES:
        raise BackendError(f"backend={name!r}: expected tf or jax")
    if name == "jax" and os.environ.get("TF_USE_LEGACY_KERAS") in ("true", "True", "1"):
        raise BackendError("backend=jax with TF_USE_LEGACY_KERAS=1: tf-keras runs on TensorFlow only; unset "
                           "TF_USE_LEGACY_KERAS or choose --backend tf")
    have = loaded()
    if have is not None and have != name:
        raise BackendError(f"backend={name}: Keras is already loaded with the {KERAS_NAMES.get(have, have)} backend "
                           f"in this process; set KERAS_BACKEND={KERAS_NAMES[name]} before anything imports keras "
                           "(in a notebook: restart the kernel)")
    os.environ["KERAS_BACKEND"] = KERAS_NAMES[name]
    return name


def use(setting="auto"):
    """choose() then activate(): what a command does first, before it imports anything that loads Keras."""
    return activate(choose(setting))


def refusal(cfg, *, tasks, running):
    """Why a config's `tasks` cannot train in a process running Keras on `running` ('tf' / 'jax'), or None."""
    if cfg.backend not in ("auto", running):
        return (f"backend={cfg.backend} but this process runs Keras on {running}: choose the backend before anything "
                "imports keras (steel-tpu train --backend, or steel_tpu.backend.use() first)")
    sm = [f"{task}.model.arch={getattr(cfg, task).model.arch}" for task in tasks
          if getattr(getattr(cfg, task).model, "arch", "").startswith("sm-")]
    if running == "jax" and sm:
        return (f"{', '.join(sm)}: segmentation-models builds on tf.keras and trains under the TensorFlow backend "
                "only: --backend tf, or an unetpp/unet arch")
    return None
