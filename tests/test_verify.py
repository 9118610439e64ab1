"""`verify` catches every kind of damage and names the shard or image."""

import hashlib
import json
import os
import shutil

import pytest

from steel_tpu.data.manifest import MANIFEST
from steel_tpu.data.shards import build_shards
from steel_tpu.data.synth import synthesize
from steel_tpu.data.verify import VerifyError, verify
from steel_tpu.formats import kaggle

K = 3


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    root = tmp_path_factory.mktemp("verify")
    synthesize(str(root / "data"), n_train=15, n_test=0, seed=5)
    build_shards(data=str(root / "data"), out=str(root / "out"), folds=K, shard_mb=0.3, progress=False)
    return root


@pytest.fixture
def case(pristine, tmp_path):
    """(source, shards) copies that a test may damage."""
    shutil.copytree(pristine / "data", tmp_path / "data")
    shutil.copytree(pristine / "out", tmp_path / "out")
    return tmp_path / "data", tmp_path / "out"


def _manifest(out):
    return json.loads((out / MANIFEST).read_text())


def _problems(out, data=None):
    with pytest.raises(VerifyError) as info:
        verify(str(out), data=None if data is None else str(data))
    return str(info.value)


def test_pristine_passes(case):
    data, out = case
    assert verify(str(out), data=str(data)).records == 15


def test_flipped_byte_names_the_shard(case):
    _, out = case
    name = _manifest(out)["shards"][1]["name"]
    raw = bytearray((out / name).read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (out / name).write_bytes(bytes(raw))
    message = _problems(out)
    assert f"{name}: sha256" in message and f"{name}: record" in message and "data CRC mismatch" in message


def test_missing_and_stray_shards_are_named(case):
    _, out = case
    first, second = (s["name"] for s in _manifest(out)["shards"][:2])
    os.remove(out / first)
    shutil.copyfile(out / second, out / "train-f9-00000-of-00001.tfrec")
    message = _problems(out)
    assert f"{first}: in {MANIFEST} but not in" in message
    assert "train-f9-00000-of-00001.tfrec: a shard file that manifest.json does not list" in message


def test_manifest_totals_must_add_up(case):
    _, out = case
    manifest = _manifest(out)
    manifest["shards"][0]["records"] += 1
    (out / MANIFEST).write_text(json.dumps(manifest))
    message = _problems(out)
    assert f"{manifest['shards'][0]['name']}: records" in message and "total records" in message


def test_duplicate_image_across_folds_is_named(case):
    _, out = case
    manifest = _manifest(out)
    a, b = manifest["shards"][0], next(s for s in manifest["shards"] if s["fold"] != manifest["shards"][0]["fold"])
    # Append shard a's records to shard b and make the manifest agree, so only the duplication is wrong.
    merged = (out / b["name"]).read_bytes() + (out / a["name"]).read_bytes()
    (out / b["name"]).write_bytes(merged)
    b.update(records=b["records"] + a["records"], bytes=len(merged), sha256=hashlib.sha256(merged).hexdigest(),
             class_counts=[x + y for x, y in zip(a["class_counts"], b["class_counts"])])
    (out / MANIFEST).write_text(json.dumps(manifest))
    message = _problems(out)
    assert f"in both {a['name']} and {b['name']}" in message
    assert f"fold {a['fold']}, its shard is fold {b['fold']}" in message


def test_source_image_bytes_and_masks_must_round_trip(case):
    data, out = case
    labels = kaggle.read_labels(data / "train.csv")
    defect = next(i for i in labels.image_ids if labels.rles[i][2] or labels.rles[i][0])
    image = sorted(os.listdir(data / "train_images"))[0]
    raw = bytearray((data / "train_images" / image).read_bytes())
    raw[1000] ^= 0x01
    (data / "train_images" / image).write_bytes(bytes(raw))
    changed = {i: tuple("1 3" if r else "" for r in labels.rles[i]) if i == defect else labels.rles[i]
               for i in labels.image_ids}
    kaggle.write_train_csv(data / "train.csv", kaggle.Labels.from_mapping(changed))
    shutil.copyfile(data / "train_images" / image, data / "train_images" / "fffffffff.jpg")
    message = _problems(out, data)
    assert f"({image}): image bytes differ" in message
    assert f"({defect}): class" in message and "mask differs from the source CSV" in message
    assert "fffffffff.jpg: an image of" in message and "in no shard" in message
    verify(str(out))  # without the source, the shards themselves are still consistent


def test_no_manifest(tmp_path):
    with pytest.raises(VerifyError, match="manifest.json: not found"):
        verify(str(tmp_path))
