"""The JAX half of the cross-backend tests: `python -m tests.jax_side CASE IN.npz OUT.npz`, run by
tests/test_jax_backend.py with KERAS_BACKEND=jax (a process has one Keras backend)."""

import json
import sys

import numpy as np


def _device(prefer):
    from steel_tpu.device import distribute

    return distribute.select_strategy(prefer=prefer, verbose=False)


def step(args):
    """One train step (no augmentation) from given weights: losses and weights after."""
    from tests import backend_cases

    weights = [args[k] for k in sorted(k for k in args if k.startswith("w"))]
    got, after, _ = backend_cases.train(_device("cpu"), weights=weights, loss=str(args["loss"]), steps=1)
    return {"losses": np.array(got), **{f"w{i:03d}": w for i, w in enumerate(after)}}


def devices(args):
    """Augmented SGD steps with batch_dice and an EMA on every virtual device, then on one: both runs' results.

    SGD, not Adam: Adam divides each update by the gradient's running RMS, so a weight whose gradient is near zero
    (a channel ReLU keeps dark) moves by up to a full step on the rounding noise of the 8-way reduction, which
    depends on the machine's load; SGD carries the gradients' own tiny differences."""
    from tests import backend_cases

    weights = [args[k] for k in sorted(k for k in args if k.startswith("w"))]
    out = {}
    for name, prefer in (("all", "mirrored"), ("one", "cpu")):
        device = _device(prefer)
        got, after, ema = backend_cases.train(device, weights=weights, loss="bce+batch_dice", steps=3,
                                              augmented=True, ema=0.5)
        out[f"{name}_replicas"] = np.array(device.replicas)
        out[f"{name}_losses"] = np.array(got)
        out.update({f"{name}_w{i:03d}": w for i, w in enumerate(after)})
        out.update({f"{name}_ema{i:03d}": w for i, w in enumerate(ema)})
    return out


def augment(args):
    """augment_batch with the TensorFlow run's draws replayed."""
    from steel_tpu.device import augment as augment_lib
    from tests import backend_cases

    draws = [args[k] for k in sorted(k for k in args if k.startswith("d"))]
    images, masks = augment_lib.augment_batch(args["images"], args["masks"], seed=backend_cases.Replay(draws),
                                              config=backend_cases.CROP)
    return {"images": np.asarray(images), "masks": np.asarray(masks)}


def forward(args):
    """A workdir fold model's device forward (full-resolution uint8 maps) on the given images."""
    from steel_tpu import tasks
    from steel_tpu.device import steps as device_steps
    from steel_tpu.formats.workdir import Workdir

    request = json.loads(str(args["request"]))
    wd, device = Workdir(request["workdir"]), _device("cpu")
    spec = tasks.make(request["task"], wd.config())
    model = wd.load_model(spec, request["fold"], strategy=device.strategy)
    predict = device_steps.predict_step(device=device, forward=spec.forward(model), models=[model])
    return {"maps": predict(args["images"])}


CASES = {"step": step, "devices": devices, "augment": augment, "forward": forward}

if __name__ == "__main__":
    from steel_tpu import backend

    backend.activate("jax")
    case, source, target = sys.argv[1:]
    with np.load(source) as npz:
        inputs = {k: npz[k] for k in npz.files}
    np.savez(target, **CASES[case](inputs))
