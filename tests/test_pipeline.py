"""tf.data pipelines on small real shards: static shapes, exact masks, sampling, padding, gs://, distribution."""

import hashlib
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from steel_tpu.data import synth
from steel_tpu.formats import rle

from steel_tpu.constants import HEIGHT, NUM_CLASSES, WIDTH
from steel_tpu.data import decode, example, pipeline
from steel_tpu.data.shard_folder import ShardFolder, ShardFolderError
from steel_tpu.data.shards import build_shards
from steel_tpu.device import distribute

SIZE = (32, 192)  # DCT-scaled decode at 1/8 (32x200), then an area resize of the width
BATCH = 4


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A 30-image train source with 8 test images, sharded (5 folds, 2 shards in fold 0) and in JPEG folders."""
    root = tmp_path_factory.mktemp("pipeline")
    source = str(root / "source")
    synth.synthesize(source, n_train=30, n_test=8, seed=3)
    train = str(root / "train_shards")
    build_shards(data=source, out=train, folds=5, shard_mb=0.25, progress=False, workers=2)
    test = str(root / "test_shards")
    build_shards(data=source, out=test, split="test", shard_mb=1.0, progress=False, workers=2)
    return {"source": source, "train": train, "test": test}


@pytest.fixture(scope="module")
def records(data):
    """Every train record as plain Python values, in shard file order."""
    files = ShardFolder.open(data["train"]).files()
    return [example.parse_numpy(r.numpy()) for r in tf.data.TFRecordDataset(files)]


def _full_masks(rles):
    return np.stack([rle.decode(r) for r in rles], axis=-1)


def _digest(image):
    return hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest()


def _image_at(jpeg, size):
    return decode.to_images(decode.decode_gray(jpeg, image_size=size)[None], image_size=size)[0].numpy()


# --- decoding ---------------------------------------------------------------------------------------------


EDGE_CASES = [
    ["", "", "", ""],
    ["1 256", "", "", ""],  # exactly the first column
    ["200 100", "", "", ""],  # crosses from column 0 into column 1
    ["1 1024", "", "", ""],  # four full columns in one run
    ["1 1 3 1 5 1 7 1 9 1", "", "", ""],  # five intervals in one column
    ["10 5 15 5", "", "", ""],  # touching runs
    [f"{HEIGHT * WIDTH} 1", "", "", ""],  # the last pixel
    [f"{HEIGHT * (WIDTH - 1) + 1} {HEIGHT}", "1 1", "", "300 2 900 30"],
]


@pytest.mark.parametrize("size", [(HEIGHT, WIDTH), (128, 800), (64, 320), (32, 192), (100, 1000)])
def test_decode_masks_equals_numpy_decode_then_nearest_resize(records, size):
    rows = [r[example.RLE] for r in records[:12]] + EDGE_CASES
    got = decode.decode_masks(tf.constant(rows), image_size=size).numpy()
    full = np.stack([_full_masks(r) for r in rows])
    want = tf.image.resize(full, size, method="nearest").numpy()
    assert got.dtype == np.uint8 and got.shape == (len(rows), *size, NUM_CLASSES)
    np.testing.assert_array_equal(got, want)


def test_decode_masks_of_dense_noise():
    # Dozens of intervals per column: the painter's per-batch slot count goes far beyond Severstal's 1-3.
    rng = np.random.default_rng(0)
    masks = (rng.random((2, HEIGHT, WIDTH, NUM_CLASSES)) < 0.3).astype(np.uint8)
    rows = rle.encode_batch(masks)
    got = decode.decode_masks(tf.constant(rows), image_size=(HEIGHT, WIDTH)).numpy()
    np.testing.assert_array_equal(got, masks)


def test_gray_decode_is_the_rgb_decode_of_grey_steel(records):
    for record in records[:4]:
        jpeg = record[example.IMAGE]
        rgb = tf.io.decode_jpeg(jpeg, channels=3).numpy()
        np.testing.assert_array_equal(_image_at(jpeg, (HEIGHT, WIDTH)), rgb)
        half = tf.io.decode_jpeg(jpeg, channels=3, ratio=2).numpy()
        np.testing.assert_array_equal(_image_at(jpeg, (128, 800)), half)


@pytest.mark.parametrize("size, exact", [((256, 800), True), ((64, 320), True), ((32, 192), True),
                                         ((96, 512), False), ((224, 1568), False)])
def test_images_are_the_area_resize_of_the_decoded_jpeg(records, size, exact):
    jpegs = [r[example.IMAGE] for r in records[:3]]
    gray = tf.stack([decode.decode_gray(j, image_size=size) for j in jpegs])
    got = decode.to_images(gray, image_size=size).numpy().astype(int)
    ratio = decode.jpeg_ratio(size)
    rgb = tf.stack([tf.io.decode_jpeg(j, channels=3, ratio=ratio) for j in jpegs])
    want = tf.round(tf.image.resize(rgb, size, method="area")).numpy().astype(int)
    assert got.shape == (3, *size, 3)
    # Other periods differ from tf.image.resize only where a sum lands on .5 and float order rounds it apart.
    assert np.abs(got - want).max() <= (0 if exact else 1)
    assert np.mean(got != want) < 0.02


def test_image_size_is_checked():
    with pytest.raises(ValueError, match="image_size"):
        decode.check_image_size((512, 1600))


# --- training ---------------------------------------------------------------------------------------------


def _train(data, **kwargs):
    files = ShardFolder.open(data["train"]).files()
    return pipeline.train_dataset(files=files, image_size=SIZE, batch_size=BATCH, **{"seed": 0, **kwargs})


def test_shard_files_by_fold_come_from_the_manifest(data):
    folder = ShardFolder.open(data["train"])
    fold0 = folder.files(folds=[0])
    assert len(fold0) == 2 and all(os.path.basename(f).startswith("train-f0-") for f in fold0)
    assert len(folder.files(folds=[1, 2])) == 4
    test = ShardFolder.open(data["test"], split="test")
    assert test.files() == [os.path.join(data["test"], e["name"]) for e in test.entries]
    with pytest.raises(ShardFolderError, match=r"manifest\.json: no shards for fold\(s\) \[7\]"):
        folder.files(folds=[7])


def test_train_batches_are_static_uint8_and_decoded_right(data, records):
    ds = _train(data, shuffle_buffer=1)
    images_spec, masks_spec = ds.element_spec
    assert images_spec.shape == (BATCH, *SIZE, 1) and images_spec.dtype == tf.uint8  # luma: the device makes 3
    assert masks_spec.shape == (BATCH, *SIZE, NUM_CLASSES) and masks_spec.dtype == tf.uint8
    by_image = {_digest(_image_at(r[example.IMAGE], SIZE)[..., :1]): r for r in records}
    for images, masks in ds.take(3):
        for image, mask in zip(images.numpy(), masks.numpy()):
            record = by_image[_digest(image)]
            want = tf.image.resize(_full_masks(record[example.RLE]), SIZE, method="nearest").numpy()
            np.testing.assert_array_equal(mask, want)


def _first(ds, n=3):
    return [tuple(t.numpy() for t in batch) for batch in ds.take(n)]


def test_train_is_deterministic_for_a_seed_and_epoch(data):
    sampling = dict(oversample={1: 2, 3: 2}, clean_keep=0.5, shuffle_buffer=8)
    a = _first(_train(data, seed=5, epoch=2, **sampling))
    b = _first(_train(data, seed=5, epoch=2, **sampling))
    other = _first(_train(data, seed=5, epoch=3, **sampling))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x[0], y[0])
        np.testing.assert_array_equal(x[1], y[1])
    assert any(not np.array_equal(x[0], z[0]) for x, z in zip(a, other))


@pytest.fixture(scope="module")
def one_file(data, tmp_path_factory):
    """All train records in one file, in `records` order (TFRecord files concatenate)."""
    path = str(tmp_path_factory.mktemp("one") / "train-f0-00000-of-00001.tfrec")
    with open(path, "wb") as out:
        for shard in ShardFolder.open(data["train"]).files():
            with open(shard, "rb") as f:
                out.write(f.read())
    return path


def _one_pass_counts(one_file, records, epoch=0, **sampling):
    """{record index: copies} in the first pass over one file (batch 1, no shuffle: record order is kept)."""
    by_image = {_digest(_image_at(r[example.IMAGE], SIZE)[..., :1]): i for i, r in enumerate(records)}
    ds = pipeline.train_dataset(files=[one_file], image_size=SIZE, batch_size=1, seed=0, epoch=epoch,
                                shuffle_buffer=1, **sampling)
    counts, previous = {}, -1
    for images, _ in ds:
        index = by_image[_digest(images[0].numpy())]
        if index < previous:  # the second pass has begun
            return counts
        counts[index], previous = counts.get(index, 0) + 1, index
    raise AssertionError("the endless training dataset ended")


def test_oversampling_and_clean_thinning_counts(one_file, records):
    oversample = {1: 2, 2: 3, 4: 2}
    counts = _one_pass_counts(one_file, records, oversample=oversample, clean_keep=0.5)
    factors = {1: 2, 2: 3, 3: 1, 4: 2}
    clean = [i for i, r in enumerate(records) if not any(r[example.PRESENT])]
    for i, record in enumerate(records):
        present = [c + 1 for c in range(NUM_CLASSES) if record[example.PRESENT][c]]
        if present:
            assert counts.get(i) == max(factors[c] for c in present), record[example.IMAGE_ID]
        else:
            assert counts.get(i, 0) <= 1
    kept = {i for i in clean if counts.get(i)}
    assert 0 < len(kept) < len(clean)  # keep probability 0.5 over ~15 clean images
    assert _one_pass_counts(one_file, records, oversample=oversample, clean_keep=0.5) == counts
    next_epoch = _one_pass_counts(one_file, records, oversample=oversample, clean_keep=0.5, epoch=1)
    assert {i for i in clean if next_epoch.get(i)} != kept


def test_no_clean_images_when_clean_keep_is_zero(one_file, records):
    counts = _one_pass_counts(one_file, records, clean_keep=0.0)
    assert all(any(records[i][example.PRESENT]) for i in counts)
    assert len(counts) == sum(any(r[example.PRESENT]) for r in records)


@pytest.mark.parametrize("classes", [(3,), (2, 3)])
def test_a_model_of_some_classes_sees_only_their_images_as_defects(one_file, records, classes):
    # Seed 000's per-class segmenters: clean_keep=0 keeps exactly the images holding one of the model's classes,
    # oversampling acts on them only; an image of other classes alone is a clean image to the model.
    factors = {2: 2, 4: 3}
    counts = _one_pass_counts(one_file, records, clean_keep=0.0, oversample=factors, classes=classes)
    for i, record in enumerate(records):
        mine = [c for c in classes if record[example.PRESENT][c - 1]]
        assert counts.get(i, 0) == max((factors.get(c, 1) for c in mine), default=0), record[example.IMAGE_ID]
    assert len(counts) > 1


def test_steps_per_epoch_from_manifest():
    shards = [{"fold": 0, "records": 100, "class_counts": [10, 2, 40, 8]},
              {"fold": 1, "records": 60, "class_counts": [5, 0, 25, 0]}]
    folder = ShardFolder(path="unused", manifest={"split": "train", "folds": 2, "shards": shards})
    assert pipeline.steps_per_epoch(folder, batch_size=16) == 10
    assert pipeline.steps_per_epoch(folder, batch_size=16, folds=[1]) == 3
    # fold 0: 60 defect + 40 clean; clean kept 0.25 -> 10, +10 extra copies of class 1, +6 of class 2
    got = pipeline.steps_per_epoch(folder, batch_size=4, folds=[0], oversample={1: 2, 2: 4}, clean_keep=0.25)
    assert got == (60 + 10 + 10 + 6) // 4
    # A model of class 1 only: 10 images of it (x2), the 90 others are clean to it, kept 0.25 -> 22.5.
    got = pipeline.steps_per_epoch(folder, batch_size=4, folds=[0], oversample={1: 2, 2: 4}, clean_keep=0.25,
                                   classes=(1,))
    assert got == int((90 * 0.25 + 10 + 10) // 4)
    with pytest.raises(ValueError, match="fold"):
        pipeline.steps_per_epoch(folder, batch_size=4, folds=[3])


def test_steps_bound_the_epoch(data):
    assert sum(1 for _ in _train(data, steps=5)) == 5


@pytest.mark.parametrize("bad", [dict(oversample={5: 2}), dict(oversample={1: 1.5}), dict(clean_keep=1.5)])
def test_bad_sampling_options_raise(data, bad):
    with pytest.raises(ValueError):
        _train(data, **bad)


def test_input_pipelines_read_disjoint_files(data, records):
    files = ShardFolder.open(data["train"]).files()
    seen = []
    for pipeline_id in range(2):
        context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=pipeline_id,
                                             num_replicas_in_sync=2)
        ds = pipeline.train_dataset(files=files, image_size=SIZE, batch_size=4, seed=0, shuffle_buffer=1,
                                    input_context=context)
        assert ds.element_spec[0].shape[0] == 2  # per-replica batch of the global 4
        seen.append({_digest(img) for images, _ in ds.take(20) for img in images.numpy()})
    assert seen[0] and seen[1] and not seen[0] & seen[1]


def test_distribute_datasets_from_function(data, logical_cpus):
    strategy = distribute.select_strategy(prefer="mirrored", verbose=False).strategy  # one per process
    assert strategy.num_replicas_in_sync == len(logical_cpus)
    files = ShardFolder.open(data["train"]).files()
    dist = strategy.distribute_datasets_from_function(
        lambda context: pipeline.train_dataset(files=files, image_size=SIZE, batch_size=16, seed=0,
                                               input_context=context))
    images, masks = next(iter(dist))
    local_images = strategy.experimental_local_results(images)
    local_masks = strategy.experimental_local_results(masks)
    assert len(local_images) == len(logical_cpus)
    assert all(x.shape == (2, *SIZE, 1) and x.dtype == tf.uint8 for x in local_images)
    assert all(m.shape == (2, *SIZE, NUM_CLASSES) for m in local_masks)


# --- evaluation and prediction ----------------------------------------------------------------------------


def test_eval_yields_every_record_once_padded(data, records):
    files = ShardFolder.open(data["train"]).files()
    batch = 7  # 30 records -> 4 full batches + 2, padded with 5
    ds = pipeline.eval_dataset(files=files, image_size=SIZE, batch_size=batch)
    spec = ds.element_spec
    assert spec["image"].shape == (batch, *SIZE, 3) and spec["mask"].shape == (batch, HEIGHT, WIDTH, NUM_CLASSES)
    assert spec["valid"].shape == (batch,) and spec["image_id"].shape == (batch,)
    ids, valid, batches = [], [], list(ds)
    assert len(batches) == -(-len(records) // batch)
    for b in batches:
        ids += [i.decode() for i in b["image_id"].numpy()]
        valid += list(b["valid"].numpy())
    assert [i for i, v in zip(ids, valid) if v] == [r[example.IMAGE_ID] for r in records]
    assert valid == [True] * len(records) + [False] * (len(ids) - len(records))
    last = batches[-1]
    padded = ~last["valid"].numpy()
    assert not last["image"].numpy()[padded].any() and not last["mask"].numpy()[padded].any()
    first = batches[0]
    for k in range(batch):
        np.testing.assert_array_equal(first["mask"][k].numpy(), _full_masks(records[k][example.RLE]))
        np.testing.assert_array_equal(first["image"][k].numpy(), _image_at(records[k][example.IMAGE], SIZE))


def test_eval_masks_at_model_resolution_on_request(data, records):
    files = ShardFolder.open(data["train"]).files(folds=[0])
    ds = pipeline.eval_dataset(files=files, image_size=SIZE, batch_size=BATCH, full_res_masks=False)
    assert ds.element_spec["mask"].shape == (BATCH, *SIZE, NUM_CLASSES)


def _predicted(ds):
    out = {}
    for b in ds:
        for image_id, image, valid in zip(b["image_id"].numpy(), b["image"].numpy(), b["valid"].numpy()):
            if valid:
                assert image_id.decode() not in out
                out[image_id.decode()] = image
    return out


def test_predict_from_jpeg_folder_equals_test_shards(data):
    folder = os.path.join(data["source"], "test_images")
    from_jpegs = pipeline.predict_dataset(source=folder, image_size=SIZE, batch_size=3)
    from_shards = pipeline.predict_dataset(source=data["test"], image_size=SIZE, batch_size=3)
    assert from_jpegs.element_spec["image"].shape == (3, *SIZE, 3)
    a, b = _predicted(from_jpegs), _predicted(from_shards)
    assert sorted(a) == sorted(os.listdir(folder)) and len(a) == 8
    assert a.keys() == b.keys()
    for image_id in a:
        np.testing.assert_array_equal(a[image_id], b[image_id])
    paths = sorted(os.path.join(folder, f) for f in os.listdir(folder))[:2]
    assert list(_predicted(pipeline.predict_dataset(source=paths, image_size=SIZE, batch_size=4))) == [
        os.path.basename(p) for p in paths]


def test_predict_names_a_bad_file(data, tmp_path):
    folder = tmp_path / "jpegs"
    folder.mkdir()
    good = sorted(os.listdir(os.path.join(data["source"], "test_images")))[0]
    shutil.copy(os.path.join(data["source"], "test_images", good), folder / good)
    (folder / "broken.jpg").write_bytes(b"not a jpeg at all")
    with pytest.raises(tf.errors.InvalidArgumentError, match="broken.jpg"):
        list(pipeline.predict_dataset(source=str(folder), image_size=SIZE, batch_size=2))
    (folder / "broken.jpg").unlink()
    small = tf.io.encode_jpeg(tf.zeros([64, 64, 3], tf.uint8)).numpy()
    (folder / "small.jpg").write_bytes(small)
    with pytest.raises(tf.errors.InvalidArgumentError, match="small.jpg"):
        list(pipeline.predict_dataset(source=str(folder), image_size=SIZE, batch_size=2))
    with pytest.raises(FileNotFoundError, match="no test"):
        pipeline.predict_dataset(source=str(tmp_path / "nothing"), image_size=SIZE, batch_size=2)


# --- gs:// --------------------------------------------------------------------------------------------------


def test_reads_shards_and_manifest_from_gcs(data, gcs_bucket):
    remote = f"{gcs_bucket}/shards"
    for name in os.listdir(data["train"]):
        tf.io.gfile.copy(os.path.join(data["train"], name), f"{remote}/{name}")
    folder = ShardFolder.open(remote).check()
    files = folder.files(folds=[0, 1])
    assert all(f.startswith("gs://") for f in files) and len(files) == 4
    assert pipeline.steps_per_epoch(folder, batch_size=2, folds=[0, 1]) >= 1
    ds = pipeline.eval_dataset(files=files, image_size=SIZE, batch_size=5)
    ids = [i.decode() for b in ds for i, v in zip(b["image_id"].numpy(), b["valid"].numpy()) if v]
    local = [example.parse_numpy(r.numpy())[example.IMAGE_ID]
             for r in tf.data.TFRecordDataset(ShardFolder.open(data["train"]).files(folds=[0, 1]))]
    assert ids == local
    train = pipeline.train_dataset(files=files, image_size=SIZE, batch_size=2, seed=0, steps=2, shuffle_buffer=8)
    assert [images.shape for images, _ in train] == [(2, *SIZE, 1)] * 2
