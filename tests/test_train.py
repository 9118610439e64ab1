import csv
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from steel_tpu import config, tasks
from steel_tpu.data import example
from steel_tpu.data.shard_folder import ShardFolder
from steel_tpu.formats.workdir import Workdir
from steel_tpu.tasks.classify import classifier_scores
from steel_tpu.training import averaging, train

pytestmark = pytest.mark.slow  # every test here trains real models (the XLA compile alone takes a minute)


def _fold_ids(shards, fold):
    files = ShardFolder.open(shards).files(folds=[fold])
    return sorted(example.parse_numpy(r.numpy())["image_id"] for r in tf.data.TFRecordDataset(files))


def _log(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("task", tasks.NAMES)
@pytest.mark.parametrize("fold", [0, 1])
def test_every_fold_leaves_weights_logs_and_out_of_fold_predictions(trained_workdir, tiny_data, task, fold):
    wd = Workdir(trained_workdir)
    for path in (wd.weights_path(task, fold), wd.log_path(task, fold), wd.oof_path(task, fold),
                 wd.done_path(task, fold)):
        assert os.path.exists(path), path
    assert os.listdir(wd.tb_dir(task, fold))
    assert wd.done(task, fold)["metric"] == tasks.TASKS[task].metric
    rows = _log(wd.log_path(task, fold))
    assert [int(r["epoch"]) for r in rows] == [0]
    oof = wd.oof(task, fold)
    # Every validation image exactly once: padding rows of the last batch are dropped.
    assert sorted(oof["image_ids"].tolist()) == _fold_ids(tiny_data["shards"], fold)
    if task == "segment":
        n = len(oof["image_ids"])
        assert oof["probs"].shape == (n, 64, 400, 4) and oof["probs"].dtype == np.uint8
        assert oof["truth"].shape == (n, 64, 400, 4) and oof["dice"].shape == (n, 4)
        assert float(rows[0]["dice"]) == pytest.approx(oof["dice"].mean(), abs=1e-6)
        assert (oof["truth_area"] > 0).any()
    else:
        assert 0.0 <= float(rows[0]["auc"]) <= 1.0
        # The tiny classifier is multilabel: one probability per class, and per-class AUCs in the log.
        assert oof["probs"].shape == (len(oof["image_ids"]), 4)
        assert {"auc_any", "auc_c1", "auc_c2", "auc_c3", "auc_c4"} <= set(rows[0])


def test_a_completed_run_is_skipped_not_retrained(trained_workdir, tiny_data, tiny_config):
    weights = Workdir(trained_workdir).weights_path("segment", 0)
    before = os.path.getmtime(weights)
    results = train.run(shards=tiny_data["shards"], workdir=trained_workdir, cfg=tiny_config, folds=(0,))
    assert [r["task"] for r in results] == ["classify", "segment"]
    assert os.path.getmtime(weights) == before


def test_resuming_with_another_config_is_refused(trained_workdir, tiny_data, tiny_config):
    other = config.apply_overrides(tiny_config, ["segment.train.learning_rate=0.5"])
    with pytest.raises(ValueError, match="different config"):
        train.run(shards=tiny_data["shards"], workdir=trained_workdir, cfg=other, folds=(0,))


def test_folds_outside_the_shards_are_refused(tiny_data, tiny_config, tmp_path):
    with pytest.raises(ValueError, match=r"folds \[2\] outside the 2 folds"):
        train.run(shards=tiny_data["shards"], workdir=str(tmp_path / "w"), cfg=tiny_config, folds=(2,))


def test_a_killed_run_resumes_from_its_last_checkpoint(tiny_data, tmp_path):
    work = str(tmp_path / "work")
    args = [sys.executable, "-m", "steel_tpu.cli", "train", "--shards", tiny_data["shards"], "--workdir", work,
            "--task", "segment", "--folds", "0", "--config", "tiny",
            "--set", "segment.train.epochs=3", "--set", "segment.train.steps_per_epoch=1",
            "--set", "segment.train.jit_compile=False", "--set", "segment.train.ema_decay=0.9"]
    wd = Workdir(work)
    ckpt_index = os.path.join(wd.ckpt_dir("segment", 0), "checkpoint")
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 600
        while not os.path.exists(ckpt_index) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert proc.poll() is None, "training ended before it could be interrupted"
        proc.send_signal(signal.SIGKILL)  # no clean-up: as a preempted TPU VM would stop
    finally:
        proc.wait()
    interrupted = _log(wd.log_path("segment", 0))
    assert 1 <= len(interrupted) < 3
    assert wd.done("segment", 0) is None

    done = subprocess.run(args, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"resuming after epoch {len(interrupted)}" in done.stdout
    rows = _log(wd.log_path("segment", 0))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]  # the same epoch count as an uninterrupted run
    assert rows[: len(interrupted)] == interrupted
    reader = tf.train.load_checkpoint(wd.ckpt_dir("segment", 0))
    assert reader.get_tensor("state/epoch/.ATTRIBUTES/VARIABLE_VALUE") == 3
    # One optimizer step per training step of all three epochs: none repeated, none lost.
    assert reader.get_tensor("state/optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE") == 3
    # The weight average resumed with the fold: one update per optimizer step.
    assert reader.get_tensor("state/average/count/.ATTRIBUTES/VARIABLE_VALUE") == 3


def test_training_under_eight_replicas_keeps_the_weight_average(slice_runs, tiny_data):
    # conftest's slice_runs trained fold 1 of its segmenter on the 8 logical CPUs with ema_decay 0.9.
    wd, cfg = Workdir(slice_runs["work"]), slice_runs["cfg"]
    assert cfg.segment.train.ema_decay == 0.9 and 0.0 <= wd.done("segment", 1)["best"] <= 1.0
    assert len(wd.oof("segment", 1)["image_ids"]) == len(_fold_ids(tiny_data["shards"], 1))
    # The kept weights (what OOF was scored with and predict loads) are the average, not the trained weights.
    task = tasks.make("segment", cfg)
    model = task.build_model(pretrained=False)
    wd.load_weights(model, "segment", 1)
    reader = tf.train.load_checkpoint(wd.ckpt_dir("segment", 1))
    shadow = [reader.get_tensor(f"state/average/shadow/{i}/.ATTRIBUTES/VARIABLE_VALUE")
              for i in range(len(averaging.averaged_weights(model)))]
    for w, s in zip(averaging.averaged_weights(model), shadow):
        np.testing.assert_array_equal(np.asarray(w), s)
    trained = [reader.get_tensor(k) for k in reader.get_variable_to_shape_map() if k.startswith("state/model/")
               and k.endswith("VARIABLE_VALUE")]
    assert trained and not all(any(np.array_equal(t, s) for t in trained) for s in shadow)


def test_cli_names_a_missing_shard_folder(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "steel_tpu.cli", "train", "--shards", str(tmp_path / "nope"),
                           "--config", "tiny",
                           "--workdir", str(tmp_path / "w")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "nope" in proc.stderr and "Traceback" not in proc.stderr
    assert not os.path.exists(tmp_path / "w")  # nothing written for a run that could not start


def test_a_multilabel_classifier_is_kept_by_its_mean_per_class_auc():
    labels = np.zeros((6, 4), bool)
    labels[:3, 0] = labels[::2, 2] = labels[1, 3] = True  # class 2 absent from this fold
    probs = np.where(labels, 0.8, 0.2)
    probs[:, 3] = [0.1, 0.9, 0.2, 0.3, 0.95, 0.4]  # class 4: its one positive is above 4 of its 5 negatives
    scores = classifier_scores(probs, labels, threshold=0.5)
    assert np.isnan(scores["auc_c2"]) and scores["auc_c1"] == scores["auc_c3"] == 1.0
    assert scores["auc_c4"] == pytest.approx(0.8) and scores[tasks.Classify.metric] == pytest.approx(2.8 / 3)
    assert scores["auc_any"] == 1.0  # max over classes still separates clean images from defective ones
    scores = classifier_scores(probs.max(axis=1, keepdims=True), labels, threshold=0.5)
    assert scores["auc"] == 1.0 and "auc_c1" not in scores


def test_a_diverging_run_stops_in_one_line_and_is_not_done(tiny_data, tiny_config, tmp_path):
    cfg = config.apply_overrides(tiny_config, ["segment.train.learning_rate=1e12", "segment.train.jit_compile=False"])
    work = str(tmp_path / "work")
    with pytest.raises(train.Diverged) as caught:
        train.run(shards=tiny_data["shards"], workdir=work, cfg=cfg, tasks=("segment",), folds=(0,))
    message = str(caught.value)
    assert isinstance(caught.value, ValueError) and "\n" not in message  # the CLI prints it as one line
    assert message.startswith("segment fold 0 epoch 1: ") and "segment.train.learning_rate=1e+12" in message
    wd = Workdir(work)
    assert wd.done("segment", 0) is None and wd.completed_folds("segment") == []


def test_a_softmax_segmenter_trains_tunes_predicts_exports_and_reports(tiny_data, tiny_config, tmp_path):
    from steel_tpu.reports import report
    from steel_tpu.scoring import export, predict
    from steel_tpu.tuning import tune

    cfg = config.apply_overrides(tiny_config, [
        "segment.model.head=softmax", "segment.train.loss={'cce': 1.0, 'dice': 1.0}",
        "segment.train.class_weights=[0.5, 2, 4, 1, 2]", "segment.train.steps_per_epoch=1",
        # test_models compiles the softmax head with XLA; here the path through every command is what is tested.
        "segment.train.jit_compile=False"])
    work = str(tmp_path / "work")
    (result,) = train.run(shards=tiny_data["shards"], workdir=work, cfg=cfg, tasks=("segment",), folds=(0,))
    assert np.isfinite(result["best"])
    wd = Workdir(work)
    assert wd.config().segment.model.head == "softmax"
    # The model learns 5 channels; everything after the task sees the 4 class maps.
    model = tasks.make("segment", cfg).build_model(pretrained=False)
    assert model.output_shape[-1] == 5
    oof = wd.oof("segment", 0)
    assert oof["probs"].shape == (len(_fold_ids(tiny_data["shards"], 0)), 64, 400, 4)
    tune.tune(workdir=work, plots=False)
    images = os.path.join(tiny_data["data"], "test_images")
    submission, from_kit = str(tmp_path / "submission.csv"), str(tmp_path / "kit.csv")
    summary = predict.predict(workdir=work, images=images, out=submission, progress=False)
    assert summary["images"] == 8
    export.export(workdir=work, out=str(tmp_path / "kit"))
    predict.predict(workdir=str(tmp_path / "kit"), images=images, out=from_kit, progress=False)
    assert open(from_kit).read() == open(submission).read()
    page = open(report.report(workdir=work, out=str(tmp_path / "report"))).read()
    assert "truth \\ predicted" in page and page.count("<td>background</td>") == 1
