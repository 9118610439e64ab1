"""Batch scoring: a valid submission, the ensemble it claims, resume, bad images, shards, GCS, and agreement with
training's validation Dice."""

import json
import os
import re
import shutil

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from steel_tpu import config as config_lib
from steel_tpu import metrics, postprocess, storage, tasks
from steel_tpu.constants import CLASS_IDS, HEIGHT, WIDTH
from steel_tpu.data import pipeline, shards
from steel_tpu.data.source import SourceError
from steel_tpu.data.synth import synthesize
from steel_tpu.device import distribute
from steel_tpu.formats import kaggle
from steel_tpu.formats.submission import parts_dir
from steel_tpu.formats.weights import WeightsError
from steel_tpu.formats.workdir import Workdir
from steel_tpu.scoring import predict
from steel_tpu.scoring.source import ModelSource

SIZE = (64, 320)
N_TEST = 12
DEFECT_FRACTION = 0.03


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("synth"))
    synthesize(folder, n_train=0, n_test=N_TEST, seed=11)
    return folder


@pytest.fixture(scope="module")
def images(data):
    return os.path.join(data, "test_images")


def _calibrate(model, sample):
    """Random init predicts ~0.5 everywhere: shift and scale the mask head so a few percent of pixels are defects
    and the probabilities spread over (0, 1), as a trained model's do (thresholds and gates then cut somewhere)."""
    import keras

    layer = model.get_layer("masks_logits")
    logits = keras.Model(model.inputs, layer.output)(sample).numpy().reshape(-1, 4)
    kernel, bias = layer.get_weights()
    # plaincnn's random logits vary by ~0.01 over an image: every threshold but 0.5 would keep all pixels or none.
    scale = 2.0 / logits.std(axis=0)
    layer.set_weights([kernel * scale, (bias - np.quantile(logits, 1 - DEFECT_FRACTION, axis=0)) * scale])


def random_workdir(work, images, *, cfg, seed=0):
    """Write into `work` random-init models of `cfg` (2 segment folds, 1 classifier; fold f's from seed `seed` +
    f), saved exactly as training saves; returns `work`."""
    cfg.folds = (0, 1)
    wd = Workdir(work)
    wd.save_config(cfg)
    sample = _decoded(sorted(os.listdir(images))[:4], images)
    for task, folds in (("segment", (0, 1)), ("classify", (0,))):
        for fold in folds:
            tf.keras.utils.set_random_seed(seed + fold)
            model = tasks.make(task, cfg).build_model()
            if task == "segment":
                _calibrate(model, sample.astype(np.float32))
            wd.save_weights(model, task, fold)
            wd.mark_done(task, fold, {})
    return work


@pytest.fixture(scope="module")
def work(tmp_path_factory, images):
    """A workdir of random-init tiny models (2 segment folds, 1 classifier), saved exactly as training saves."""
    return random_workdir(str(tmp_path_factory.mktemp("work")), images, cfg=config_lib.preset("tiny"))


def _decoded(ids, folder):
    """The model inputs the input pipeline makes of these images."""
    ds = pipeline.predict_dataset(source=[os.path.join(folder, i) for i in ids], image_size=SIZE, batch_size=len(ids))
    return next(ds.as_numpy_iterator())["image"]


def _reference_maps(work, ids, folder, *, tta, folds=(0, 1), classifier=True):
    """(mean segmenter probabilities at the model's resolution, gating probabilities or None) computed eagerly
    model by model (no XLA, no strategy, no threads)."""
    wd = Workdir(work)
    cfg = wd.config()
    x = _decoded(ids, folder).astype(np.float32)
    flips = [lambda a: a] + ([lambda a: a[:, :, ::-1], lambda a: a[:, ::-1]] if tta else [])
    seg, cls = [], []
    for task, out in (("segment", seg), ("classify", cls)):
        for fold in folds if task == "segment" else wd.completed_folds("classify"):
            model = tasks.make(task, cfg).build_model()
            wd.load_weights(model, task, fold)
            if task == "classify" and not classifier:
                continue
            for f in flips:
                p = np.asarray(model(f(x), training=False))
                out.append(f(p) if task == "segment" else p)
    probs = np.mean(cls, axis=0) if classifier else None
    return np.mean(seg, axis=0), probs


def _reference_masks(work, ids, folder, *, pp, tta, folds=(0, 1)):
    """What the submission must hold: _reference_maps post-processed on the host with numpy."""
    seg, probs = _reference_maps(work, ids, folder, tta=tta, folds=folds, classifier=pp.needs_classifier)
    q = postprocess.to_full_resolution(seg).numpy()
    masks, areas = postprocess.threshold_maps(q, pp, probs)  # soft gate and double threshold: per image and class
    if pp.filters_components:
        masks, areas = pp.filter(masks)  # components: brute-force tested in test_components
    kept = pp.keep(areas, probs)
    return masks & kept[:, None, None, :]


def _masks(csv_path, ids):
    labels = kaggle.read_labels(csv_path)
    return np.stack([labels.masks(i) for i in ids])


def _check_layout(csv_path, ids):
    """Every image x class exactly once, in the Kaggle submission layout."""
    with storage.open(csv_path, "rb") as f:
        lines = f.read().decode().splitlines()
    assert lines[0] == "ImageId,EncodedPixels,ClassId"
    keys = [(line.split(",")[0], line.split(",")[-1]) for line in lines[1:]]
    assert sorted(keys) == sorted((i, str(c)) for i in ids for c in CLASS_IDS)


def _run(work, images, out, **options):
    options.setdefault("progress", False)
    return predict.predict(workdir=work, images=images, out=str(out), **options)


@pytest.fixture(scope="module")
def ensemble_run(work, images, tmp_path_factory):
    """A run with a gate, min areas and components, per-class thresholds and flip TTA (the soft gate: test_tune)."""
    out = tmp_path_factory.mktemp("ensemble") / "sub.csv"
    pp = postprocess.PostProcess(pixel_threshold=(0.5, 0.45, 0.5, 0.55), min_area=(0, 300, 0, 0),
                                 gate=(0.3, 0.5, 0.3, 0.4),  # the tiny classifier is multilabel: a gate per class
                                 min_component=(0, 0, 150, 40))
    summary = _run(work, images, out, thresholds=pp, tta=True, batch_size=8)
    return out, pp, summary


@pytest.fixture(scope="module")
def plain(work, images, tmp_path_factory):
    """An uninterrupted run with the defaults; the CSV other runs must reproduce byte for byte."""
    out = tmp_path_factory.mktemp("plain") / "sub.csv"
    _run(work, images, out, batch_size=8, chunk_size=5)
    return out


def test_submission_holds_the_ensemble_for_every_image_and_class(ensemble_run, images, work):
    out, pp, summary = ensemble_run
    ids = sorted(os.listdir(images))
    _check_layout(out, ids)
    assert summary["images"] == N_TEST and summary["skipped"] == 0 and summary["folds"] == {"classify": [0],
                                                                                            "segment": [0, 1]}
    got, want = _masks(out, ids), _reference_masks(work, ids, images, pp=pp, tta=True)
    assert want.any() and not want.all()
    # A graph and eager Keras may round differently: allow a few pixels sitting exactly at a threshold to flip.
    assert (got != want).mean() < 1e-4
    assert not os.path.exists(parts_dir(out)) and not os.path.exists(str(out) + ".errors.csv")


@pytest.mark.slow
def test_the_ensemble_compiles_with_xla(ensemble_run, images, work, tmp_path):
    out, pp, _ = ensemble_run
    compiled = tmp_path / "xla.csv"
    _run(work, images, compiled, thresholds=pp, tta=True, batch_size=8, jit_compile=True)
    ids = sorted(os.listdir(images))
    assert (_masks(compiled, ids) != _masks(out, ids)).mean() < 1e-4


def test_resume_after_a_crash_gives_one_row_set_per_image(plain, images, work, tmp_path):
    out = tmp_path / "sub.csv"

    def crash(committed):
        if committed == 1:
            raise KeyboardInterrupt("simulated crash after the first chunk")

    with pytest.raises(KeyboardInterrupt):
        _run(work, images, out, batch_size=8, chunk_size=5, _after_chunk=crash)
    assert not out.exists()
    assert sorted(os.listdir(parts_dir(out))) == ["part-00000.csv", "plan.json"]
    summary = _run(work, images, out, batch_size=8, chunk_size=5)
    assert summary["resumed_chunks"] == 1 and summary["scored_now"] == N_TEST - 5
    assert out.read_bytes() == plain.read_bytes()
    assert not os.path.exists(parts_dir(out))


@pytest.mark.slow
def test_changed_settings_do_not_reuse_committed_chunks(work, images, tmp_path):
    out = tmp_path / "sub.csv"

    def crash(committed):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _run(work, images, out, batch_size=8, chunk_size=5, _after_chunk=crash)
    everything_empty = postprocess.PostProcess(min_area=(10 ** 9,) * 4)
    summary = _run(work, images, out, thresholds=everything_empty, batch_size=8, chunk_size=5)
    assert summary["resumed_chunks"] == 0
    assert all(rles == kaggle.EMPTY for rles in kaggle.read_labels(str(out)).rles.values())


def test_bad_images_stop_the_run_or_are_listed_and_empty(work, images, tmp_path):
    folder = tmp_path / "images"
    shutil.copytree(images, folder)
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8 this is not a JPEG")
    Image.new("RGB", (WIDTH // 2, HEIGHT)).save(folder / "small.jpg", format="JPEG")
    with pytest.raises(SourceError, match="corrupt.jpg") as error:
        _run(work, str(folder), tmp_path / "a.csv", batch_size=8)
    assert "small.jpg: 800x256, expected 1600x256" in str(error.value)
    out = tmp_path / "b.csv"
    summary = _run(work, str(folder), out, batch_size=8, skip_bad=True, chunk_size=4)
    assert summary["skipped"] == 2 and summary["images"] == N_TEST + 2
    with open(str(out) + ".errors.csv") as f:
        errors = f.read().splitlines()
    assert errors[0] == "image_id,reason" and [e.split(",")[0] for e in errors[1:]] == ["corrupt.jpg", "small.jpg"]
    labels = kaggle.read_labels(str(out))
    assert labels.rles["corrupt.jpg"] == kaggle.EMPTY and labels.rles["small.jpg"] == kaggle.EMPTY
    _check_layout(out, sorted(os.listdir(folder)))


def test_a_fold_whose_weights_are_garbage_is_refused_naming_the_file(work, images, tmp_path):
    own = tmp_path / "work"
    shutil.copytree(work, own)
    path = Workdir(own).weights_path("segment", 1)
    storage.write_bytes(path, b"these bytes are not HDF5" * 64)
    with pytest.raises(WeightsError, match=re.escape(f"{path}: not a readable HDF5 weights file")):
        _run(str(own), images, tmp_path / "x.csv", batch_size=8)
    assert not os.path.exists(tmp_path / "x.csv")


@pytest.mark.slow
def test_test_shards_score_like_the_jpeg_folder(plain, work, images, tmp_path):
    out_dir = str(tmp_path / "shards")
    shards.build_shards(data=images, out=out_dir, split="test", shard_mb=0.3, progress=False)
    assert len([n for n in storage.list_files(out_dir) if n.startswith("test-")]) > 1
    out = tmp_path / "s.csv"

    def crash(committed):
        raise KeyboardInterrupt("simulated crash after the first shard")

    with pytest.raises(KeyboardInterrupt):
        _run(work, out_dir, out, batch_size=8, _after_chunk=crash)
    summary = _run(work, out_dir, out, batch_size=8)
    assert summary["resumed_chunks"] == 1 and summary["images"] == N_TEST
    assert kaggle.read_labels(str(out)).rles == kaggle.read_labels(str(plain)).rles


@pytest.mark.slow
def test_thresholds_come_from_the_workdir_and_gate_needs_a_classifier(work, images, tmp_path):
    own = tmp_path / "work"
    shutil.copytree(work, own)
    storage.write_text(Workdir(own).thresholds_path(),
                       json.dumps({"pixel_threshold": [0.5] * 4, "min_area": [0] * 4, "gate": [1.0] * 4}))
    summary = _run(str(own), images, tmp_path / "gated.csv", batch_size=8)
    assert summary["thresholds"] == Workdir(own).thresholds_path()
    # Sigmoid probabilities stay below 1.0: a gate of 1.0 empties every image.
    assert all(r == kaggle.EMPTY for r in kaggle.read_labels(str(tmp_path / "gated.csv")).rles.values())
    shutil.rmtree(own / "classify")
    with pytest.raises(FileNotFoundError, match="no completed classify folds"):
        _run(str(own), images, tmp_path / "x.csv", batch_size=8)


def upload_inputs(*, images, work, bucket):
    """Copy the test images and the workdir into `bucket`; returns their gs:// paths (images, workdir)."""
    remote_images, remote_work = f"{bucket}/test_images", f"{bucket}/work"
    for name in os.listdir(images):
        storage.write_bytes(f"{remote_images}/{name}", storage.read_bytes(os.path.join(images, name)))
    for root, _, files in os.walk(work):
        for name in files:
            rel = os.path.relpath(os.path.join(root, name), work)
            storage.write_bytes(f"{remote_work}/{rel}", storage.read_bytes(os.path.join(root, name)))
    return remote_images, remote_work


@pytest.mark.slow
def test_gcs_end_to_end(plain, work, images, gcs_bucket):
    remote_images, remote_work = upload_inputs(images=images, work=work, bucket=gcs_bucket)
    remote_out = f"{gcs_bucket}/out/sub.csv"
    summary = _run(remote_work, remote_images, remote_out, batch_size=8, chunk_size=5)
    assert summary["images"] == N_TEST
    assert storage.list_files(parts_dir(remote_out)) == {}
    assert storage.read_bytes(remote_out) == plain.read_bytes()


# --- a really trained workdir: predict must reproduce what training's validation reported ---


@pytest.fixture(scope="module")
def trained(tiny_data, trained_workdir):
    return tiny_data["data"], trained_workdir


@pytest.mark.slow
def test_predict_reproduces_the_validation_dice_of_training(trained, tmp_path):
    data, work = trained
    oof = Workdir(work).oof("segment", 0)
    ids = oof["image_ids"].tolist()
    folder = tmp_path / "fold0"
    folder.mkdir()
    for i in ids:
        shutil.copy(os.path.join(data, "train_images", i), folder / i)
    out = tmp_path / "fold0.csv"
    device = distribute.select_strategy(prefer="mirrored")
    _run(work, str(folder), out, thresholds=postprocess.PostProcess(), folds=[0], batch_size=8, device=device,
         jit_compile=True)
    truth = kaggle.read_labels(os.path.join(data, "train.csv")).subset(ids)
    scores = metrics.score_labels(kaggle.read_labels(str(out)), truth, image_ids=ids)
    assert scores.mean == pytest.approx(float(oof["dice"].mean()), abs=1e-3)
    assert scores.per_class == pytest.approx(oof["dice"].mean(axis=0).tolist(), abs=1e-3)


def _thresholds_with_pixels_between(q, *, top, bottom):
    """uint8 maps [..., C] -> (upper, lower) thresholds per class: upper keeps the levels at or above the `top`
    quantile (and never the lowest level held), lower adds the levels down to the `bottom` quantile and at least the
    next level held below. A class whose maps hold one level gets both at it: nothing lies between."""
    upper, lower = [], []
    for vals in q.reshape(-1, q.shape[-1]).T:
        held = np.unique(vals)
        high = max(int(np.quantile(vals, top, method="higher")), int(held[min(1, len(held) - 1)]), 1)
        below = held[held < high]
        low = max(min(int(np.quantile(vals, bottom, method="lower")), int(below[-1]) if below.size else high), 1)
        # (level - 0.5) / QUANT sits mid-way between two levels, so float32 rounding cannot move `q > t * QUANT`.
        upper.append((high - 0.5) / postprocess.QUANT)
        lower.append((low - 0.5) / postprocess.QUANT)
    return np.array(upper), np.array(lower)


@pytest.mark.slow
def test_predict_applies_a_double_threshold_file_as_the_numpy_reference(trained, tmp_path):
    data, work = trained
    images = os.path.join(data, "test_images")
    ids = sorted(os.listdir(images))
    seg, _ = _reference_maps(work, ids, images, tta=False, classifier=False)
    q = postprocess.to_full_resolution(seg).numpy()
    # Thresholds from the levels the trained model's own maps hold, so that both rules bite: the lower one draws
    # pixels the upper one would not, and the presence count (above the upper one) drops masks the lower area alone
    # would keep. Levels, not rounded quantiles: a briefly trained model's maps sit on a few levels near 0.5 (CI saw
    # 125-129), where two rounded quantiles can leave no pixel between them.
    upper, lower = _thresholds_with_pixels_between(q, top=0.995, bottom=0.95)
    presence = postprocess.threshold_maps(q, postprocess.PostProcess(pixel_threshold=upper.tolist()))[1]
    # Min areas in the middle of the widest gap between presence counts: a count cannot drift across one.
    counts = np.sort(presence, axis=0)
    gap = np.argmax(np.diff(counts, axis=0), axis=0)
    min_area = ((counts[gap, range(4)] + counts[gap + 1, range(4)]) // 2 + 1).astype(int)
    path = tmp_path / "thresholds.json"
    path.write_text(json.dumps({"pixel_threshold": upper.tolist(), "mask_threshold": lower.tolist(),
                                "min_area": min_area.tolist(), "gate": []}))
    pp = ModelSource.resolve(work).thresholds(str(path)).postprocess
    assert pp.mask_threshold == tuple(lower)
    out = tmp_path / "sub.csv"
    summary = _run(work, images, out, thresholds=str(path), batch_size=8)
    assert summary["thresholds"] == str(path)
    want, got = _reference_masks(work, ids, images, pp=pp, tta=False), _masks(str(out), ids)
    # The device computes the maps in a graph, the reference eagerly: a pixel whose probability * 255 lies within
    # 1e-3 of a rounding edge may land on either side. Only such pixels may differ, and none decides presence.
    p255 = tf.image.resize(seg, (HEIGHT, WIDTH), method="bilinear").numpy() * 255
    edges = [postprocess.levels(t).astype(np.float64) + 0.5 for t in (lower, upper)]
    on_edge = np.any([np.abs(p255 - e) < 1e-3 for e in edges], axis=0)
    assert (got != want).sum() <= on_edge.sum() < 0.01 * got.size and not (got != want)[~on_edge].any()
    drawn, counted = postprocess.threshold_maps(q, pp)
    kept = counted >= min_area
    np.testing.assert_array_equal(got.any(axis=(1, 2)), kept & drawn.any(axis=(1, 2)))
    assert (want & ~postprocess.binarize(q, upper)).any()  # pixels between the thresholds are submitted
    assert (~kept & (drawn.sum(axis=(1, 2)) >= min_area)).any() and kept.any()  # presence, not the drawn area
