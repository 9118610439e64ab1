"""The workdir's files: done means usable weights, unusable files named, old layouts and odd paths still read."""

import os
import re

import h5py
import numpy as np
import pytest

from steel_tpu import config as config_lib
from steel_tpu import storage
from steel_tpu.formats.thresholds import ThresholdsError
from steel_tpu.formats.oof import OofError
from steel_tpu.formats.weights import WeightsError
from steel_tpu.formats.workdir import Workdir, WorkdirError
from steel_tpu.keras_api import keras


def _model():
    return keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])


def test_done_needs_finite_best_weights(tmp_path):
    wd = Workdir(tmp_path / "w")
    with pytest.raises(WeightsError, match=r"best\.weights\.h5: missing"):
        wd.mark_done("segment", 0, {"epochs": 0})  # e.g. epochs=0: no epoch ever kept weights
    assert wd.done("segment", 0) is None
    model = _model()
    wd.save_weights(model, "segment", 0)
    with h5py.File(wd.weights_path("segment", 0), "r+") as f:
        name = []
        f.visititems(lambda n, o: name.append(n) if isinstance(o, h5py.Dataset) and o.dtype.kind == "f" else None)
        f[name[0]][...] = np.nan
    with pytest.raises(WeightsError, match="NaN or inf"):
        wd.mark_done("segment", 0, {})
    assert wd.completed_folds("segment") == []
    wd.save_weights(model, "segment", 0)
    assert wd.mark_done("segment", 0, {"best": 0.5}) == wd.done("segment", 0) == {"best": 0.5}
    assert wd.completed_folds("segment") == [0]


@pytest.mark.parametrize("garbage", [b"not an hdf5 file at all", None])
def test_unreadable_weights_are_refused_naming_the_file(tmp_path, garbage):
    wd = Workdir(tmp_path)
    wd.save_weights(_model(), "classify", 1)
    path = wd.weights_path("classify", 1)
    data = storage.read_bytes(path)
    storage.write_bytes(path, garbage if garbage is not None else data[: len(data) // 2])  # None: truncated
    with pytest.raises(WeightsError, match=re.escape(f"{path}: not a readable HDF5 weights file")):
        wd.load_weights(_model(), "classify", 1)


def test_an_old_workdir_with_pattern_characters_in_its_path_still_reads(tmp_path):
    # Written by plain paths, as earlier versions laid it out; "[" and "*" must not act as glob patterns.
    root = tmp_path / "run[1]*"
    for fold in (0, 2):
        os.makedirs(root / "segment" / f"fold{fold}")
        (root / "segment" / f"fold{fold}" / "log.csv").write_text("epoch,loss,dice\n0,0.5,0.1\n1,0.4,0.2\n")
    (root / "segment" / "fold2" / "done.json").write_text("{}")
    os.makedirs(root / "segment" / "fold_notes")
    cfg = config_lib.preset("tiny")
    (root / "config.json").write_text(config_lib.to_json(cfg))
    wd = Workdir(str(root))
    assert wd.config() == cfg
    assert wd.folds("segment") == [0, 2] and wd.completed_folds("segment") == [2] and wd.folds("classify") == []
    assert wd.read_log("segment", 0) == [{"epoch": 0, "loss": 0.5, "dice": 0.1}, {"epoch": 1, "loss": 0.4, "dice": 0.2}]
    assert wd.done("segment", 2) == {} and wd.thresholds() is None


def test_bad_files_are_named(tmp_path):
    wd = Workdir(tmp_path)
    wd.write_log("classify", 0, [{"epoch": 0, "loss": 0.5}])
    storage.write_text(wd.log_path("classify", 0), "epoch,loss\n0,0.5\n1,oops\n")
    with pytest.raises(WorkdirError, match=r"log\.csv: line 3"):
        wd.read_log("classify", 0)
    storage.write_text(wd.thresholds_path(), "{not json")
    with pytest.raises(ThresholdsError, match=r"thresholds\.json: not a valid thresholds file"):
        wd.thresholds()
    storage.write_bytes(wd.oof_path("segment", 0), b"garbage")
    with pytest.raises(OofError, match=r"oof\.npz: not a readable out-of-fold file"):
        wd.oof("segment", 0)
