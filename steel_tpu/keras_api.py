"""The Keras the package builds on: Keras 3, or tf-keras (Keras 2) when TF_USE_LEGACY_KERAS=1, and their differences."""

import os

# The same test TensorFlow makes for tf.keras, so the package and tf.keras never disagree on which Keras runs.
LEGACY = os.environ.get("TF_USE_LEGACY_KERAS") in ("true", "True", "1")

if LEGACY:
    # tf-keras is the documented fallback for TPU runtimes where Keras 3 misbehaves (pip install steel_tpu[legacy]).
    try:
        import tf_keras as keras
    except ImportError as error:
        raise ImportError("TF_USE_LEGACY_KERAS=1 needs tf-keras: pip install steel_tpu[legacy]") from error
else:
    import keras

# Device code is written once in Keras 3's ops, which run on both backends; under tf-keras, Keras 3 (a dependency of
# TensorFlow) is loaded beside it on the TensorFlow backend, and its ops act on the same tf tensors.
import keras as _keras3  # noqa: E402
from keras import ops  # noqa: E402

if LEGACY and _keras3.backend.backend() != "tensorflow":
    raise ImportError("TF_USE_LEGACY_KERAS=1 runs on TensorFlow only: unset KERAS_BACKEND=jax")

__all__ = ["LEGACY", "keras", "ops", "backend", "describe", "loss_scale_optimizer", "scale_loss",
           "unscale_gradients", "optimizer_built"]


def backend() -> str:
    """The backend running the device side: 'tf' or 'jax' (tf-keras always runs on TensorFlow)."""
    from steel_tpu import backend as choice

    return "tf" if LEGACY else choice.ours(_keras3.backend.backend())


def describe() -> str:
    """'Keras 3.15.1' or 'tf-keras 2.20.1 (TF_USE_LEGACY_KERAS=1)', for what a run prints about itself."""
    return f"tf-keras {keras.__version__} (TF_USE_LEGACY_KERAS=1)" if LEGACY else f"Keras {keras.__version__}"


def loss_scale_optimizer(optimizer):
    """Dynamic loss scaling around `optimizer`."""
    return keras.mixed_precision.LossScaleOptimizer(optimizer)


def scale_loss(optimizer, loss):
    """The loss to differentiate: multiplied by the loss scale when `optimizer` scales losses, else `loss`."""
    if hasattr(optimizer, "get_scaled_loss"):  # tf-keras' LossScaleOptimizer
        return optimizer.get_scaled_loss(loss)
    # Keras 3: a LossScaleOptimizer multiplies, a plain optimizer returns the loss as it is.
    return optimizer.scale_loss(loss) if hasattr(optimizer, "scale_loss") else loss


def unscale_gradients(optimizer, grads):
    """Gradients to apply: tf-keras leaves unscaling to the caller, Keras 3's apply_gradients does it itself."""
    if hasattr(optimizer, "get_unscaled_gradients"):
        return optimizer.get_unscaled_gradients(grads)
    return grads


def optimizer_built(optimizer) -> bool:
    """Whether the optimizer's slot variables exist (Keras 3 `built`, tf-keras `_built`)."""
    return bool(getattr(optimizer, "built", getattr(optimizer, "_built", False)))
