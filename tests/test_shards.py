"""Shard builder: round trip through real TFRecords, folds, manifest, bad input, resume, CLI, gs://."""

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from steel_tpu import cli, storage
from steel_tpu.data import example
from steel_tpu.data.manifest import MANIFEST, PLAN
from steel_tpu.data.shards import build_shards
from steel_tpu.data.source import SourceError
from steel_tpu.data.synth import synthesize
from steel_tpu.data.verify import VerifyError, verify
from steel_tpu.formats import kaggle, rle

N_TRAIN, N_TEST, K = 40, 8, 5
SHARD_MB = 0.3  # ~80 KB synthetic JPEGs: two shards per fold of 8 images
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    data = tmp_path_factory.mktemp("synth")
    synthesize(str(data), n_train=N_TRAIN, n_test=N_TEST, seed=3)
    return str(data)


@pytest.fixture(scope="module")
def built(source, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("shards"))
    summary = build_shards(data=source, out=out, folds=K, seed=0, shard_mb=SHARD_MB, progress=False)
    return out, summary


@pytest.fixture
def copy(source, tmp_path):
    """A private copy of the synthetic source that a test may break."""
    data = tmp_path / "data"
    shutil.copytree(source, data)
    return data


def _records(out, pattern="*.tfrec"):
    """(shard name, parsed record as numpy) for every record, read back by TensorFlow's own reader and parser."""
    for path in sorted(tf.io.gfile.glob(os.path.join(out, pattern))):
        for parsed in tf.data.TFRecordDataset(path).map(example.parse):
            yield os.path.basename(path), {k: v.numpy() for k, v in parsed.items()}


def _manifest(out):
    with open(os.path.join(out, MANIFEST)) as f:
        return json.load(f)


def _shard_files(out):
    return sorted(n for n in os.listdir(out) if n.endswith(".tfrec"))


def test_round_trip_bytes_masks_and_one_fold_per_image(source, built):
    out, summary = built
    labels = kaggle.read_labels(os.path.join(source, "train.csv"))
    images = sorted(os.listdir(os.path.join(source, "train_images")))
    seen = {}
    for name, record in _records(out):
        image_id = record[example.IMAGE_ID].decode()
        assert image_id not in seen, f"{image_id} in {seen.get(image_id)} and {name}"
        seen[image_id] = name
        with open(os.path.join(source, "train_images", image_id), "rb") as f:
            assert record[example.IMAGE] == f.read()
        truth = labels.rles.get(image_id, kaggle.EMPTY)
        for c, (stored, expected) in enumerate(zip(record[example.RLE], truth)):
            np.testing.assert_array_equal(rle.decode(stored.decode()), rle.decode(expected))
            assert record[example.AREA][c] == rle.area(expected)
            assert record[example.PRESENT][c] == int(bool(expected))
        assert re.fullmatch(rf"train-f{record[example.FOLD]}-\d{{5}}-of-\d{{5}}\.tfrec", name)
        assert (record[example.HEIGHT], record[example.WIDTH]) == (256, 1600)
    assert sorted(seen) == images  # every image, clean ones (no CSV rows) included, exactly once
    assert len(set(labels.image_ids)) < len(images)
    assert summary.images == N_TRAIN and summary.kept == 0


def test_records_decode_in_tensorflow(built):
    out, _ = built
    _, record = next(_records(out))
    assert tf.io.decode_jpeg(record[example.IMAGE], channels=3).shape == (256, 1600, 3)


def test_manifest_counts_checksums_and_balanced_folds(source, built):
    out, _ = built
    manifest = _manifest(out)
    with open(os.path.join(source, "train.csv"), "rb") as f:
        assert manifest["csv_sha256"] == hashlib.sha256(f.read()).hexdigest()
    assert (manifest["schema_version"], manifest["folds"], manifest["seed"]) == (example.SCHEMA_VERSION, K, 0)
    assert [s["name"] for s in manifest["shards"]] == _shard_files(out)
    per_shard = {}
    for name, record in _records(out):
        counts = per_shard.setdefault(name, np.zeros(5, dtype=int))
        counts += [1, *record[example.PRESENT]]
    for entry in manifest["shards"]:
        with open(os.path.join(out, entry["name"]), "rb") as f:
            data = f.read()
        assert entry["sha256"] == hashlib.sha256(data).hexdigest() and entry["bytes"] == len(data)
        assert [entry["records"], *entry["class_counts"]] == per_shard[entry["name"]].tolist()
    folds = np.array([[t["records"], *t["class_counts"]] for t in manifest["fold_totals"]])
    assert len(folds) == K and (folds.max(0) - folds.min(0) <= 1).all(), folds
    assert all(t["shards"] == 2 for t in manifest["fold_totals"])  # ~0.66 MB a fold at 0.3 MB a shard
    assert manifest["records"] == N_TRAIN and manifest["skipped"] == []


def test_same_inputs_give_identical_shards(source, built, tmp_path):
    out, _ = built
    build_shards(data=source, out=str(tmp_path), folds=K, seed=0, shard_mb=SHARD_MB, progress=False, workers=1)
    assert _manifest(tmp_path)["shards"] == _manifest(out)["shards"]
    build_shards(data=source, out=str(tmp_path), folds=K, seed=1, shard_mb=SHARD_MB, progress=False, overwrite=True)
    assert _manifest(tmp_path)["plan_sha256"] != _manifest(out)["plan_sha256"]


def test_verify_passes_with_source(source, built):
    out, _ = built
    report = verify(out, data=source)
    assert (report.shards, report.records) == (2 * K, N_TRAIN)
    assert "OK" in str(report)


def test_test_split_has_no_masks(source, tmp_path):
    summary = build_shards(data=os.path.join(source, "test_images"), out=str(tmp_path), split="test", progress=False)
    assert _shard_files(tmp_path) == ["test-00000-of-00001.tfrec"] and summary.images == N_TEST
    for _, record in _records(str(tmp_path)):
        assert record[example.FOLD] == -1 and list(record[example.RLE]) == [b""] * 4
        assert not record[example.AREA].any()
    # A Kaggle-layout folder works too: its test_images/ is found.
    assert verify(str(tmp_path), data=source).records == N_TEST


# --- bad input: a clear error naming the problem, nothing that looks complete -----------------------------


def _fails(data, out, match, error=ValueError, **kwargs):
    """Build, expect `error`, check nothing that looks complete is left in `out`; return the message."""
    with pytest.raises(error, match=match) as info:
        build_shards(data=str(data), out=str(out), folds=K, shard_mb=SHARD_MB, progress=False, **kwargs)
    assert not os.path.exists(os.path.join(out, MANIFEST)) and not (os.path.exists(out) and _shard_files(out))
    return str(info.value)


def test_csv_problem_names_line_and_image(copy, tmp_path):
    with open(copy / "train.csv", "a") as f:
        f.write("0123456789.jpg,7,1 5\n")
    _fails(copy, tmp_path / "out", r"train\.csv line \d+ \(image 0123456789\.jpg\).*class 7", kaggle.CsvError)


def test_every_missing_image_is_named(copy, tmp_path):
    missing = sorted(os.listdir(copy / "train_images"))[:3]
    for image_id in missing:
        os.remove(copy / "train_images" / image_id)
    labels = kaggle.read_labels(copy / "train.csv")
    rles = {**labels.rles, **{i: ("1 10", "", "", "") for i in missing}}  # listed in the CSV for sure
    kaggle.write_train_csv(copy / "train.csv", kaggle.Labels.from_mapping(rles))
    message = _fails(copy, tmp_path / "out", r"^3 bad image\(s\)")
    for image_id in missing:
        assert f"{image_id}: listed in {copy / 'train.csv'} but missing from {copy / 'train_images'}" in message


def test_non_jpeg_wrong_size_and_truncated_are_named(copy, tmp_path):
    images = copy / "train_images"
    gray = np.zeros((256, 1600, 3), dtype=np.uint8)
    Image.fromarray(gray).save(images / "aaaaaaaa1.jpg", format="PNG")
    (images / "aaaaaaaa2.jpg").write_text("not an image")
    Image.fromarray(gray[:, :800]).save(images / "aaaaaaaa3.jpg", format="JPEG")
    Image.fromarray(gray).save(images / "aaaaaaaa4.jpg", format="JPEG")
    (images / "aaaaaaaa4.jpg").write_bytes((images / "aaaaaaaa4.jpg").read_bytes()[:-100])
    message = _fails(copy, tmp_path / "out", r"^4 bad image\(s\)")
    assert "aaaaaaaa1.jpg: not a JPEG (PNG)" in message
    assert "aaaaaaaa2.jpg: not a JPEG" in message
    assert "aaaaaaaa3.jpg: 800x256, expected 1600x256" in message
    assert "aaaaaaaa4.jpg: truncated JPEG" in message


def test_empty_source(tmp_path):
    (tmp_path / "data" / "train_images").mkdir(parents=True)
    (tmp_path / "data" / "train.csv").write_text("ImageId,ClassId,EncodedPixels\n")
    _fails(tmp_path / "data", tmp_path / "out", "empty source")
    _fails(tmp_path / "data" / "train_images", tmp_path / "out", "empty source", split="test")
    _fails(tmp_path / "nowhere", tmp_path / "out", r"train\.csv: not found")


def test_skip_bad_records_reasons_in_manifest(copy, tmp_path):
    Image.fromarray(np.zeros((256, 800), dtype=np.uint8)).save(copy / "train_images" / "bbbbbbbb1.jpg")
    victim = sorted(kaggle.read_labels(copy / "train.csv").image_ids)[0]
    os.remove(copy / "train_images" / victim)
    out = str(tmp_path / "out")
    summary = build_shards(data=str(copy), out=out, folds=K, skip_bad=True, progress=False)
    skipped = {s["image_id"]: s["reason"] for s in _manifest(out)["skipped"]}
    assert set(skipped) == {"bbbbbbbb1.jpg", victim} and "800x256" in skipped["bbbbbbbb1.jpg"]
    assert "missing" in skipped[victim]
    assert summary.images == N_TRAIN - 1 and summary.skipped == 2
    assert verify(out, data=str(copy)).records == N_TRAIN - 1


# --- resume: interrupted builds finish without duplicates ---------------------------------------------------


class _Interrupt(Exception):
    pass


def _interrupt_after(n):
    def hook(written):
        if written >= n:
            raise _Interrupt

    return hook


def test_resume_after_an_interruption_keeps_finished_shards(source, built, tmp_path):
    out = str(tmp_path)
    with pytest.raises(_Interrupt):
        build_shards(data=source, out=out, folds=K, shard_mb=SHARD_MB, workers=1, progress=False,
                     _after_shard=_interrupt_after(3))
    assert not os.path.exists(os.path.join(out, MANIFEST))
    with open(os.path.join(out, PLAN)) as f:
        recorded = [s["name"] for s in json.load(f)["shards"]]
    assert len(recorded) == 3 and set(recorded) <= set(_shard_files(out))
    assert not [n for n in os.listdir(out) if n.startswith(".tmp-")]
    with pytest.raises(VerifyError, match="unfinished"):
        verify(out)
    # A finished shard damaged in between is rebuilt, not kept.
    damaged = os.path.join(out, recorded[0])
    with open(damaged, "r+b") as f:
        f.seek(100)
        f.write(b"\0\0\0\0")
    summary = build_shards(data=source, out=out, folds=K, shard_mb=SHARD_MB, progress=False)
    assert summary.kept == 2 and summary.shards == 2 * K
    assert not os.path.exists(os.path.join(out, PLAN))
    assert _manifest(out)["shards"] == _manifest(built[0])["shards"]
    verify(out, data=source)


def test_rerun_keeps_everything_and_overwrite_rebuilds(source, tmp_path):
    out = str(tmp_path)
    build_shards(data=source, out=out, folds=K, shard_mb=SHARD_MB, progress=False)
    assert build_shards(data=source, out=out, folds=K, shard_mb=SHARD_MB, progress=False).kept == 2 * K
    assert build_shards(data=source, out=out, folds=K, shard_mb=SHARD_MB, progress=False, overwrite=True).kept == 0
    # Another plan (bigger shards): the old shard names go, nothing stale is left for a glob to pick up.
    build_shards(data=source, out=out, folds=K, shard_mb=100, progress=False)
    assert _shard_files(out) == [f"train-f{f}-00000-of-00001.tfrec" for f in range(K)]
    verify(out, data=source)


def test_other_split_in_the_same_folder_is_refused(source, built):
    with pytest.raises(SourceError, match="holds train shards"):
        build_shards(data=os.path.join(source, "test_images"), out=built[0], split="test", progress=False)


_KILLABLE = """
import sys, time
from steel_tpu.data.shards import build_shards
build_shards(data=sys.argv[1], out=sys.argv[2], folds=5, shard_mb=0.1, workers=1, progress=False,
             _after_shard=lambda n: time.sleep(0.3))
"""


@pytest.mark.slow
def test_resume_after_the_writer_is_killed(source, built, tmp_path):
    out = str(tmp_path)
    env = {**os.environ, "PYTHONPATH": REPO}
    proc = subprocess.Popen([sys.executable, "-c", _KILLABLE, source, out], env=env)
    plan = os.path.join(out, PLAN)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if os.path.exists(plan) and len(json.load(open(plan))["shards"]) >= 4:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL and not os.path.exists(os.path.join(out, MANIFEST))
    done = len(json.load(open(plan))["shards"])
    summary = build_shards(data=source, out=out, folds=K, shard_mb=0.1, progress=False)
    assert summary.kept >= done >= 4 and summary.images == N_TRAIN
    assert not [n for n in os.listdir(out) if n.startswith(".tmp-")]
    verify(out, data=source)  # also: every image in exactly one shard


# --- CLI ----------------------------------------------------------------------------------------------------


def test_cli_shards_and_verify(source, tmp_path, capsys):
    out = str(tmp_path / "out")
    assert cli.main(["shards", "--data", source, "--out", out, "--folds", "4", "--seed", "2", "--workers", "2"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert re.fullmatch(rf"{N_TRAIN} images in 4 shards \(0 kept\), [\d.]+ MB, \d+ images/s, 0 skipped -> .*", line)
    assert _manifest(out)["folds"] == 4
    assert cli.main(["verify", "--shards", out, "--data", source]) == 0
    assert capsys.readouterr().out.startswith("OK ")


def test_cli_errors_are_one_line_with_exit_2(tmp_path, capsys):
    assert cli.main(["shards", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "train.csv: not found" in err
    assert cli.main(["verify", "--shards", str(tmp_path)]) == 2
    assert "manifest.json: not found" in capsys.readouterr().err


@pytest.mark.slow
def test_tools_make_tfrecords_script(source, tmp_path):
    out = str(tmp_path)
    env = {**os.environ, "PYTHONPATH": REPO}
    script = os.path.join(REPO, "tools", "make_tfrecords.py")
    done = subprocess.run([sys.executable, script, "--data", source, "--out", out, "--shard-mb", "0.3"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"{N_TRAIN} images in {2 * K} shards" in done.stdout
    bad = subprocess.run([sys.executable, script, "--data", out, "--out", out], env=env, capture_output=True,
                         text=True, timeout=300)
    assert bad.returncode == 2 and "train.csv: not found" in bad.stderr


# --- gs:// through the loopback fake-gcs-server (gcsfs for listing/manifest, TensorFlow's client for reading) ---


def test_gcs_destination_read_back_by_tensorflow(source, gcs_bucket):
    out = f"{gcs_bucket}/shards"
    summary = build_shards(data=source, out=out, folds=K, shard_mb=SHARD_MB, progress=False)
    files = tf.io.gfile.glob(f"{out}/train-f*-*-of-*.tfrec")  # TensorFlow's own gs:// client
    assert len(files) == summary.shards == 2 * K
    ids = [example.parse(r)[example.IMAGE_ID].numpy().decode() for r in tf.data.TFRecordDataset(files)]
    assert sorted(ids) == sorted(os.listdir(os.path.join(source, "train_images")))
    assert not tf.io.gfile.exists(f"{out}/{PLAN}")
    assert verify(out, data=source).records == N_TRAIN
    assert build_shards(data=source, out=out, folds=K, shard_mb=SHARD_MB, progress=False).kept == 2 * K


def test_gcs_source(source, built, gcs_bucket, tmp_path):
    data = f"{gcs_bucket}/data"
    for folder, _, names in os.walk(source):
        for name in names:
            local = os.path.join(folder, name)
            with open(local, "rb") as f:
                storage.write_bytes(f"{data}/{os.path.relpath(local, source)}", f.read())
    build_shards(data=data, out=str(tmp_path), folds=K, shard_mb=SHARD_MB, progress=False)
    assert _manifest(tmp_path)["shards"] == _manifest(built[0])["shards"]
    verify(str(tmp_path), data=data)
