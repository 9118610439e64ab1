"""The HTML report: sections from real workdir files, images from real shards, a headless-Chromium render."""

import os
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from steel_tpu import config as config_lib
from steel_tpu import metrics, postprocess, storage
from steel_tpu.data import example, shards
from steel_tpu.data.shard_folder import ShardFolder, read_records
from steel_tpu.formats import rle
from steel_tpu.formats.workdir import Workdir
from steel_tpu.reports import examples, report
from steel_tpu.tuning import plot_data, tune
from fakes import finish_fold, tiny_workdir
from steel_tpu.data.synth import synthesize

SCALE = 8  # OOF maps of 32x200
K_FOLDS = 5
OOF_FOLDS = (0, 1)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    data = str(tmp_path_factory.mktemp("synth"))
    synthesize(data, n_train=40, n_test=0, seed=5)
    return data


@pytest.fixture(scope="module")
def shard_dir(source, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("shards"))
    shards.build_shards(data=source, out=out, folds=K_FOLDS, seed=0, progress=False)
    return out


def _fold_records(shard_dir, fold):
    yield from read_records(ShardFolder.open(shard_dir).files(folds=[fold]))


def _write_workdir(work, shard_dir, *, seed=0):
    """A workdir of real files (config, logs, oof.npz, done.json) for the images of OOF_FOLDS' shards.

    The OOF maps are noisy copies of each image's true masks, except the first image of each fold, whose
    maps are the masks' negative: the known worst image.
    """
    rng = np.random.default_rng(seed)
    wd, cfg = tiny_workdir(work, scale=SCALE)
    for fold in OOF_FOLDS:
        recs = list(_fold_records(shard_dir, fold))
        ids = np.array([r[example.IMAGE_ID] for r in recs])
        full = np.stack([np.stack([rle.decode(s) for s in r[example.RLE]], axis=-1) for r in recs]).astype(bool)
        truth = postprocess.downsample(full.astype(np.uint8) * 255, scale=SCALE) >= 128
        p = np.clip(truth * 0.7 + rng.normal(0.1, 0.1, truth.shape), 0, 1)
        p[0] = 1.0 - truth[0]
        q = np.round(p * 255).astype(np.uint8)
        full_pred = np.repeat(np.repeat(postprocess.binarize(q, 0.5), SCALE, 1), SCALE, 2)
        wd.save_oof("segment", fold, image_ids=ids, probs=q, truth=truth,
                         truth_area=full.sum(axis=(1, 2)), labels=full.any(axis=(1, 2)),
                         dice=metrics.dice_matrix(full_pred, full).astype(np.float32))
        any_defect = full.any(axis=(1, 2, 3))
        wd.save_oof("classify", fold, image_ids=ids,
                         probs=np.clip(any_defect * 0.6 + rng.uniform(0, 0.4, len(ids)), 0, 1)[:, None]
                         .astype(np.float32), labels=full.any(axis=(1, 2)))
        for task, metric in (("segment", {"dice": 0.3}), ("classify", {"auc": 0.6, "accuracy": 0.55})):
            rows = [{"epoch": e, "loss": 1.0 / (e + 1), "lr": 1e-3 * (1 - e / 3),
                     **{k: v + 0.1 * e + 0.01 * fold for k, v in metric.items()}, "train_images_per_s": 10.0 + e,
                     "seconds": 3.0} for e in range(3)]
            wd.write_log(task, fold, rows)
            finish_fold(wd, task, fold)
    return cfg


@pytest.fixture(scope="module")
def work(shard_dir, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("work"))
    _write_workdir(path, shard_dir)
    return path


def _referenced_pngs(index):
    with open(index) as f:
        page = f.read()
    return page, re.findall(r'<img src="([^"]+)"', page)


def _check_pngs(folder, names):
    for name in names:
        with open(os.path.join(folder, name), "rb") as f:
            assert f.read(8) == PNG_MAGIC, name




def test_read_images_decodes_the_source_jpegs(source, shard_dir):
    ids = [r[example.IMAGE_ID] for r in _fold_records(shard_dir, 2)][:3]
    images = examples.read_images(shard_dir, {2: ids})
    assert sorted(images) == sorted(ids)
    for image_id in ids:
        expected = np.asarray(Image.open(os.path.join(source, "train_images", image_id)).convert("L"))
        np.testing.assert_array_equal(images[image_id], expected)


def test_read_images_names_a_missing_image(shard_dir):
    other = next(_fold_records(shard_dir, 3))[example.IMAGE_ID]
    with pytest.raises(ValueError, match=re.escape(other)):
        examples.read_images(shard_dir, {2: [other]})  # in fold 3's shards, not fold 2's


def test_report_without_thresholds_or_images(work, tmp_path):
    out = str(tmp_path / "report")
    index = report.report(workdir=work, out=out)
    assert index == os.path.join(out, report.INDEX)
    page, images = _referenced_pngs(index)
    assert sorted(images) == ["confusion.png", "curves_classify.png", "curves_segment.png", "dice_per_class.png",
                              "examples.png"]
    assert sorted(n for n in os.listdir(out) if n != report.INDEX) == sorted(images)
    _check_pngs(out, images)
    assert "No thresholds.json" in page and "0.5 (no thresholds.json yet)" in page
    assert "pass --shards SHARDS" in page
    # The Dice table's "all" row is the mean of every fold's oof.npz dice.
    dice = np.concatenate([Workdir(work).oof("segment", f)["dice"]
                           for f in OOF_FOLDS])
    assert f"<td>{dice.mean():.4g}</td></tr></table>" in page
    # The worst images are the folds' first ones, whose maps are the negatives of their masks.
    for fold in OOF_FOLDS:
        first = Workdir(work).oof("segment", fold)["image_ids"][0]
        assert f"<tr><td>worst</td><td>{first}</td><td>{fold}</td>" in page
    assert "best (among images with a defect)" in page


def test_report_with_tuned_thresholds_and_images(work, shard_dir, tmp_path):
    tuned = str(tmp_path / "tuned")
    shutil.copytree(work, tuned)
    result = tune.tune(workdir=tuned)
    out = str(tmp_path / "report")
    page, images = _referenced_pngs(report.report(workdir=tuned, out=out, shards=shard_dir))
    assert "tuned thresholds from thresholds.json" in page and "over the image" in page
    for name in plot_data.PLOT_FILES:
        assert f"tune_{name}" in images
        with open(os.path.join(Workdir(tuned).tune_dir(), name), "rb") as a, open(os.path.join(out, f"tune_{name}"), "rb") as b:
            assert a.read() == b.read()
    assert f"{result['dice_after']['mean']:.4f} tuned" in page
    thresholds = postprocess.PostProcess.from_dict(result).pixel_threshold
    counts = sum(metrics.pixel_confusion(o["probs"], o["truth"], thresholds) for o in (
        Workdir(tuned).oof("segment", f) for f in OOF_FOLDS))
    tp_rate = counts[0, 1, 1] / counts[0].sum()
    assert f"<td>{tp_rate:.4g}</td>" in page

    # The report draws tune's figures from tune's plot data alone: without the PNGs they come out the same, and
    # without the data (a workdir tuned before tune saved it) the section says to tune again, searching nothing.
    for name in plot_data.PLOT_FILES:
        os.remove(os.path.join(Workdir(tuned).tune_dir(), name))
    again = str(tmp_path / "again")
    _, images = _referenced_pngs(report.report(workdir=tuned, out=again))
    for name in plot_data.PLOT_FILES:
        with open(os.path.join(out, f"tune_{name}"), "rb") as a, open(os.path.join(again, f"tune_{name}"), "rb") as b:
            assert a.read() == b.read()
    os.remove(os.path.join(Workdir(tuned).tune_dir(), plot_data.PLOT_DATA))
    page, images = _referenced_pngs(report.report(workdir=tuned, out=str(tmp_path / "old")))
    assert not any(name.startswith("tune_") for name in images)
    assert f"No tune/{plot_data.PLOT_DATA} (tuned by an older version)" in page


def test_sections_without_inputs_are_notes(tmp_path):
    work, out = str(tmp_path / "work"), str(tmp_path / "out")
    Workdir(work).save_config(config_lib.preset("tiny"))
    page, images = _referenced_pngs(report.report(workdir=work, out=out))
    assert images == [] and os.listdir(out) == [report.INDEX]
    assert page.count('class="note"') == 7
    with pytest.raises(FileNotFoundError, match="not a training workdir"):
        report.report(workdir=str(tmp_path / "nothing"), out=out)


def test_a_failed_report_leaves_no_index(work, tmp_path):
    out = str(tmp_path / "out")
    report.report(workdir=work, out=out)
    with pytest.raises(FileNotFoundError, match="manifest.json: not found"):
        report.report(workdir=work, out=out, shards=str(tmp_path / "no_shards"))
    assert not os.path.exists(os.path.join(out, report.INDEX))


def test_report_on_gcs(work, gcs_bucket, tmp_path):
    remote = f"{gcs_bucket}/work"
    for root, _, files in os.walk(work):
        for name in files:
            path = os.path.join(root, name)
            storage.write_bytes(f"{remote}/{os.path.relpath(path, work)}", open(path, "rb").read())
    index = report.report(workdir=remote, out=f"{gcs_bucket}/report")
    assert index == f"{gcs_bucket}/report/{report.INDEX}"
    names = re.findall(r'<img src="([^"]+)"', storage.read_text(index))
    assert len(names) == 5 and all(storage.read_bytes(f"{gcs_bucket}/report/{n}")[:8] == PNG_MAGIC for n in names)


def _chromium():
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def _screenshot(index, tmp_path):
    binary = _chromium()
    if binary is None:
        pytest.skip("chromium not found on PATH (apt-get install -y chromium)")
    shot = str(tmp_path / "shot.png")
    subprocess.run([binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1400,3000",
                    f"file://{os.path.abspath(index)}"], check=True, capture_output=True, timeout=120)
    return shot


def _assert_rendered(shot):
    assert os.path.getsize(shot) > 50_000
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape == (3000, 1400, 3)
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 100  # text, plots and photos, not a blank page
    rows_with_ink = (pixels.min(axis=(1, 2)) < 128).mean()
    assert rows_with_ink > 0.3  # the figures fill the page: images were found and drawn


def test_chromium_renders_the_report(work, shard_dir, tmp_path):
    index = report.report(workdir=work, out=str(tmp_path / "report"), shards=shard_dir)
    _assert_rendered(_screenshot(index, tmp_path))


@pytest.fixture(scope="module")
def trained(trained_workdir, tmp_path_factory):
    """A copy of the session's really trained workdir (both tasks, folds 0 and 1), tuned."""
    work = str(tmp_path_factory.mktemp("trained") / "work")
    shutil.copytree(trained_workdir, work)  # tuning writes into it: other modules keep the untuned original
    tune.tune(workdir=work)
    return work


@pytest.mark.slow
def test_report_of_a_real_training_run(trained, tiny_data, tmp_path):
    index = report.report(workdir=trained, out=str(tmp_path / "report"), shards=tiny_data["shards"])
    page, images = _referenced_pngs(index)
    assert 'class="note"' not in page  # every section found its inputs
    assert sorted(images) == sorted(["curves_classify.png", "curves_segment.png", "dice_per_class.png",
                                     "confusion.png", "examples.png", *[f"tune_{n}" for n in plot_data.PLOT_FILES]])
    _check_pngs(os.path.dirname(index), images)
    dice = np.concatenate([Workdir(trained).oof("segment", f)["dice"]
                           for f in (0, 1)])
    assert f"<td>{dice.mean():.4g}</td></tr></table>" in page  # the "all folds" row closes the table
    _assert_rendered(_screenshot(index, tmp_path))
