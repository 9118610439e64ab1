"""Hostile image files: what passes the checks decodes in the pipeline; the rest is named by id or listed."""

import io
import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from steel_tpu import cli, metrics
from steel_tpu.data import example, jpeg_check, pipeline, source, tfrecord
from steel_tpu.data.manifest import MANIFEST
from steel_tpu.data.shard_folder import records_in
from steel_tpu.formats import kaggle

BAD = {  # file -> what its reason must say
    "cmyk.jpg": "CMYK JPEG (4 channels)",
    "corrupt.jpg": "corrupt JPEG data",
    "truncated.jpg": "truncated JPEG (the decoder ran out of data)",
    "eoi_early.jpg": "premature end of data segment",
    "bits12.jpg": "Unsupported JPEG data precision 12",
    "png.jpg": "not a JPEG (PNG)",
    "small.jpg": "16x16, expected 1600x256",
}
GOOD = ("trailing.jpg", "progressive.jpg", "UPPER.JPG", "mixed.Jpeg")


def _entropy_start(jpeg):
    """Offset of the first entropy-coded byte: just after the start-of-scan segment."""
    sos = jpeg.index(b"\xff\xda")
    return sos + 2 + int.from_bytes(jpeg[sos + 2:sos + 4], "big")


def _craft(folder, good):
    """Write every hostile file of BAD and GOOD into `folder`, derived from the valid JPEG bytes `good`."""
    image = Image.open(io.BytesIO(good))
    image.convert("CMYK").save(folder / "cmyk.jpg", format="JPEG")  # PIL writes Adobe CMYK JPEGs
    # 2,000 random bytes (no 0xFF: no marker) over the Huffman-coded data. JPEG has no checksum, so only a
    # corruption the decoder falls out of step with is detectable; this seed's is (checked below).
    start = _entropy_start(good) + 1000
    noise = np.random.default_rng(0).integers(0, 255, 2000, dtype=np.uint8).tobytes()
    (folder / "corrupt.jpg").write_bytes(good[:start] + noise + good[start + len(noise):])
    (folder / "truncated.jpg").write_bytes(good[:len(good) // 2])
    (folder / "eoi_early.jpg").write_bytes(good[:len(good) // 2] + b"\xff\xd9")  # a complete-looking file
    sof = good.index(b"\xff\xc0")
    (folder / "bits12.jpg").write_bytes(good[:sof + 4] + bytes([12]) + good[sof + 5:])
    image.save(folder / "png.jpg", format="PNG")
    image.crop((0, 0, 16, 16)).save(folder / "small.jpg", format="JPEG")
    (folder / "trailing.jpg").write_bytes(good + b"\x00" * 64 + b"padding a camera wrote after the image")
    image.save(folder / "progressive.jpg", format="JPEG", progressive=True)
    (folder / "UPPER.JPG").write_bytes(good)
    (folder / "mixed.Jpeg").write_bytes(good)


@pytest.fixture
def hostile(tiny_data, tmp_path):
    """A test-image folder: tiny_data's test JPEGs plus every crafted file."""
    folder = tmp_path / "images"
    shutil.copytree(os.path.join(tiny_data["data"], "test_images"), folder)
    good = (folder / sorted(os.listdir(folder))[0]).read_bytes()
    _craft(folder, good)
    return folder


def test_each_crafted_file_gets_its_reason_and_good_ones_none(hostile):
    for name, reason in BAD.items():
        problem = jpeg_check.problem((hostile / name).read_bytes())
        assert problem and reason in problem, (name, problem)
    for name in GOOD:
        assert jpeg_check.problem((hostile / name).read_bytes()) is None, name


def test_tensorflow_only_warns_on_corrupt_data(hostile):
    # Why the check does not stop at TensorFlow's decoder: it decodes these to garbage with a printed warning.
    for name in ("corrupt.jpg", "eoi_early.jpg"):
        assert tf.io.decode_jpeg((hostile / name).read_bytes(), channels=1).shape == (256, 1600, 1)


def test_what_passes_decodes_in_the_pipeline(hostile):
    found = source.scan(str(hostile), split="test", workers=2, skip_bad=True)
    assert dict(found.skipped).keys() == BAD.keys()
    ds = pipeline.predict_dataset(source=list(found.paths.values()), image_size=(64, 320), batch_size=4)
    ids = [i.decode() for batch in ds.as_numpy_iterator() for i, v in zip(batch["image_id"], batch["valid"]) if v]
    assert sorted(ids) == sorted(found.paths) and set(GOOD) <= set(ids)


def test_shards_cli_names_every_bad_image_or_lists_them(hostile, tmp_path, capsys):
    out = str(tmp_path / "shards")
    assert cli.main(["shards", "--data", str(hostile), "--out", out, "--split", "test"]) == 2
    err = capsys.readouterr().err
    assert f"{len(BAD)} bad image(s)" in err and "Traceback" not in err
    for name, reason in BAD.items():
        assert f"{name}: " in err and reason in err, name
    assert not os.path.exists(os.path.join(out, MANIFEST))
    assert cli.main(["shards", "--data", str(hostile), "--out", out, "--split", "test", "--skip-bad"]) == 0
    with open(os.path.join(out, MANIFEST)) as f:
        skipped = {s["image_id"]: s["reason"] for s in json.load(f)["skipped"]}
    assert skipped.keys() == BAD.keys() and all(r in skipped[n] for n, r in BAD.items())
    assert cli.main(["verify", "--shards", out, "--data", str(hostile)]) == 0


def test_train_shards_skip_bad_images_of_the_csv(tiny_data, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(tiny_data["data"], data, ignore=shutil.ignore_patterns("test_*"))
    first = sorted(os.listdir(data / "train_images"))[0]
    good = (data / "train_images" / first).read_bytes()
    Image.open(io.BytesIO(good)).convert("CMYK").save(data / "train_images" / first, format="JPEG")
    out = str(tmp_path / "shards")
    assert cli.main(["shards", "--data", str(data), "--out", out, "--folds", "2"]) == 2
    assert f"{first}: CMYK JPEG" in capsys.readouterr().err
    assert cli.main(["shards", "--data", str(data), "--out", out, "--folds", "2", "--skip-bad"]) == 0
    with open(os.path.join(out, MANIFEST)) as f:
        assert [s["image_id"] for s in json.load(f)["skipped"]] == [first]


def test_predict_cli_names_bad_images_or_lists_them(trained_workdir, hostile, tmp_path, capsys):
    out = str(tmp_path / "sub.csv")
    assert cli.main(["predict", "--workdir", trained_workdir, "--images", str(hostile), "--out", out]) == 2
    err = capsys.readouterr().err
    assert all(f"{name}: " in err for name in BAD) and "Traceback" not in err
    assert not os.path.exists(out)
    assert cli.main(["predict", "--workdir", trained_workdir, "--images", str(hostile), "--out", out,
                     "--skip-bad", "--batch-size", "4"]) == 0
    with open(out + ".errors.csv") as f:
        listed = {line.split(",")[0] for line in f.read().splitlines()[1:]}
    assert listed == set(BAD)
    scored = kaggle.read_labels(out).image_ids
    assert set(os.listdir(hostile)) == set(scored) and set(GOOD) <= set(scored)


def test_one_listing_rule_everywhere(tiny_data, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    good = open(os.path.join(tiny_data["data"], "test_images", sorted(os.listdir(
        os.path.join(tiny_data["data"], "test_images")))[0]), "rb").read()
    names = ["a.jpg", "B.JPG", "c.jpeg", "d.JPEG", "e.Jpeg"]
    for name in names:
        (folder / name).write_bytes(good)
    (folder / "notes.txt").write_text("not an image")
    (folder / "sub.jpg").mkdir()  # a folder is never an image, whatever its name
    assert [n for n in names if source.is_jpeg_name(n)] == names
    assert sorted(source.list_jpegs(str(folder))) == sorted(names)
    assert sorted(metrics.read_image_set(str(folder))) == sorted(names)
    assert sorted(source.scan(str(folder), split="test", workers=1, skip_bad=False).paths) == sorted(names)
    ds = pipeline.predict_dataset(source=str(folder), image_size=(32, 200), batch_size=8)
    assert sorted(i.decode() for b in ds.as_numpy_iterator() for i in b["image_id"][b["valid"]]) == sorted(names)


def test_verify_names_a_shard_image_the_pipeline_cannot_decode(tiny_data, tmp_path, capsys):
    """A shard written before these checks (or edited since) holding a CMYK JPEG: verify names the record."""
    images = os.path.join(tiny_data["data"], "test_images")
    out = tmp_path / "shards"
    assert cli.main(["shards", "--data", images, "--out", str(out), "--split", "test"]) == 0
    shard = sorted(out.glob("*.tfrec"))[0]
    with open(shard, "rb") as f:
        records = list(records_in(f, shard.name))
    victim = records[0][example.IMAGE_ID]
    cmyk = io.BytesIO()
    Image.open(io.BytesIO(records[0][example.IMAGE])).convert("CMYK").save(cmyk, format="JPEG")
    records[0] = {**records[0], example.IMAGE: cmyk.getvalue()}
    shard.write_bytes(b"".join(tfrecord.frame(example.serialize(
        image_id=r[example.IMAGE_ID], jpeg_bytes=r[example.IMAGE], height=r[example.HEIGHT], width=r[example.WIDTH],
        rles=r[example.RLE], areas=r[example.AREA], fold=r[example.FOLD])) for r in records))
    assert cli.main(["verify", "--shards", str(out)]) == 2
    assert f"{shard.name} record 0 ({victim}): CMYK JPEG" in capsys.readouterr().err
