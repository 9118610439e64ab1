"""The shard builder touches only files it planned, by exact name, inside the exact --out it was given."""

import os

import pytest

from steel_tpu import storage
from steel_tpu.data.manifest import MANIFEST, PLAN
from steel_tpu.data.shard_folder import ShardFolder
from steel_tpu.data.shards import build_shards
from steel_tpu.data.source import SourceError
from steel_tpu.data.synth import synthesize

SHARD_LIKE = "train-f0-00000-of-00001.tfrec"  # a shard name, but not one this builder recorded


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    data = str(tmp_path_factory.mktemp("own_files"))
    synthesize(data, n_train=12, n_test=0, seed=2)
    return data


def _build(source, out, **kwargs):
    return build_shards(data=source, out=str(out), folds=2, progress=False, **{"shard_mb": 100, **kwargs})


def _snapshot(root):
    """{relative path: bytes} of every file under `root` (local)."""
    return {os.path.relpath(os.path.join(d, n), root): open(os.path.join(d, n), "rb").read()
            for d, _, names in os.walk(root) for n in names}


@pytest.mark.parametrize("overwrite", [False, True])
def test_foreign_files_are_refused_by_name_and_left_byte_identical(source, tmp_path, overwrite):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    (out / SHARD_LIKE).write_bytes(b"someone else's shard")
    (out / "sub").mkdir()
    (out / "sub" / "train-f1-00000-of-00001.tfrec").write_bytes(b"nested")
    before = _snapshot(out)
    with pytest.raises(SourceError, match="holds 2 file.s. this shard builder did not write") as info:
        _build(source, out, overwrite=overwrite)
    assert "notes.txt" in str(info.value) and SHARD_LIKE in str(info.value)
    assert _snapshot(out) == before  # nothing written, nothing removed


def test_a_manifest_it_did_not_write_is_foreign(source, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / MANIFEST).write_text('{"not": "ours"}')
    with pytest.raises(SourceError, match=r"manifest\.json \(not one this builder wrote\)"):
        _build(source, out, overwrite=True)
    assert _snapshot(out) == {MANIFEST: b'{"not": "ours"}'}


def test_its_own_previous_shards_are_replaced(source, tmp_path):
    out = tmp_path / "out"
    _build(source, out, shard_mb=0.15)
    first = set(os.listdir(out))
    _build(source, out)  # another plan: the previous build's shards are its own, so they may go
    assert set(os.listdir(out)) == {MANIFEST, "train-f0-00000-of-00001.tfrec", "train-f1-00000-of-00001.tfrec"}
    assert len(first) > 3
    ShardFolder.open(str(out)).check()


@pytest.mark.parametrize("name, siblings", [("a*b", ["aXb", "a-b", "ab"]), ("a[1]", ["a1"]), ("a?", ["aa"])])
def test_a_glob_character_in_out_is_literal(source, tmp_path, name, siblings):
    for sibling in siblings:  # folders the pattern would match, one holding a real shard build
        _build(source, tmp_path / sibling, shard_mb=0.15)
        (tmp_path / sibling / "notes.txt").write_text("mine")
    before = _snapshot(tmp_path)
    out = tmp_path / name
    _build(source, out, shard_mb=0.15)
    _build(source, out)  # a new plan: stale shards of the first build are removed
    _build(source, out, overwrite=True)
    ShardFolder.open(str(out)).check()
    after = _snapshot(tmp_path)
    assert {k: v for k, v in after.items() if not k.startswith(name + os.sep)} == before


@pytest.mark.parametrize("shard_mb", [1e-9, 5e-324, 0.001, float("nan"), float("inf") * 0, -1])
def test_an_absurd_shard_size_is_refused_before_anything_is_written(source, tmp_path, shard_mb):
    with pytest.raises(ValueError, match=r"shard_mb") as info:
        _build(source, tmp_path / "out", shard_mb=shard_mb)
    assert len(str(info.value).splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_the_bound_names_the_smallest_usable_size(source, tmp_path):
    with pytest.raises(ValueError, match=r"would plan .* shards for 6 images .* use --shard-mb ([\d.e-]+) or more"):
        _build(source, tmp_path / "out", shard_mb=0.001)


def test_gcs_foreign_files_are_refused_and_left_identical(source, gcs_bucket):
    out = f"{gcs_bucket}/out"
    foreign = {f"{out}/notes.txt": b"my notes", f"{out}/{SHARD_LIKE}": b"not a shard of this build",
               f"{gcs_bucket}/out-other/{PLAN}": b"a sibling's plan"}
    for path, data in foreign.items():
        storage.write_bytes(path, data)
    with pytest.raises(SourceError, match="notes.txt.*" + SHARD_LIKE.replace(".", r"\.")):
        _build(source, out, overwrite=True)
    assert {p: storage.read_bytes(p) for p in foreign} == foreign
    assert sorted(storage.list_files(out)) == ["notes.txt", SHARD_LIKE]


def test_gcs_glob_character_in_out_is_literal(source, gcs_bucket):
    sibling = f"{gcs_bucket}/aXb"
    _build(source, sibling, shard_mb=0.15)
    before = {n: storage.read_bytes(f"{sibling}/{n}") for n in storage.list_files(sibling)}
    out = f"{gcs_bucket}/a*b"
    _build(source, out, shard_mb=0.15)
    _build(source, out, overwrite=True)
    ShardFolder.open(out).check()
    assert {n: storage.read_bytes(f"{sibling}/{n}") for n in storage.list_files(sibling)} == before
