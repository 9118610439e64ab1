"""best.weights.h5: a fold's kept weights as Keras writes them (HDF5), refused by name when not HDF5 or not finite."""

import io
import os
import tempfile

import h5py
import numpy as np

from steel_tpu import storage


class WeightsError(ValueError):
    """A weights file that cannot be used (missing, unreadable, not finite, not the model's); named."""


def check(path, data):
    """Refuse weights bytes that are not HDF5 (garbage, truncated) or hold a non-finite number, naming `path`."""
    bad = []

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset) and obj.dtype.kind == "f" and not np.isfinite(obj[()]).all():
            bad.append(name)

    try:
        with h5py.File(io.BytesIO(data), "r") as f:
            f.visititems(visit)
    except OSError as error:
        raise WeightsError(f"{path}: not a readable HDF5 weights file ({error})") from None
    if bad:
        raise WeightsError(f"{path}: {len(bad)} weight array(s) hold NaN or inf (e.g. {bad[0]}); this fold "
                           "diverged and cannot be used")


def read_checked(path):
    """The bytes of the weights file `path`, checked (check); a missing one is named."""
    if not storage.exists(path):
        raise WeightsError(f"{path}: missing: the fold has no best weights (did any epoch finish?)")
    data = storage.read_bytes(path)
    check(path, data)
    return data


def save(model, path):
    """Keras writes HDF5 through h5py (local files only): write locally, then publish atomically."""
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, "model.weights.h5")
        model.save_weights(local)
        with open(local, "rb") as f:
            storage.write_bytes(path, f.read())


def load(model, path):
    """Load the weights file `path` into `model`; a missing, non-HDF5, non-finite or ill-fitting file is named."""
    data = read_checked(path)
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, "model.weights.h5")
        with open(local, "wb") as f:
            f.write(data)
        try:
            model.load_weights(local)
        except (ValueError, KeyError, OSError) as error:
            raise WeightsError(f"{path}: does not fit the model the workdir's config builds ({error})") from None
