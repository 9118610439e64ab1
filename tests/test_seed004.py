"""Seed 004's TFRecords read as they are: written here with plain TensorFlow, imported, compared with our own shards."""

import csv
import json
import os
import shutil
import struct

import numpy as np
import pytest
import tensorflow as tf

from steel_tpu import cli, storage
from steel_tpu.constants import CLASS_IDS
from steel_tpu.data import example, pipeline
from steel_tpu.data.seed004 import import_seed004, scan
from steel_tpu.data.manifest import MANIFEST, PLAN
from steel_tpu.data.shard_folder import ShardFolder, read_records
from steel_tpu.data.shards import build_shards
from steel_tpu.data.source import SourceError
from steel_tpu.data.synth import synthesize
from steel_tpu.formats import rle

N_TRAIN, K, FOLD_SEED = 24, 3, 1
SHARD_MB = 0.3  # ~80 KB synthetic JPEGs: two or three of our shards per fold
PER_FILE = 5  # records per seed file, so each kind spans several files


def _feature(values):
    if isinstance(values[0], int):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=values))
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))


def _seed_record(*, img_id, image, rles, label, drop=()):
    """One record as the seed notebook reads it, built with plain TensorFlow and its own feature names."""
    features = {"img_id": [img_id.encode()], "image": [image], "rle": [r.encode() for r in rles], "label": [label]}
    return tf.train.Example(features=tf.train.Features(
        feature={k: _feature(v) for k, v in features.items() if k not in drop})).SerializeToString()


def _truth(data):
    """{image id: four RLEs ('' = none)} from the synthetic train.csv, read with the csv module."""
    truth = {n: ["", "", "", ""] for n in os.listdir(os.path.join(data, "train_images"))}
    with open(os.path.join(data, "train.csv"), newline="") as f:
        for row in csv.DictReader(f):
            truth[row["ImageId"]][int(row["ClassId"]) - 1] = row["EncodedPixels"]
    return truth


def _write_seed_files(folder, records):
    """Seed-style files from [(kind, serialized record)]: each kind in files of PER_FILE records, named with the
    record count the way its notebook counts them (`train-defect-00-5.tfrec`)."""
    os.makedirs(folder, exist_ok=True)
    for kind in ("train-defect", "train-no-defect"):
        mine = [r for k, r in records if k == kind]
        for i in range(0, len(mine), PER_FILE):
            chunk = mine[i:i + PER_FILE]
            with tf.io.TFRecordWriter(os.path.join(folder, f"{kind}-{i // PER_FILE:02d}-{len(chunk)}.tfrec")) as w:
                for record in chunk:
                    w.write(record)


def _seed_records(data, *, change=None):
    """[(kind, serialized record)] of every synthetic train image; `change(image_id, fields)` may edit one."""
    records = []
    for image_id, rles in sorted(_truth(data).items()):
        with open(os.path.join(data, "train_images", image_id), "rb") as f:
            fields = {"img_id": image_id, "image": f.read(), "label": int(any(rles)), "drop": (),
                      # The seed spells an empty mask "1 0"; one class of each image keeps "" (accepted too).
                      "rles": [r or ("" if c == 4 else "1 0") for c, r in zip(CLASS_IDS, rles)]}
        kind = "train-defect" if fields["label"] else "train-no-defect"
        if change:
            kind = change(image_id, fields) or kind
        records.append((kind, _seed_record(**fields)))
    return records


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("synth"))
    synthesize(folder, n_train=N_TRAIN, n_test=0, seed=5)
    return folder


@pytest.fixture(scope="module")
def seed_dir(data, tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("seed004") / "tfrecs")
    _write_seed_files(folder, _seed_records(data))
    return folder


@pytest.fixture(scope="module")
def imported(seed_dir, tmp_path_factory):
    """The seed folder imported through the command line."""
    out = str(tmp_path_factory.mktemp("imported") / "shards")
    assert cli.main(["import-seed004", "--src", seed_dir, "--out", out, "--folds", str(K), "--seed",
                     str(FOLD_SEED), "--shard-mb", str(SHARD_MB), "--workers", "2"]) == 0
    return out


@pytest.fixture(scope="module")
def ours(data, tmp_path_factory):
    """Our own shards of the same images, built from the Kaggle layout with the same folds and seed."""
    out = str(tmp_path_factory.mktemp("ours") / "shards")
    build_shards(data=data, out=out, folds=K, seed=FOLD_SEED, shard_mb=SHARD_MB, progress=False)
    return out


def _manifest(out):
    with open(os.path.join(out, MANIFEST)) as f:
        return json.load(f)


def test_import_verifies_against_the_kaggle_layout(data, seed_dir, imported, capsys):
    assert cli.main(["verify", "--shards", imported, "--data", data]) == 0  # bytes, masks, one fold each
    assert capsys.readouterr().out.startswith(f"OK {imported}: ")
    origin = _manifest(imported)["imported_from"]
    assert origin["format"] == "seed004"
    assert sorted(f["name"] for f in origin["files"]) == sorted(os.listdir(seed_dir))
    assert sum(f["records"] for f in origin["files"]) == N_TRAIN
    assert not [n for n in os.listdir(imported) if n.startswith(".tmp-") or n == PLAN]


def test_same_shards_and_folds_as_ours(imported, ours):
    # The same folds (assign_folds over the decoded masks), the same records: shard for shard, byte for byte.
    mine, theirs = _manifest(imported), _manifest(ours)
    assert mine["shards"] == theirs["shards"] and mine["fold_totals"] == theirs["fold_totals"]
    assert mine["folds"] == K and mine["seed"] == FOLD_SEED and len(mine["shards"]) > K


def _batches(dataset):
    return [tuple(np.asarray(t) for t in batch) for batch in dataset.as_numpy_iterator()]


def test_training_batches_equal_ours(imported, ours):
    def batches(folder):
        files = ShardFolder.open(folder, split="train").check().files(folds=(0, 1))
        return _batches(pipeline.train_dataset(files=files, image_size=(64, 320), batch_size=4, seed=3, steps=4,
                                               oversample={2: 2}, clean_keep=0.5, shuffle_buffer=16))

    mine, theirs = batches(imported), batches(ours)
    assert len(mine) == len(theirs) == 4
    for (image_a, mask_a), (image_b, mask_b) in zip(mine, theirs):
        np.testing.assert_array_equal(image_a, image_b)
        np.testing.assert_array_equal(mask_a, mask_b)
    assert any(m.any() for _, m in mine)  # defects made it through, not just empty masks


def _eval_by_id(folder, fold):
    files = ShardFolder.open(folder, split="train").check().files(folds=(fold,))
    out = {}
    for batch in pipeline.eval_dataset(files=files, image_size=(64, 320), batch_size=4).as_numpy_iterator():
        for i in np.flatnonzero(batch["valid"]):
            out[batch["image_id"][i].decode()] = (batch["image"][i], batch["mask"][i])
    return out


def test_eval_images_and_masks_equal_ours_and_the_truth(data, imported, ours):
    truth = _truth(data)
    for fold in range(K):
        mine, theirs = _eval_by_id(imported, fold), _eval_by_id(ours, fold)
        assert sorted(mine) == sorted(theirs)
        for image_id, (image, mask) in mine.items():
            np.testing.assert_array_equal(image, theirs[image_id][0])
            np.testing.assert_array_equal(mask, theirs[image_id][1])
            # Full-resolution masks: "1 0" and "" read as empty, every other class as the truth's RLE.
            expected = np.stack([rle.decode(r) for r in truth[image_id]], axis=-1)
            np.testing.assert_array_equal(mask, expected)


def test_jpeg_bytes_are_copied_as_they_are(data, seed_dir, imported):
    given = {}
    for name in os.listdir(seed_dir):
        for raw in tf.data.TFRecordDataset(os.path.join(seed_dir, name)):
            parsed = tf.io.parse_single_example(raw, {"img_id": tf.io.FixedLenFeature([], tf.string),
                                                      "image": tf.io.FixedLenFeature([], tf.string)})
            given[parsed["img_id"].numpy().decode()] = parsed["image"].numpy()
    written = {r[example.IMAGE_ID]: r[example.IMAGE] for r in read_records(ShardFolder.open(imported).files())}
    assert written == given and len(written) == N_TRAIN
    for image_id, image in written.items():
        with open(os.path.join(data, "train_images", image_id), "rb") as f:
            assert f.read() == image


def test_gcs_source(seed_dir, imported, gcs_bucket, tmp_path):
    src = f"{gcs_bucket}/tfrecs"
    for name in os.listdir(seed_dir):
        with open(os.path.join(seed_dir, name), "rb") as f:
            storage.write_bytes(f"{src}/{name}", f.read())
    out = str(tmp_path / "shards")
    import_seed004(src=src, out=out, folds=K, seed=FOLD_SEED, shard_mb=SHARD_MB, progress=False)
    assert _manifest(out)["shards"] == _manifest(imported)["shards"]


# --- hostile input: one line naming the file and the image, nothing written --------------------------------


def _first(kind, data):
    """The first image id (sorted) of `kind` ("train-defect" / "train-no-defect") and the seed file it lands in."""
    ids = sorted(i for i, r in _truth(data).items() if any(r) == (kind == "train-defect"))
    count = min(PER_FILE, len(ids))
    return ids[0], f"{kind}-00-{count}.tfrec"


def _drop_label(image_id, fields):
    fields["drop"] = ("label",)


def _bad_rle(image_id, fields):
    fields["rles"][0] = "409600 2"  # runs one pixel past the 256x1600 image


def _label_disagrees(image_id, fields):
    fields["label"] = 0


def _not_a_jpeg(image_id, fields):
    fields["image"] = b"not a JPEG at all"


def _gif_header(image_id, fields):
    # A GIF whose header claims 65535x65535 pixels: PIL refuses to open it (DecompressionBombError).
    screen, frame = struct.pack("<HHBBB", 65535, 65535, 0, 0, 0), struct.pack("<HHHHB", 0, 0, 65535, 65535, 0)
    fields["image"] = b"GIF89a" + screen + b"," + frame + b"\x02\x02\x44\x01\x00;"


HOSTILE = {
    "missing feature": ("train-defect", _drop_label, "missing feature 'label'"),
    "bad rle": ("train-no-defect", _bad_rle, "class 1: rle is not a valid RLE for a 256x1600 image"),
    "label disagrees": ("train-defect", _label_disagrees, "label 0 but class(es)"),
    "not a jpeg": ("train-defect", _not_a_jpeg, "image: not a JPEG"),
    "gif header": ("train-no-defect", _gif_header, "image: not a 1600x256 JPEG"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_record_is_named_by_file_and_img_id(case, data, tmp_path):
    kind, edit, reason = HOSTILE[case]
    target, file_name = _first(kind, data)
    src, out = str(tmp_path / "seed"), str(tmp_path / "out")
    _write_seed_files(src, _seed_records(data, change=lambda i, f: edit(i, f) if i == target else None))
    with pytest.raises(SourceError) as error:
        import_seed004(src=src, out=out, folds=K, progress=False)
    message = str(error.value)
    assert f"{file_name} record 0 ({target}): {reason}" in message and "\n" not in message
    assert not os.path.exists(out)  # checked before anything is written


def test_duplicate_img_id_across_files(data, tmp_path):
    defect_id, defect_file = _first("train-defect", data)
    clean_id, clean_file = _first("train-no-defect", data)

    def duplicate(image_id, fields):
        if image_id == clean_id:
            fields["img_id"] = defect_id

    src, out = str(tmp_path / "seed"), str(tmp_path / "out")
    _write_seed_files(src, _seed_records(data, change=duplicate))
    with pytest.raises(SourceError, match=rf"{clean_file} record 0 \({defect_id}\): img_id also in "
                                          rf"{defect_file} record 0"):
        import_seed004(src=src, out=out, folds=K, progress=False)
    assert not os.path.exists(out)


def test_record_count_in_the_name_must_match(seed_dir, tmp_path):
    src, out = str(tmp_path / "seed"), str(tmp_path / "out")
    shutil.copytree(seed_dir, src)
    name = sorted(n for n in os.listdir(src) if n.startswith("train-defect-"))[0]
    count = int(name.rsplit("-", 1)[1].split(".")[0])
    wrong = name.replace(f"-{count}.tfrec", f"-{count + 1}.tfrec")
    os.rename(os.path.join(src, name), os.path.join(src, wrong))
    with pytest.raises(SourceError, match=rf"{wrong}: its name says {count + 1} records, it holds {count}"):
        import_seed004(src=src, out=out, folds=K, progress=False)
    assert not os.path.exists(out)


def test_cli_error_is_one_line_with_exit_2(data, tmp_path, capsys):
    target, file_name = _first("train-defect", data)
    src, out = str(tmp_path / "seed"), str(tmp_path / "out")
    _write_seed_files(src, _seed_records(data, change=lambda i, f: _label_disagrees(i, f) if i == target else None))
    assert cli.main(["import-seed004", "--src", src, "--out", out, "--folds", str(K)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("steel-tpu import-seed004: error: ")
    assert f"{file_name} record 0 ({target}): label 0" in err and not os.path.exists(out)


def test_misnamed_and_missing_files_are_refused(seed_dir, tmp_path):
    src = str(tmp_path / "seed")
    shutil.copytree(seed_dir, src)
    shutil.copy(os.path.join(src, os.listdir(src)[0]), os.path.join(src, "train-defekt-00-5.tfrec"))
    with pytest.raises(SourceError, match="train-defekt-00-5.tfrec: a .tfrec file whose name holds neither"):
        import_seed004(src=src, out=str(tmp_path / "out"), folds=K, progress=False)
    with pytest.raises(SourceError, match="no seed-004 shards"):
        import_seed004(src=str(tmp_path), out=str(tmp_path / "out2"), folds=K, progress=False)


def test_a_file_changed_after_the_check_leaves_no_manifest(seed_dir, tmp_path):
    src, out = str(tmp_path / "seed"), str(tmp_path / "out")
    shutil.copytree(seed_dir, src)
    source = scan(src, workers=2)
    name = sorted(os.listdir(src))[0]
    with open(os.path.join(src, name), "r+b") as f:  # one byte of a JPEG body, after the check read it
        f.seek(os.path.getsize(f.name) // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(SourceError, match=rf"{name}: .*changed since"):
        build_shards(data=src, out=out, folds=K, shard_mb=SHARD_MB, workers=1, progress=False,
                     read_source=lambda: source)
    assert not os.path.exists(os.path.join(out, MANIFEST)) and os.path.exists(os.path.join(out, PLAN))
