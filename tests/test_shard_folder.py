"""The manifest is the truth: ShardFolder, train, predict and verify refuse shards it does not vouch for."""

import hashlib
import json
import os
import shutil

import pytest

from steel_tpu import config, storage
from steel_tpu.data import example, pipeline, tfrecord
from steel_tpu.training import train
from steel_tpu.data.manifest import MANIFEST, fold_totals, totals
from steel_tpu.data.shard_folder import ShardFolder, ShardFolderError, read_records
from steel_tpu.data.shards import build_shards
from steel_tpu.data.synth import synthesize
from steel_tpu.data.verify import VerifyError, verify

K = 3
EXTRA = "train-f0-00000-of-00009.tfrec"  # a shard name no build of this folder wrote


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    root = tmp_path_factory.mktemp("shard_folder")
    synthesize(str(root / "data"), n_train=15, n_test=4, seed=5)
    build_shards(data=str(root / "data"), out=str(root / "train"), folds=K, shard_mb=0.15, progress=False)
    build_shards(data=str(root / "data" / "test_images"), out=str(root / "test"), split="test", shard_mb=0.1,
                 progress=False)
    return root


@pytest.fixture
def shards(pristine, tmp_path):
    """A copy of the train shard folder that a test may damage."""
    shutil.copytree(pristine / "train", tmp_path / "train")
    return tmp_path / "train"


def _manifest(folder):
    return json.loads((folder / MANIFEST).read_text())


def _edit(folder, change):
    doc = _manifest(folder)
    change(doc)
    (folder / MANIFEST).write_text(json.dumps(doc))


def _verify_problems(folder):
    with pytest.raises(VerifyError) as info:
        verify(str(folder))
    return str(info.value)


def test_open_lists_exactly_the_manifest_shards(shards):
    folder = ShardFolder.open(str(shards), split="train").check()
    doc = _manifest(shards)
    assert (folder.split, folder.num_folds, folder.records, folder.entries) == ("train", K, 15, doc["shards"])
    assert folder.files() == [str(shards / e["name"]) for e in doc["shards"]]
    assert folder.files(folds=[1]) == [str(shards / e["name"]) for e in doc["shards"] if e["fold"] == 1]
    with pytest.raises(ShardFolderError, match="a folder of train shards, test shards expected"):
        ShardFolder.open(str(shards), split="test")


def test_an_extra_shard_is_refused_by_check_train_and_verify(shards, tmp_path):
    shutil.copyfile(shards / _manifest(shards)["shards"][0]["name"], shards / EXTRA)
    with pytest.raises(ShardFolderError, match=f"{EXTRA}: a shard file that manifest.json does not list"):
        ShardFolder.open(str(shards)).check()
    # Train refuses before anything is built or written: the duplicated validation images never reach an OOF file.
    work = tmp_path / "work"
    with pytest.raises(ShardFolderError, match=EXTRA):
        train.run(shards=str(shards), workdir=str(work), cfg=config.preset("tiny"), folds=(0,))
    assert not work.exists()
    assert f"{EXTRA}: a shard file that manifest.json does not list" in _verify_problems(shards)


def test_an_extra_test_shard_is_refused_by_predict_input(pristine, tmp_path):
    folder = tmp_path / "test"
    shutil.copytree(pristine / "test", folder)
    names = [e["name"] for e in _manifest(folder)["shards"]]
    ds = pipeline.predict_dataset(source=str(folder), image_size=(32, 192), batch_size=2)
    assert sum(int(b["valid"].numpy().sum()) for b in ds) == 4
    shutil.copyfile(folder / names[0], folder / "test-00000-of-00001.tfrec")
    with pytest.raises(ShardFolderError, match="test-00000-of-00001.tfrec: a shard file that"):
        pipeline.predict_dataset(source=str(folder), image_size=(32, 192), batch_size=2)


@pytest.mark.parametrize("folds", [K - 1, K + 1])
def test_a_manifest_with_another_fold_count_is_refused(shards, folds):
    _edit(shards, lambda doc: doc.update(folds=folds))
    with pytest.raises(ShardFolderError, match=r"manifest\.json: disagrees with itself") as info:
        ShardFolder.open(str(shards))
    assert len(str(info.value).splitlines()) == 1
    assert "fold" in _verify_problems(shards)


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(records=d["records"] + 1), "total records"),
    (lambda d: d["fold_totals"][0].update(records=0), "fold 0 totals"),
    (lambda d: d["shards"][0].update(class_counts=[9, 9, 9, 9]), "total class_counts"),
])
def test_a_manifest_that_disagrees_with_itself_is_refused(shards, change, message):
    _edit(shards, change)
    with pytest.raises(ShardFolderError, match=message):
        ShardFolder.open(str(shards))
    assert message in _verify_problems(shards)


def test_a_dropped_entry_with_totals_fixed_is_still_caught(shards):
    def drop(doc):
        doc["shards"] = [e for e in doc["shards"] if e["name"] != "train-f0-00001-of-00002.tfrec"]
        doc.update(totals(doc["shards"]), fold_totals=[fold_totals(doc["shards"], f) for f in range(K)])

    assert "train-f0-00001-of-00002.tfrec" in [e["name"] for e in _manifest(shards)["shards"]]
    _edit(shards, drop)
    with pytest.raises(ShardFolderError, match="fold 0: 1 shard entries whose names do not count 0..0 of 1"):
        ShardFolder.open(str(shards))
    assert "a shard file that manifest.json does not list" in _verify_problems(shards)


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(schema_version=0), "schema version 0, this code reads 1"),
    (lambda d: d.pop("fold_totals"), "missing key"),
    (lambda d: d["shards"][0].update(name="../../elsewhere.tfrec"), "is not the name of a train shard"),
    (lambda d: d["shards"][0].update(fold=1), "is not the name of a train shard of fold 1"),
    (lambda d: d["shards"][0].update(records="many"), "must be integers"),
    (lambda d: d.update(split="validation"), "split 'validation'"),
])
def test_an_unreadable_manifest_is_named(shards, change, message):
    _edit(shards, change)
    with pytest.raises(ShardFolderError, match=message) as info:
        ShardFolder.open(str(shards))
    assert str(info.value).startswith(str(shards / MANIFEST)) and len(str(info.value).splitlines()) == 1
    assert message in _verify_problems(shards)


def test_a_manifest_that_is_not_json_names_the_file(shards):
    (shards / MANIFEST).write_text('{"schema_version": 1, "shards": [')
    with pytest.raises(ShardFolderError, match=rf"^{shards / MANIFEST}: not valid JSON"):
        ShardFolder.open(str(shards))
    assert f"{shards / MANIFEST}: not valid JSON" in _verify_problems(shards)


def test_a_truncated_shard_is_named_by_check(shards):
    entry = _manifest(shards)["shards"][2]
    raw = (shards / entry["name"]).read_bytes()
    (shards / entry["name"]).write_bytes(raw[:-10])
    folder = ShardFolder.open(str(shards))  # the manifest alone is fine
    with pytest.raises(ShardFolderError, match=rf"{entry['name']}: {len(raw) - 10} bytes, manifest.json says "):
        folder.check()
    os.remove(shards / entry["name"])
    with pytest.raises(ShardFolderError, match=f"{entry['name']}: listed in manifest.json but missing"):
        folder.check()


def test_verify_catches_a_record_whose_fold_is_not_its_shards(shards):
    doc = _manifest(shards)
    entry = doc["shards"][0]
    path = shards / entry["name"]
    with open(path, "rb") as f:
        records = [example.parse_numpy(r) for r in tfrecord.read_records(f)]
    framed = b"".join(tfrecord.frame(example.serialize(
        image_id=r[example.IMAGE_ID], jpeg_bytes=r[example.IMAGE], height=r[example.HEIGHT], width=r[example.WIDTH],
        rles=r[example.RLE], areas=r[example.AREA], fold=entry["fold"] + 1)) for r in records)
    path.write_bytes(framed)
    entry.update(bytes=len(framed), sha256=hashlib.sha256(framed).hexdigest())
    doc["bytes"] = sum(e["bytes"] for e in doc["shards"])
    doc["fold_totals"][entry["fold"]]["bytes"] = sum(e["bytes"] for e in doc["shards"] if e["fold"] == entry["fold"])
    (shards / MANIFEST).write_text(json.dumps(doc))
    ShardFolder.open(str(shards)).check()  # sizes agree: only reading the records shows it
    message = _verify_problems(shards)
    assert f"fold {entry['fold'] + 1}, its shard is fold {entry['fold']}" in message


def test_read_records_by_id_and_a_corrupt_record_names_the_shard(shards):
    folder = ShardFolder.open(str(shards))
    every = list(read_records(folder.files()))
    assert len(every) == 15
    wanted = [every[3][example.IMAGE_ID], every[11][example.IMAGE_ID]]
    assert [r[example.IMAGE_ID] for r in read_records(folder.files(), image_ids=wanted)] == wanted
    path = folder.files()[1]
    raw = bytearray(open(path, "rb").read())
    raw[40] ^= 0xFF
    open(path, "wb").write(bytes(raw))
    with pytest.raises(ShardFolderError, match=rf"^{path}: record 0: data CRC mismatch"):
        list(read_records(folder.files()))


def test_gcs_folder_with_an_unlisted_shard_is_refused(pristine, gcs_bucket):
    remote = f"{gcs_bucket}/shards"
    for name in os.listdir(pristine / "train"):
        storage.write_bytes(f"{remote}/{name}", (pristine / "train" / name).read_bytes())
    folder = ShardFolder.open(remote).check()
    assert folder.files(folds=[0]) == [f"{remote}/{e['name']}" for e in folder.entries if e["fold"] == 0]
    first = folder.entries[0]["name"]
    storage.write_bytes(f"{remote}/{EXTRA}", (pristine / "train" / first).read_bytes())
    with pytest.raises(ShardFolderError, match=f"{EXTRA}: a shard file that manifest.json does not list"):
        ShardFolder.open(remote).check()
    storage.remove(f"{remote}/{EXTRA}")
    storage.write_bytes(f"{remote}/{first}", (pristine / "train" / first).read_bytes()[:100])
    with pytest.raises(ShardFolderError, match=f"{first}: 100 bytes"):
        ShardFolder.open(remote).check()
