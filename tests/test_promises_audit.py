"""The gaps an attacker's audit of the six promises found: a file as --workdir, a workdir resumed over other shards,
non-finite settings, workdir and predict files that are not what they claim, damaged shards (train, gs://), and
GCS errors in one line naming the bucket."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from steel_tpu import cli, config, storage
from steel_tpu.training import train

from steel_tpu.data.manifest import MANIFEST
from steel_tpu.data.shard_folder import ShardFolder
from steel_tpu.data.shards import build_shards
from steel_tpu.data.tfrecord import TFRecordError
from steel_tpu.device import distribute
from steel_tpu.formats.submission import PLAN, ChunkedSubmission, parts_dir
from steel_tpu.formats.oof import OofError
from steel_tpu.formats.workdir import SHARDS, Workdir, WorkdirError
from steel_tpu.tuning import plot_data

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _main(capsys, *argv):
    code = cli.main(list(argv))
    return code, capsys.readouterr().err.strip()


def _corrupt(path, offset=100):
    """Flip one byte inside the first record's data: same size (the cheap check passes), CRC fails on read."""
    data = bytearray(storage.read_bytes(path))
    data[offset] ^= 0xFF
    storage.write_bytes(path, bytes(data))


# --- promise 1 and 6: an unusable --workdir fails first, in one line naming it, and is left as it was ---

@pytest.mark.parametrize("where", ["w", "w/sub"])
def test_train_refuses_a_file_as_workdir_before_any_work(tmp_path, capsys, where):
    (tmp_path / "w").write_text("mine")
    code, err = _main(capsys, "train", "--shards", str(tmp_path / "no_shards"), "--workdir", str(tmp_path / where),
                      "--config", "tiny")
    assert code == 2 and err.count("\n") == 0
    assert f"--workdir {tmp_path / where}: {tmp_path / 'w'} is a file, not a folder" in err
    assert (tmp_path / "w").read_text() == "mine" and sorted(os.listdir(tmp_path)) == ["w"]


# --- promise 2/5: a workdir's folds all come from one shard folder ---

def test_a_workdir_refuses_other_shards_and_accepts_the_same_ones_moved(tiny_data, tmp_path):
    moved = str(tmp_path / "moved")
    shutil.copytree(tiny_data["shards"], moved)
    other = str(tmp_path / "other")
    shutil.copytree(tiny_data["shards"], other)
    doc = json.loads((tmp_path / "other" / MANIFEST).read_text())
    doc["shards"][0]["sha256"] = "0" * 64  # one shard's content differs: other data, same names and sizes
    (tmp_path / "other" / MANIFEST).write_text(json.dumps(doc))

    wd = Workdir(str(tmp_path / "work"))
    wd.bind_shards(ShardFolder.open(tiny_data["shards"]))
    recorded = (tmp_path / "work" / SHARDS).read_bytes()
    wd.bind_shards(ShardFolder.open(moved))  # the same shards elsewhere (copied to a disk, to gs://) are the same
    with pytest.raises(WorkdirError, match=rf"{SHARDS}: this workdir was trained on other shards .*not {other}"):
        wd.bind_shards(ShardFolder.open(other))
    assert (tmp_path / "work" / SHARDS).read_bytes() == recorded


def test_train_over_other_shards_stops_before_any_fold(tiny_data, tiny_config, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / SHARDS).write_text(json.dumps({"path": "gs://elsewhere/shards", "fingerprint": "0" * 64}))
    with pytest.raises(WorkdirError, match=r"trained on other shards \(gs://elsewhere/shards\)"):
        train.run(shards=tiny_data["shards"], workdir=str(work), cfg=tiny_config, folds=(0,),
                  device=distribute.select_strategy())
    assert not (work / "classify").exists() and not (work / "segment").exists()


# --- promise 5: numeric settings have sane bounds; NaN and inf are never a setting ---

@pytest.mark.parametrize("item, message", [
    ("segment.train.learning_rate=1e999", "learning_rate must be a finite number"),
    ("segment.train.warmup_epochs=1e999", "warmup_epochs must be a finite number"),
    ("classify.train.pos_weight=[1.0, 1.0, 1.0, 1e999]", "pos_weight=.*: must be None, \"auto\" or 4 finite numbers > 0"),
    ("seed=-1", "seed=-1: must be >= 0"),
])
def test_non_finite_or_negative_settings_are_refused(item, message):
    with pytest.raises(ValueError, match=message):
        config.apply_overrides(config.preset("tiny"), [item])


@pytest.mark.parametrize("argv", [
    ["shards", "--data", "d", "--out", "o", "--shard-mb", "nan"],
    ["shards", "--data", "d", "--out", "o", "--shard-mb", "inf"],
    ["report", "--workdir", "w", "--out", "o", "--examples", "-1"],
    ["predict", "--workdir", "w", "--images", "i", "--out", "o", "--chunk-size", "0"],
    ["verify", "--shards", "s", "--workers", "0"],
    ["shards", "--data", "d", "--out", "o", "--workers", "100000"],
])
def test_numeric_options_out_of_bounds_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2 and "error: argument" in capsys.readouterr().err


# --- promise 6: a file that is not what it claims is named ---

def test_a_config_json_of_another_shape_is_named(tmp_path):
    doc = json.loads(config.to_json(config.preset("tiny")))
    del doc["segment"]["train"]["epochs"]
    (tmp_path / "config.json").write_text(json.dumps(doc))
    with pytest.raises(WorkdirError, match=r"config.json: not a valid config file \(segment.train.: missing keys"):
        Workdir(str(tmp_path)).config()


def test_broken_tune_plot_data_is_named(tmp_path):
    (tmp_path / plot_data.PLOT_DATA).write_bytes(b"not an npz")
    with pytest.raises(ValueError, match=rf"{plot_data.PLOT_DATA}: not tune's plot data"):
        plot_data.load(str(tmp_path))


def test_an_unreadable_predict_plan_is_predicts_own_and_means_starting_over(tmp_path):
    out = str(tmp_path / "sub.csv")
    os.makedirs(parts_dir(out))
    (tmp_path / "sub.csv.parts" / PLAN).write_bytes(b"\x00garbage{")
    (tmp_path / "sub.csv.parts" / "part-00000.csv").write_text("stale,,1\n")
    submission = ChunkedSubmission(out, plan={"images": ["a"]})
    assert submission.committed() == set()
    assert json.loads((tmp_path / "sub.csv.parts" / PLAN).read_text())["digest"] == submission.digest


# --- promise 6: a damaged shard record is named (train locally; predict on gs://) ---

@pytest.mark.slow
def test_train_names_a_damaged_training_shard(tiny_data, tiny_config, tmp_path):
    shards = str(tmp_path / "shards")
    shutil.copytree(tiny_data["shards"], shards)
    folder = ShardFolder.open(shards)
    damaged = folder.files(folds=[1])[0]
    _corrupt(damaged)
    folder.check()  # same size: only reading it finds the damage
    with pytest.raises(TFRecordError, match=rf"{damaged}: damaged shard \(record 0: data CRC mismatch"):
        train.run(shards=shards, workdir=str(tmp_path / "work"), cfg=tiny_config, tasks=("classify",), folds=(0,),
                  device=distribute.select_strategy())
    assert not (tmp_path / "work" / "classify" / "fold0" / "done.json").exists()


def test_predict_names_a_damaged_shard_on_gcs(trained_workdir, tiny_data, gcs_bucket, capsys):
    shards = f"{gcs_bucket}/test_shards"
    build_shards(data=os.path.join(tiny_data["data"], "test_images"), out=shards, split="test", shard_mb=1,
                 progress=False)
    damaged = ShardFolder.open(shards).files()[0]
    _corrupt(damaged)
    out = f"{gcs_bucket}/sub.csv"
    code, err = _main(capsys, "predict", "--workdir", trained_workdir, "--images", shards, "--out", out,
                      "--batch-size", "8")
    assert code == 2 and err.count("\n") == 0
    assert f"error: {damaged}: damaged shard (record 0: data CRC mismatch" in err
    assert not storage.exists(out)


# --- promise 6 on gs://: bad JSON, a missing bucket, an unreachable endpoint, each one line naming it ---

def test_bad_json_manifest_on_gcs_is_named(gcs_bucket, capsys):
    storage.write_text(f"{gcs_bucket}/s/{MANIFEST}", "{not json")
    code, err = _main(capsys, "train", "--shards", f"{gcs_bucket}/s", "--workdir", f"{gcs_bucket}/w",
                      "--config", "tiny")
    assert code == 2 and err.count("\n") == 0
    assert f"{gcs_bucket}/s/{MANIFEST}: not valid JSON" in err
    assert storage.listdir(gcs_bucket) == [f"{gcs_bucket}/s"]  # no workdir was started


def test_a_missing_bucket_is_named(gcs_server, capsys):
    code, err = _main(capsys, "verify", "--shards", "gs://no-such-bucket-steel/shards")
    assert code == 2 and err.count("\n") == 0 and "gs://no-such-bucket-steel/shards" in err


@pytest.mark.slow
def test_an_unreachable_gcs_endpoint_is_one_line_naming_the_bucket(tmp_path):
    # gcsfs retries six times with back-off (about a minute) before it gives up: slow, hence marked.
    env = {**os.environ, "PYTHONPATH": REPO, "STORAGE_EMULATOR_HOST": "http://127.0.0.1:9",
           "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false", "FSSPEC_GCS_TOKEN": "anon"}
    result = subprocess.run([sys.executable, "-m", "steel_tpu", "verify", "--shards", "gs://some-bucket/shards"],
                            env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0, result.stderr  # gcsfs' own traceback is not shown
    assert "gs://some-bucket: cannot reach Google Cloud Storage" in result.stderr
    assert "gcloud auth application-default login" in result.stderr


# --- promise 5: a thresholds file's values are what they look like, or refused naming the file ---

@pytest.mark.parametrize("min_area, problem", [
    ([0, 0, 0, 1e999], "list of finite numbers"),  # json writes Infinity: int() of it would be an OverflowError
    ([0, 0, 0, 600.5], "whole pixel counts"),
    ([0, 0, 0, "600"], "list of finite numbers"),
    ([0, 0, 0, True], "list of finite numbers"),
])
def test_thresholds_values_are_strict(tmp_path, min_area, problem):
    from steel_tpu.formats import thresholds as thresholds_format

    path = tmp_path / "t.json"
    path.write_text(json.dumps({"pixel_threshold": [0.5] * 4, "min_area": min_area, "gate": []}))
    with pytest.raises(ValueError, match=rf"t.json: not a valid thresholds file: .*{problem}"):
        thresholds_format.read(str(path))


def test_swapped_csv_columns_are_one_short_line(tmp_path, capsys):
    truth, pred = tmp_path / "truth.csv", tmp_path / "pred.csv"
    truth.write_text("ImageId,ClassId,EncodedPixels\na.jpg,1,1 2\n")
    pred.write_text("ImageId,ClassId,EncodedPixels\na.jpg," + " ".join(str(i) for i in range(1, 400, 2)) + ",1\n")
    code, err = _main(capsys, "evaluate", "--pred", str(pred), "--truth", str(truth))
    assert code == 2 and err.count("\n") == 0 and len(err) < 300
    assert f"{pred} line 2 (image a.jpg): class '1 3 5" in err and "columns swapped" in err


def test_an_oof_file_missing_arrays_or_rows_is_named(tmp_path):
    wd = Workdir(str(tmp_path))
    wd.save_oof("classify", 0, image_ids=np.array(["a.jpg", "b.jpg"]), labels=np.zeros((2, 4), bool))
    with pytest.raises(OofError, match=r"classify/fold0/oof.npz: not a classify out-of-fold file \(missing "
                                           r"\['probs'\]"):
        wd.oof("classify", 0)
    wd.save_oof("classify", 0, image_ids=np.array(["a.jpg", "b.jpg"]), labels=np.zeros((2, 4), bool),
                probs=np.zeros((3, 1), np.float32))
    with pytest.raises(OofError, match=r"row counts \[2, 3\]"):
        wd.oof("classify", 0)


@pytest.mark.parametrize("where", ["f", "f/shards"])
def test_shards_refuses_a_file_as_out_before_scanning(tmp_path, capsys, where):
    (tmp_path / "f").write_text("mine")
    code, err = _main(capsys, "shards", "--data", str(tmp_path / "no_data"), "--out", str(tmp_path / where))
    assert code == 2 and f"--out {tmp_path / where}: {tmp_path / 'f'} is a file, not a folder" in err
    assert (tmp_path / "f").read_text() == "mine"
