"""steel-tpu rescore: the tuned post-processing scored at full resolution on the OOF images, beside tune's estimate."""

import contextlib
import hashlib
import io
import json
import os
import shutil

import numpy as np
import pytest
from fakes import oof_workdir

from steel_tpu import cli, metrics
from steel_tpu.data.shard_folder import ShardFolder
from steel_tpu.data.shards import build_shards
from steel_tpu.formats import kaggle
from steel_tpu.formats.workdir import Workdir, WorkdirError
from steel_tpu.scoring import predict, rescore
from steel_tpu.tuning import components, oof_stats, tune
from steel_tpu.tuning.components import COMPONENT_GRID


def _cli(*args):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(list(args))
    return code, out.getvalue(), err.getvalue()


def _widest_gap_middle(values):
    """The middle of the widest gap between sorted distinct values, and half its width."""
    v = np.unique(values)
    if len(v) < 2:
        return 0.0, 0.0
    i = int(np.argmax(np.diff(v)))
    return float((v[i] + v[i + 1]) / 2), float((v[i + 1] - v[i]) / 2)


def _nontrivial_thresholds(work):
    """Post-processing that cuts the briefly trained model's maps into partial masks, drops small components and
    masks and gates on the classifier: tune's choice for such a model submits nothing, which any scorer gets right.
    Each value sits between the OOF values, so float noise between two runs cannot flip a decision. Each pixel
    threshold is below its class's top OOF level, and the class with the most pixels above it has no other rule,
    so some mask is always drawn (a random-init model's top 10% of levels may all be its top level)."""
    wd = Workdir(work)
    q = np.concatenate([wd.oof("segment", f)["probs"] for f in (0, 1)])
    probs = np.concatenate([wd.oof("classify", f)["probs"] for f in (0, 1)])
    gates = [_widest_gap_middle(probs[:, c]) for c in range(probs.shape[1])]
    assert max(margin for _, margin in gates) > 1e-3
    level = [max(min(int(np.percentile(q[..., c], 90)), int(q[..., c].max()) - 1), 0) for c in range(4)]
    drawn = int(np.argmax([(q[..., c] > level[c]).sum() for c in range(4)]))
    assert (q[..., drawn] > level[drawn]).any()
    gate = [g if margin > 1e-3 else 0.0 for g, margin in gates]
    gate = [0.0 if c == drawn or len(gate) == 1 else g for c, g in enumerate(gate)]
    return {"pixel_threshold": [(lv + 0.5) / 255 for lv in level],
            "min_area": [0 if c == drawn else a for c, a in enumerate((0, 500, 0, 2000))],
            "min_component": [0 if c == drawn else 150 for c in range(4)], "gate": gate}


@pytest.fixture(scope="module")
def rescored(trained_workdir, tiny_data, tmp_path_factory):
    """A copy of the shared workdir (which stays untuned), tuned, then rescored through the CLI with other
    thresholds (see _nontrivial_thresholds) and tolerance 0, so that every class that moves at all is warned about."""
    root = tmp_path_factory.mktemp("rescore")
    work = str(root / "work")
    shutil.copytree(trained_workdir, work)
    tune.tune(workdir=work, plots=False)
    thresholds = str(root / "thresholds.json")
    with open(thresholds, "w") as f:
        json.dump(_nontrivial_thresholds(work), f)
    code, out, err = _cli("rescore", "--workdir", work, "--shards", tiny_data["shards"], "--thresholds", thresholds,
                          "--tolerance", "0")
    assert code == 0, err
    with open(os.path.join(work, "rescore.json")) as f:
        doc = json.load(f)
    return {"work": work, "doc": doc, "out": out, "thresholds": thresholds}


@pytest.mark.slow
def test_full_resolution_dice_is_what_predict_scores_on_the_validation_jpegs(rescored, tiny_data, tmp_path):
    work, doc, thresholds = rescored["work"], rescored["doc"], rescored["thresholds"]
    wd = Workdir(work)
    truth = kaggle.read_labels(os.path.join(tiny_data["data"], "train.csv"))
    assert doc["folds"] == [0, 1]
    total, n, submitted = np.zeros(4), 0, 0
    for fold in doc["folds"]:
        # The fold's validation images as JPEG files, scored by predict with that fold's models: predict's masks
        # are the full-resolution post-processed masks, scored here by the submission's RLEs.
        ids = wd.oof("segment", fold)["image_ids"].tolist()
        images = tmp_path / f"fold{fold}"
        images.mkdir()
        for image_id in ids:
            shutil.copy(os.path.join(tiny_data["data"], "train_images", image_id), images / image_id)
        out = str(tmp_path / f"fold{fold}.csv")
        predict.predict(workdir=work, images=str(images), out=out, thresholds=thresholds, folds=[fold],
                        progress=False)
        pred = kaggle.read_labels(out)
        submitted += sum(bool(r) for i in ids for r in pred.rles.get(i, ()))
        scores = metrics.score_labels(pred, truth, image_ids=ids)
        np.testing.assert_allclose(doc["per_fold"][str(fold)]["dice_full_resolution"], scores.per_class, atol=1e-6)
        total, n = total + np.asarray(scores.per_class) * len(ids), n + len(ids)
    assert submitted > 0  # masks were submitted: the comparison is not empty against empty
    assert doc["n_images"] == n
    np.testing.assert_allclose(doc["dice_full_resolution"]["per_class"], total / n, atol=1e-6)
    np.testing.assert_allclose(doc["difference"], np.subtract(doc["dice_full_resolution"]["per_class"],
                                                              doc["dice_oof_estimate"]["per_class"]), atol=1e-12)
    with open(thresholds) as f:
        assert doc["postprocess"] == {**{"soft_gate": [], "mask_threshold": []}, **json.load(f)}


@pytest.mark.slow
def test_without_thresholds_nothing_is_scored(trained_workdir, tiny_data):
    with pytest.raises(FileNotFoundError, match="run `steel-tpu tune --workdir"):
        rescore.rescore(workdir=trained_workdir, shards=tiny_data["shards"])
    assert not os.path.exists(os.path.join(trained_workdir, "rescore.json"))


@pytest.mark.slow
def test_the_file_names_the_thresholds_and_the_output_one_line_per_class(rescored, tiny_data):
    doc, out = rescored["doc"], rescored["out"]
    with open(rescored["thresholds"], "rb") as f:
        assert doc["thresholds_sha256"] == hashlib.sha256(f.read()).hexdigest()
    assert doc["thresholds"] == rescored["thresholds"]
    assert doc["shards_fingerprint"] == ShardFolder.open(tiny_data["shards"]).fingerprint
    lines = out.splitlines()
    for c in range(1, 5):
        assert sum(line.startswith(f"rescore: class {c}: full-resolution dice ") for line in lines) == 1
    moved = [c for c, d in enumerate(doc["difference"], start=1) if abs(d) > 0]
    warned = [line for line in lines if line.startswith("rescore: WARNING class ")]
    assert [int(line.split()[3].rstrip(":")) for line in warned] == moved
    assert len(doc["warnings"]) == len(moved) and doc["tolerance"] == 0


@pytest.mark.slow
def test_another_shard_folder_is_refused_in_one_line(rescored, tiny_data, tmp_path):
    work = rescored["work"]
    other = str(tmp_path / "other")
    # The same images with another fold assignment: exactly what would silently score training images as OOF.
    build_shards(data=tiny_data["data"], out=other, folds=2, seed=1, shard_mb=1, progress=False)
    before = open(os.path.join(work, "rescore.json")).read()
    code, _, err = _cli("rescore", "--workdir", work, "--shards", other)
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert "trained on other shards" in err and other in err
    assert open(os.path.join(work, "rescore.json")).read() == before  # refused before anything was touched


def test_a_workdir_without_a_shards_record_is_refused(tiny_data, tmp_path):
    with pytest.raises(WorkdirError, match="no record of the shards"):
        Workdir(str(tmp_path)).check_shards(ShardFolder.open(tiny_data["shards"]))


def test_the_estimate_is_tunes_own_dice_after(tmp_path):
    work = str(tmp_path / "work")
    oof_workdir(work)
    for grid in ((0,), COMPONENT_GRID):
        result = tune.tune(workdir=work, plots=False, component_grid=grid)
        pp = Workdir(work).thresholds().postprocess
        estimate = components.estimate((work,), oof_stats.collect((work,)), pp)
        np.testing.assert_allclose(estimate.mean(axis=0), result["dice_after"]["per_class"], atol=1e-12)
    assert pp.filters_components  # the component stage chose something: its path was the one checked last


def test_cli_default_tolerance_is_the_modules():
    assert cli.build_parser().parse_args(["rescore", "--workdir", "w", "--shards", "s"]).tolerance == rescore.TOLERANCE
