"""steel_tpu.storage on local paths and on gs:// (the loopback emulator), and TensorFlow <-> gcsfs interop."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from steel_tpu import storage


@pytest.fixture(params=["local", "gcs"])
def root(request, tmp_path):
    return str(tmp_path / "root") if request.param == "local" else request.getfixturevalue("gcs_bucket")


def _tree(root, names):
    for name in names:
        storage.write_text(storage.join(root, *name.split("/")), name)


def _records(seed, sizes=(0, 1, 1000, 300_000)):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=n, dtype=np.uint8).tobytes() for n in sizes]


def _write_tfrecord(path, records):
    with tf.io.TFRecordWriter(path) as writer:
        for record in records:
            writer.write(record)


def test_is_gcs_and_join():
    assert storage.is_gcs("gs://b/x") and not storage.is_gcs("/gs:/x") and not storage.is_gcs("b/x")
    assert storage.join("gs://b", "x", "y.bin") == "gs://b/x/y.bin"
    assert storage.join("gs://b/x/", "y.bin") == "gs://b/x/y.bin"
    assert storage.join("/tmp/a", "b") == os.path.join("/tmp/a", "b")


def test_bytes_and_text_round_trip(root):
    data = bytes(range(256)) * 5
    storage.write_bytes(storage.join(root, "deep", "er", "x.bin"), data)  # parents need not exist
    assert storage.read_bytes(storage.join(root, "deep", "er", "x.bin")) == data
    assert storage.size(storage.join(root, "deep", "er", "x.bin")) == len(data)
    storage.write_text(storage.join(root, "t.txt"), "Dice ≥ 0.9\n")
    assert storage.read_text(storage.join(root, "t.txt")) == "Dice ≥ 0.9\n"
    storage.write_text(storage.join(root, "t.txt"), "shorter")  # overwrite
    assert storage.read_text(storage.join(root, "t.txt")) == "shorter"


def test_open_writes_and_reads(root):
    storage.makedirs(root)
    with storage.open(storage.join(root, "o.bin"), "wb") as f:
        f.write(b"abc")
        f.write(b"def")
    with storage.open(storage.join(root, "o.bin")) as f:
        assert f.read() == b"abcdef"


def test_missing_file_errors_name_the_path(root):
    missing = storage.join(root, "nope", "missing.bin")
    with pytest.raises(FileNotFoundError, match="missing.bin"):
        storage.read_bytes(missing)
    with pytest.raises(FileNotFoundError, match="missing.bin"):
        storage.size(missing)


def test_exists_and_isdir_on_files_prefixes_and_missing(root):
    _tree(root, ["a/b/c.txt"])
    assert storage.exists(storage.join(root, "a", "b", "c.txt"))
    assert storage.exists(storage.join(root, "a")) and storage.exists(storage.join(root, "a", "b"))
    assert storage.isdir(storage.join(root, "a")) and storage.isdir(storage.join(root, "a", "b"))
    assert not storage.isdir(storage.join(root, "a", "b", "c.txt"))
    assert not storage.exists(storage.join(root, "a", "b", "c")) and not storage.exists(storage.join(root, "z"))
    assert not storage.isdir(storage.join(root, "z"))


def test_makedirs_makes_an_empty_directory_that_exists(root):
    target = storage.join(root, "new", "deep")
    storage.makedirs(target)
    storage.makedirs(target)
    assert storage.exists(target) and storage.isdir(target) and tf.io.gfile.isdir(target)
    assert storage.listdir(target) == [] and storage.listdir(storage.join(root, "new")) == [target]
    storage.write_bytes(storage.join(target, "f.bin"), b"1")
    assert storage.listdir(target) == [storage.join(target, "f.bin")]


def test_listdir_gives_sorted_full_paths_in_the_callers_form(root):
    _tree(root, ["x/b.txt", "x/a.txt", "x/sub/c.txt", "x/sub/d/e.txt", "y.txt"])
    expected = [storage.join(root, "x", n) for n in ("a.txt", "b.txt", "sub")]
    assert storage.listdir(storage.join(root, "x")) == expected
    assert storage.listdir(storage.join(root, "x", "")) == expected  # a trailing slash changes nothing
    assert storage.listdir(root) == [storage.join(root, "x"), storage.join(root, "y.txt")]
    with pytest.raises(FileNotFoundError, match="absent"):
        storage.listdir(storage.join(root, "absent"))


def test_list_files_and_remove_take_paths_literally(root):
    _tree(root, ["a*b/x.txt", "aXb/x.txt", "aXb/y.txt", "a[1]/x.txt", "a1/x.txt", "aXb/sub/z.txt"])
    assert storage.list_files(storage.join(root, "a*b")) == {"x.txt": len("a*b/x.txt")}
    assert storage.list_files(storage.join(root, "aXb")) == {"x.txt": 9, "y.txt": 9}  # files only, one level
    assert storage.list_files(storage.join(root, "nowhere")) == {}
    storage.remove(storage.join(root, "a*b", "x.txt"))
    storage.remove(storage.join(root, "a[1]", "x.txt"))
    storage.remove(storage.join(root, "a?", "x.txt"))  # no such file: nothing happens, nothing else matches
    assert storage.list_files(storage.join(root, "a*b")) == {} and storage.list_files(storage.join(root, "a[1]")) == {}
    assert sorted(storage.list_files(storage.join(root, "aXb"))) == ["x.txt", "y.txt"]
    assert storage.read_text(storage.join(root, "a1", "x.txt")) == "a1/x.txt"


def test_remove_deletes_a_file_and_ignores_a_missing_one(root):
    _tree(root, ["r/keep.txt", "r/gone.txt"])
    storage.remove(storage.join(root, "r", "gone.txt"))
    storage.remove(storage.join(root, "r", "gone.txt"))
    assert storage.listdir(storage.join(root, "r")) == [storage.join(root, "r", "keep.txt")]


@pytest.mark.parametrize("mode, payload", [("wb", b"done"), ("w", "done")])
def test_atomic_write_publishes_on_success(root, mode, payload):
    path = storage.join(root, "out", "result.json")
    with storage.atomic_write(path, mode) as f:
        f.write(payload)
        assert not storage.exists(path)  # invisible until the block finishes
    assert storage.read_bytes(path) == b"done"
    assert storage.listdir(storage.join(root, "out")) == [path]  # no temporary file left beside it


def test_atomic_write_publishes_nothing_when_the_block_raises(root):
    path = storage.join(root, "out", "result.json")
    with pytest.raises(RuntimeError, match="boom"):
        with storage.atomic_write(path) as f:
            f.write(b"partial")
            raise RuntimeError("boom")
    assert not storage.exists(path)
    assert storage.list_files(storage.join(root, "out")) == {}  # no temporary file left either
    storage.write_bytes(path, b"old")
    with pytest.raises(RuntimeError, match="boom"):
        with storage.atomic_write(path) as f:
            f.write(b"new but partial")
            raise RuntimeError("boom")
    assert storage.read_bytes(path) == b"old"
    assert storage.listdir(storage.join(root, "out")) == [path]


def test_listings_see_what_another_client_wrote_since(root):
    # A TF job writes checkpoints/shards while the Python side lists them: nothing may be served from a stale cache.
    folder = storage.join(root, "ckpt")
    storage.write_bytes(storage.join(folder, "a.bin"), b"a")
    assert storage.listdir(folder) == [storage.join(folder, "a.bin")]
    assert not storage.exists(storage.join(folder, "b.bin"))
    with tf.io.gfile.GFile(storage.join(folder, "b.bin"), "wb") as f:
        f.write(b"bb")
    assert storage.listdir(folder) == [storage.join(folder, "a.bin"), storage.join(folder, "b.bin")]
    assert storage.list_files(folder) == {"a.bin": 1, "b.bin": 2}
    assert storage.exists(storage.join(folder, "b.bin")) and storage.size(storage.join(folder, "b.bin")) == 2
    tf.io.gfile.remove(storage.join(folder, "a.bin"))
    assert not storage.exists(storage.join(folder, "a.bin"))
    assert storage.listdir(folder) == [storage.join(folder, "b.bin")]


def test_tensorflow_writes_a_tfrecord_that_storage_reads_byte_identical(root, tmp_path):
    records = _records(seed=1)
    _write_tfrecord(str(tmp_path / "reference.tfrec"), records)
    path = storage.join(root, "tf", "part-0.tfrec")
    storage.makedirs(storage.join(root, "tf"))
    _write_tfrecord(path, records)
    assert storage.list_files(storage.join(root, "tf")) == {"part-0.tfrec": storage.size(path)}
    assert storage.read_bytes(path) == (tmp_path / "reference.tfrec").read_bytes()


def test_storage_writes_a_tfrecord_that_tf_data_reads(root, tmp_path):
    records = _records(seed=2)
    _write_tfrecord(str(tmp_path / "local.tfrec"), records)
    paths = [storage.join(root, "shards", f"s-{i}.tfrec") for i in range(2)]
    for path in paths:
        storage.write_bytes(path, (tmp_path / "local.tfrec").read_bytes())
    dataset = tf.data.TFRecordDataset(tf.io.gfile.glob(storage.join(root, "shards", "*.tfrec")))
    assert list(dataset.as_numpy_iterator()) == records * 2


def test_tensorflow_gfile_on_the_bucket(gcs_bucket):
    base = f"{gcs_bucket}/g"
    assert not tf.io.gfile.exists(base)
    tf.io.gfile.makedirs(f"{base}/sub")
    assert tf.io.gfile.isdir(f"{base}/sub")
    with tf.io.gfile.GFile(f"{base}/sub/t.txt", "w") as f:
        f.write("text")
    with tf.io.gfile.GFile(f"{base}/sub/t.txt") as f:
        assert f.read() == "text"
    assert tf.io.gfile.listdir(base) == ["sub/"]
    assert tf.io.gfile.glob(f"{base}/sub/*.txt") == [f"{base}/sub/t.txt"]
    assert storage.read_text(f"{base}/sub/t.txt") == "text"
    # TF left "g/" and "g/sub/" marker objects: storage lists directories, never the markers themselves.
    assert storage.listdir(base) == [f"{base}/sub"] and storage.listdir(f"{base}/sub") == [f"{base}/sub/t.txt"]
    assert storage.list_files(base) == {} and storage.list_files(f"{base}/sub") == {"t.txt": 4}


def test_large_objects_round_trip(root):
    # Larger than gcsfs' 5 MiB block: uploads take the resumable (multi-request) path.
    data = np.random.default_rng(3).integers(0, 256, size=(6 << 20) + 7, dtype=np.uint8).tobytes()
    storage.write_bytes(storage.join(root, "big", "a.bin"), data)
    with storage.open(storage.join(root, "big", "b.bin"), "wb") as f:
        for start in range(0, len(data), 1 << 20):
            f.write(data[start : start + (1 << 20)])
    for name in ("a.bin", "b.bin"):
        assert storage.size(storage.join(root, "big", name)) == len(data)
        assert storage.read_bytes(storage.join(root, "big", name)) == data
    with tf.io.gfile.GFile(storage.join(root, "big", "c.bin"), "wb") as f:
        f.write(data)
    with tf.io.gfile.GFile(storage.join(root, "big", "a.bin"), "rb") as f:
        assert f.read() == data
    assert storage.read_bytes(storage.join(root, "big", "c.bin")) == data


def test_fresh_bucket_per_test_is_empty(gcs_bucket, gcs_server):
    assert storage.listdir(gcs_bucket) == []
    other = gcs_server.create_bucket()
    assert other != gcs_bucket and storage.listdir(other) == []


@pytest.mark.slow
def test_subprocess_reaches_the_emulator_with_the_server_env(gcs_server, gcs_bucket):
    storage.write_text(f"{gcs_bucket}/in.txt", "from parent")
    script = textwrap.dedent(
        f"""
        import tensorflow as tf
        from steel_tpu import storage
        assert storage.read_text("{gcs_bucket}/in.txt") == "from parent"
        with tf.io.gfile.GFile("{gcs_bucket}/out.txt", "w") as f:
            f.write(tf.io.gfile.GFile("{gcs_bucket}/in.txt").read() + ", via child")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], env={**os.environ, **gcs_server.env}, capture_output=True, text=True,
        timeout=120, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert storage.read_text(f"{gcs_bucket}/out.txt") == "from parent, via child"
