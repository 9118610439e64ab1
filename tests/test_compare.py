"""`steel-tpu compare`: refusals before any work, the same-images check, and two presets trained, tuned, compared."""

import json
import os
import shutil

import numpy as np
import pytest
from conftest import compare_args
from fakes import oof_workdir

from steel_tpu import cli, config
from steel_tpu.formats import system
from steel_tpu.formats.workdir import Workdir
from steel_tpu.reports import compare
from steel_tpu.tuning import tune


def _run(*args):
    return cli.main(["compare", *args])


def _args(out, configs="tiny,seed001", shards="no_shards"):
    return compare_args(out, configs=configs, task="segment", shards=shards)


@pytest.mark.parametrize("configs, message", [
    ("seed001", "give two or more comma-separated presets"),
    ("seed001,seed001", "seed001 named twice"),
    ("seed001,seed009", "unknown preset 'seed009'"),
])
def test_bad_configs_are_refused_in_one_line(configs, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        _run(*_args(tmp_path / "out", configs=configs))
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert f"argument --configs: {configs!r}: {message}" in err
    assert not os.path.exists(tmp_path / "out")


def test_python_callers_get_the_same_refusal(tmp_path):
    with pytest.raises(ValueError, match="tiny named twice"):
        compare.compare(shards="x", configs=("tiny", "seed001", "tiny"), folds=(0,), out=str(tmp_path / "out"))
    with pytest.raises(ValueError, match="segmentation Dice"):
        compare.compare(shards="x", configs=("tiny", "seed001"), folds=(0,), out=str(tmp_path / "out"),
                        tasks=("classify",))
    assert not os.path.exists(tmp_path / "out")


def test_a_bad_set_is_refused_before_anything_is_written(tmp_path, capsys):
    assert _run(*_args(tmp_path / "out"), "--set", "segment.train.epochs=0") == 2
    assert "segment.train.epochs" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "out")


def test_foreign_files_and_folders_are_refused_untouched(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert _run(*_args(out)) == 2
    assert "holds 1 file(s) compare did not write: notes.txt" in capsys.readouterr().err
    os.remove(out / "notes.txt")
    (out / "seed001").mkdir()
    (out / "seed001" / "photo.jpg").write_text("mine")
    assert _run(*_args(out)) == 2
    assert "seed001: holds files but is not a training workdir" in capsys.readouterr().err
    shutil.rmtree(out / "seed001")
    Workdir(str(out / "tiny")).save_config(config.preset("seed001"))  # a workdir of another preset's config
    assert _run(*_args(out)) == 2
    assert "holds a different config" in capsys.readouterr().err
    assert sorted(os.listdir(out)) == ["tiny"] and os.listdir(out / "tiny") == ["config.json"]


def test_presets_scored_on_other_images_are_refused(tmp_path):
    a, b, c = (str(tmp_path / n) for n in "abc")
    oof_workdir(a, n=6, folds=(0,))
    oof_workdir(b, n=6, folds=(0, 1), seed=1)
    oof_workdir(c, n=6, folds=(0,), seed=2)
    assert compare.check_same_images({"x": a, "z": c}) == compare.oof_image_ids(a) == [f"f0_{i:03d}.jpg"
                                                                                        for i in range(6)]
    with pytest.raises(ValueError, match=r"^y \(.*\): its OOF image f1_000.jpg is not among x's \(12 vs 6 images\)"):
        compare.check_same_images({"x": a, "y": b})
    with pytest.raises(ValueError, match=r"^x \(.*\): y's OOF image f1_000.jpg is not among its \(6 vs 12"):
        compare.check_same_images({"y": b, "x": a})


def test_rows_are_each_workdirs_diagnosis_with_a_verdict(tmp_path):
    works = {"x": str(tmp_path / "x"), "y": str(tmp_path / "y")}
    oof_workdir(works["x"], n=20, seed=0)
    shutil.copytree(works["x"], works["y"])
    rng = np.random.default_rng(7)
    for fold in (0, 1):  # the same images and truth, noisier maps
        oof = Workdir(works["y"]).oof("segment", fold)
        noise = rng.integers(-60, 60, oof["probs"].shape)
        oof["probs"] = np.clip(oof["probs"].astype(int) + noise, 0, 255).astype(np.uint8)
        Workdir(works["y"]).save_oof("segment", fold, **oof)
    results = {}
    for name, work in works.items():
        tune.tune(workdir=work, plots=False)
        results[name] = Workdir(work).thresholds()
    rows = compare.comparison(results)
    assert [r["class"] for r in rows] == [1, 2, 3, 4, "mean"]
    for name, work in works.items():
        saved = Workdir(work).thresholds().to_doc()
        for c, row in enumerate(rows[:4]):
            assert row["presets"][name]["dice_after"] == saved["dice_after"]["per_class"][c]
            assert row["presets"][name]["defect_hit_rate"] == saved["defect_hit_rate"][c]
            assert row["dice_all_empty"] == saved["dice_all_empty"]["per_class"][c]
            assert row["presets"][name]["postprocess"]["pixel_threshold"] == saved["pixel_threshold"][c]
            assert row["presets"][name]["postprocess"]["min_area"] == saved["min_area"][c]
        assert rows[4]["presets"][name]["dice_after"] == saved["dice_after"]["mean"]
    for row in rows:
        x, y = row["presets"]["x"]["dice_after"], row["presets"]["y"]["dice_after"]
        if abs(x - y) <= 1e-9:
            assert row["verdict"].startswith("tie: ")
        else:
            high, low = ("x", "y") if x > y else ("y", "x")
            assert row["verdict"].startswith(f"{high} higher by {abs(x - y):.4f}")


def test_other_truth_under_the_same_ids_is_refused(tmp_path):
    works = {"x": str(tmp_path / "x"), "y": str(tmp_path / "y")}
    oof_workdir(works["x"], n=20, seed=0)
    oof_workdir(works["y"], n=20, seed=5)  # the same image ids, other masks
    results = {}
    for name, work in works.items():
        tune.tune(workdir=work, plots=False)
        results[name] = Workdir(work).thresholds()
    with pytest.raises(ValueError, match="all-empty Dice differ .* were they trained on different shard folders"):
        compare.comparison(results)


def test_verdict_says_when_no_preset_beats_an_empty_submission():
    assert compare.verdict({"a": 0.5, "b": 0.75}, empty=0.9) == ("b higher by 0.2500 (0.7500 vs 0.5000 for a); "
                                                                  "none beats submitting it empty (0.9000)")
    assert compare.verdict({"a": 0.5, "b": 0.5, "c": 0.25}, empty=0.1) == "tie: a = b at 0.5000"


@pytest.mark.slow
def test_presets_trained_tuned_and_compared(compared_presets, capsys):
    out, names, task = compared_presets["out"], compared_presets["configs"], compared_presets["task"]
    fold = compared_presets["fold"]
    assert sorted(os.listdir(out)) == sorted(["compare.html", "compare.json", *names])
    doc = json.loads((out / "compare.json").read_text())
    tasks = ["segment"] if task == "segment" else ["classify", "segment"]
    assert doc["configs"] == names and doc["folds"] == [fold] and doc["tasks"] == tasks
    assert doc["overrides"] == list(config.TINY_SCALE)
    ids = compare.oof_image_ids(str(out / names[0]))
    assert doc["n_images"] == len(ids) > 0
    assert [r["class"] for r in doc["rows"]] == [1, 2, 3, 4, "mean"]
    page = (out / "compare.html").read_text()
    trained = 0
    for name in names:
        assert compare.oof_image_ids(str(out / name)) == ids
        # A preset's workdir, or each member workdir of a system (seed 000), holds the models its config names.
        paths = system.member_paths(str(out / name)) if name in config.SYSTEMS else (str(out / name),)
        for path in paths:
            wd = Workdir(path)
            assert wd.config().name == name
            for t in ("classify", "segment"):
                assert wd.completed_folds(t) == ([fold] if t in wd.config().tasks and t in tasks else [])
                trained += t in wd.config().tasks and t in tasks
        saved = Workdir(str(out / name)).thresholds().to_doc()  # a system's own, beside its members
        assert saved["n_images"] == len(ids) and saved["folds"] == doc["oof_folds"] == [fold]
        assert ("members" in saved) == (name in config.SYSTEMS)
        # compare.json holds the workdir's own tune numbers, as the report's per-class table reads them.
        expected = Workdir(str(out / name)).thresholds().diagnosis()
        for row, want in zip(doc["rows"], expected):
            got = row["presets"][name]
            assert got["dice_after"] == want["dice_after"] and got["dice_before"] == want["dice_before"]
            assert got["defect_hit_rate"] == want["defect_hit_rate"] and got["postprocess"] == want["postprocess"]
            assert row["dice_all_empty"] == want["dice_all_empty"]
        for c in range(4):
            assert doc["rows"][c]["presets"][name]["dice_after"] == saved["dice_after"]["per_class"][c]
            assert doc["rows"][c]["dice_all_empty"] == saved["dice_all_empty"]["per_class"][c]
        assert doc["rows"][4]["presets"][name]["dice_after"] == saved["dice_after"]["mean"]
    for row in doc["rows"]:
        assert row["verdict"] in page
    assert page.count("<tr>") == 1 + 5  # header + 4 classes + mean

    # Rerunning continues: every workdir is complete, so nothing trains again and the comparison is rewritten.
    capsys.readouterr()
    assert _run(*compared_presets["args"]) == 0
    assert capsys.readouterr().out.count("already complete: skipping") == trained
    assert json.loads((out / "compare.json").read_text())["rows"] == doc["rows"]
