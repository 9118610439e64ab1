"""Promise 1 for every writer but the shard builder: it touches only files it planned, by exact name, in the exact
output location it was given; foreign files are refused by name or left byte-identical."""

import os

import numpy as np
import pytest
import tensorflow as tf

from steel_tpu import demo, storage
from steel_tpu.data import synth
from steel_tpu.formats.outputs import OutputError
from steel_tpu.formats.submission import parts_dir
from steel_tpu.formats.workdir import Workdir
from steel_tpu.reports import report
from steel_tpu.scoring import predict
from steel_tpu.tuning import tune

GLOBS = [("a*b", ["aXb", "a-b", "ab"]), ("a[1]", ["a1"]), ("a?", ["aa"])]


def _snapshot(root):
    """{relative path: bytes} of every file under `root` (local)."""
    return {os.path.relpath(os.path.join(d, n), root): open(os.path.join(d, n), "rb").read()
            for d, _, names in os.walk(root) for n in names}


def _gcs_snapshot(prefix):
    fs_root = prefix[len("gs://"):]
    import fsspec

    fs = fsspec.filesystem("gs")
    return {p: fs.cat_file(p) for p in fs.find(fs_root) if not p.endswith("/")}


def _predict(work, images, out, **kwargs):
    return predict.predict(workdir=work, images=images, out=str(out), progress=False, batch_size=8, **kwargs)


def _outside(after, name):
    return {k: v for k, v in after.items() if not k.startswith(name)}


# --- predict ---

@pytest.mark.parametrize("name, siblings", GLOBS)
def test_predict_out_is_literal_and_its_neighbours_stay(trained_workdir, tiny_data, tmp_path, name, siblings):
    images = os.path.join(tiny_data["data"], "test_images")
    for sibling in siblings:  # what a pattern would match: another submission, its parts and error list
        (tmp_path / f"{sibling}.csv").write_text("ImageId,EncodedPixels,ClassId\nmine,,1\n")
        (tmp_path / f"{sibling}.csv.errors.csv").write_text("image_id,reason\nx,mine\n")
        os.makedirs(tmp_path / f"{sibling}.csv.parts")
        (tmp_path / f"{sibling}.csv.parts" / "part-00000.csv").write_text("mine,,1\n")
        (tmp_path / f"{sibling}.csv.parts" / "plan.json").write_text("{}")
    (tmp_path / "notes.txt").write_text("mine")
    before = _snapshot(tmp_path)
    summary = _predict(trained_workdir, images, tmp_path / f"{name}.csv")
    assert summary["images"] == 8
    after = _snapshot(tmp_path)
    assert set(after) - set(before) == {f"{name}.csv"}  # the parts folder is gone, no error list
    assert _outside(after, f"{name}.csv") == before


def test_predict_refuses_a_parts_folder_with_foreign_files(trained_workdir, tiny_data, tmp_path):
    out = tmp_path / "sub.csv"
    os.makedirs(parts_dir(out))
    for name, data in (("notes.txt", b"mine"), ("part-00000.csv.bak", b"mine too")):
        (tmp_path / "sub.csv.parts" / name).write_bytes(data)
    (tmp_path / "sub.csv.parts" / "part-00001.csv").write_text("ours,,1\n")  # a committed chunk of ours
    before = _snapshot(tmp_path)
    with pytest.raises(OutputError, match=r"holds 2 file.s. predict did not write: notes.txt, part-00000.csv.bak"):
        _predict(trained_workdir, os.path.join(tiny_data["data"], "test_images"), out)
    assert _snapshot(tmp_path) == before


def test_predict_refuses_a_folder_as_out_before_any_work(tmp_path):
    (tmp_path / "out.csv").mkdir()
    with pytest.raises(OutputError, match="out.csv: is a folder"):
        _predict(str(tmp_path / "no_workdir"), str(tmp_path / "no_images"), tmp_path / "out.csv")
    (tmp_path / "file").write_text("mine")
    with pytest.raises(OutputError, match=r"file is a file, not a folder"):
        _predict(str(tmp_path / "no_workdir"), str(tmp_path / "no_images"), tmp_path / "file" / "out.csv")
    assert _snapshot(tmp_path) == {"file": b"mine"}


def test_a_failed_predict_leaves_no_old_submission(tmp_path):
    out = tmp_path / "out.csv"
    out.write_text("ImageId,EncodedPixels,ClassId\nold,,1\n")
    (tmp_path / "out.csv.errors.csv").write_text("image_id,reason\nold,bad\n")
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(FileNotFoundError, match="not a training workdir"):
        _predict(str(tmp_path / "no_workdir"), str(tmp_path), out)
    assert _snapshot(tmp_path) == {"keep.txt": b"mine"}


def test_predict_on_gcs_touches_only_its_own_objects(trained_workdir, tiny_data, gcs_bucket):
    images = os.path.join(tiny_data["data"], "test_images")
    for key in ("aXb.csv", "aXb.csv.errors.csv", "aXb.csv.parts/part-00000.csv", "a*b.csvX"):
        storage.write_text(f"{gcs_bucket}/{key}", "mine\n")
    storage.write_text(f"{gcs_bucket}/a*b.csv.parts/notes.txt", "mine\n")
    before = _gcs_snapshot(gcs_bucket)
    with pytest.raises(OutputError, match=r"predict did not write: notes.txt"):
        _predict(trained_workdir, images, f"{gcs_bucket}/a*b.csv")
    assert _gcs_snapshot(gcs_bucket) == before
    storage.remove(f"{gcs_bucket}/a*b.csv.parts/notes.txt")
    del before[f"{gcs_bucket[5:]}/a*b.csv.parts/notes.txt"]
    storage.write_text(f"{gcs_bucket}/a*b.csv", "old submission\n")
    assert _predict(trained_workdir, images, f"{gcs_bucket}/a*b.csv")["images"] == 8
    after = _gcs_snapshot(gcs_bucket)
    assert after.pop(f"{gcs_bucket[5:]}/a*b.csv").startswith(b"ImageId,EncodedPixels,ClassId\n")
    assert after == before


# --- report ---

def test_report_refuses_a_folder_of_other_files(trained_workdir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "holiday.png").write_bytes(b"mine")
    (out / "index.html").write_text("my own page")
    before = _snapshot(tmp_path)
    with pytest.raises(OutputError, match=r"holds 1 file.s. report did not write: holiday.png"):
        report.report(workdir=trained_workdir, out=str(out))
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("name, siblings", GLOBS[:2])
def test_report_out_is_literal_and_stale_figures_of_its_own_go(trained_workdir, tmp_path, name, siblings):
    for sibling in siblings:
        os.makedirs(tmp_path / sibling)
        (tmp_path / sibling / report.INDEX).write_text("another report")
        (tmp_path / sibling / "confusion.png").write_bytes(b"another figure")
    before = _snapshot(tmp_path)
    out = tmp_path / name
    out.mkdir()
    # An earlier report's figure that this run does not draw: the shared workdir is never tuned in place.
    (out / "tune_dice_vs_gate.png").write_bytes(b"an earlier report's figure")
    report.report(workdir=trained_workdir, out=str(out))
    after = _snapshot(tmp_path)
    assert _outside(after, name + os.sep) == before
    written = {k.split(os.sep, 1)[1] for k in after if k.startswith(name + os.sep)}
    assert report.INDEX in written and "tune_dice_vs_gate.png" not in written and written <= report.FILES


def test_report_on_gcs_touches_only_its_own_objects(trained_workdir, gcs_bucket):
    storage.write_text(f"{gcs_bucket}/aXb/{report.INDEX}", "another report")
    storage.write_text(f"{gcs_bucket}/a*b/notes.txt", "mine")
    before = _gcs_snapshot(gcs_bucket)
    with pytest.raises(OutputError, match="report did not write: notes.txt"):
        report.report(workdir=trained_workdir, out=f"{gcs_bucket}/a*b")
    assert _gcs_snapshot(gcs_bucket) == before
    storage.remove(f"{gcs_bucket}/a*b/notes.txt")
    index = report.report(workdir=trained_workdir, out=f"{gcs_bucket}/a*b")
    assert storage.read_text(index).startswith("<!DOCTYPE html>")
    after = _gcs_snapshot(gcs_bucket)
    assert {k: v for k, v in after.items() if "/a*b/" not in k} == {
        k: v for k, v in before.items() if "/a*b/" not in k}


# --- tune ---

def test_tune_writes_only_its_files_and_a_failed_tune_leaves_no_old_thresholds(trained_workdir, tmp_path):
    for sibling in ("aXb", "ab"):
        storage.write_text(Workdir(tmp_path / sibling).thresholds_path(), '{"mine": true}')
    out = tmp_path / "a*b"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    before = _snapshot(tmp_path)
    tune.tune(workdir=trained_workdir, out=str(out), plots=False)
    after = _snapshot(tmp_path)
    assert set(after) - set(before) == {os.path.join("a*b", n) for n in ("thresholds.json", "tune/plot_data.npz")}
    assert {k: after[k] for k in before} == before
    with pytest.raises(FileNotFoundError, match="no completed segment folds"):
        tune.tune(workdir=str(tmp_path / "empty"), out=str(out))
    assert _snapshot(tmp_path) == before  # tune's own files went; nothing else changed


def test_tune_refuses_a_file_as_out(tmp_path):
    (tmp_path / "f").write_text("mine")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        tune.tune(workdir=str(tmp_path), out=str(tmp_path / "f"))
    assert (tmp_path / "f").read_text() == "mine"


# --- synth and the demo ---

def test_synth_refuses_a_folder_that_is_not_empty(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match=r"not empty \(notes.txt\)"):
        synth.synthesize(tmp_path / "out", n_train=1, n_test=0)
    assert _snapshot(tmp_path) == {os.path.join("out", "notes.txt"): b"mine"}
    (tmp_path / "aXb").mkdir()
    (tmp_path / "aXb" / "notes.txt").write_text("mine")
    synth.synthesize(str(tmp_path / "a*b"), n_train=1, n_test=1)
    assert sorted(os.listdir(tmp_path / "aXb")) == ["notes.txt"]


def test_the_demo_clears_only_a_demo_folder(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="holds files a demo did not write"):
        demo._claim(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["data", "notes.txt"]
    out = tmp_path / "demo"
    demo._claim(str(out))
    (out / "work").mkdir()
    (out / "submission.csv").write_text("old")
    (out / "mine.txt").write_text("mine")
    demo._claim(str(out))
    assert sorted(os.listdir(out)) == [demo.MARKER, "mine.txt"]


# --- train's checkpoints ---

def test_checkpoints_are_pruned_by_exact_name(tmp_path):
    def save(work, times):
        wd, state = Workdir(work), tf.train.Checkpoint(v=tf.Variable(np.zeros(3, np.float32)))
        manager = wd.checkpoint_manager(state, "segment", 0)
        for _ in range(times):
            wd.prune_checkpoints("segment", 0, latest=manager.save())
        return wd

    sibling = save(str(tmp_path / "aXb"), 1)  # its ckpt-1 is what a pattern "a*b/.../ckpt-1.*" would match
    before = _snapshot(tmp_path)
    wd = save(str(tmp_path / "a*b"), 2)
    after = _snapshot(tmp_path)
    assert _outside(after, "a*b") == before  # TensorFlow's own pruning would have deleted aXb's ckpt-1 files
    names = sorted(os.listdir(wd.ckpt_dir("segment", 0)))
    assert names == ["checkpoint", "ckpt-2.data-00000-of-00001", "ckpt-2.index"]
    assert tf.train.latest_checkpoint(wd.ckpt_dir("segment", 0)).endswith("ckpt-2")
    assert sorted(os.listdir(sibling.ckpt_dir("segment", 0))) == ["checkpoint", "ckpt-1.data-00000-of-00001",
                                                                  "ckpt-1.index"]
