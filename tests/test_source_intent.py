"""What the user meant is what runs: thresholds files with exactly tune's keys, numeric options in sane bounds."""

import json

import pytest
from test_tune import _write_workdir

from steel_tpu import cli, postprocess, predict, tune
from steel_tpu.workdir import Workdir, WorkdirError, read_thresholds


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    work = str(tmp_path_factory.mktemp("tuned") / "work")
    _write_workdir(work)
    tune.tune(workdir=work, plots=False)
    return work


def test_tune_output_loads_everywhere(tuned):
    doc = Workdir(tuned).thresholds()
    pp, where, _ = predict.load_thresholds(tuned)
    assert where == Workdir(tuned).thresholds_path()
    assert pp == postprocess.from_thresholds(doc, where=where)
    assert predict.load_thresholds(tuned, thresholds=where)[0] == pp


def test_a_hand_written_file_with_the_three_keys_loads(tmp_path):
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"pixel_threshold": [0.4] * 4, "min_area": [10] * 4, "gate": []}))
    assert predict.load_thresholds(str(tmp_path), thresholds=str(path))[0].min_area == (10,) * 4


@pytest.mark.parametrize("edit, named", [
    (lambda d: d.pop("min_area"), "missing key(s) ['min_area']"),
    (lambda d: d.update(min_areas=[0] * 4), "unknown key(s) ['min_areas']"),
    (lambda d: (d.pop("gate"), d.update(gates=[])), "missing key(s) ['gate'], unknown key(s) ['gates']"),
])
def test_missing_or_unknown_keys_are_named(tuned, tmp_path, edit, named):
    doc = Workdir(tuned).thresholds()
    edit(doc)
    path = tmp_path / "thresholds.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(WorkdirError, match=str(path).replace(".", r"\.") + ": not a valid thresholds file") as error:
        read_thresholds(str(path))
    assert named in str(error.value)
    with pytest.raises(WorkdirError):
        predict.load_thresholds(tuned, thresholds=str(path))


def test_a_thresholds_file_that_is_not_an_object_is_named(tmp_path):
    path = tmp_path / "t.json"
    path.write_text("[0.5, 0.5]")
    with pytest.raises(WorkdirError, match="a JSON object expected"):
        read_thresholds(str(path))


@pytest.mark.parametrize("argv", [
    ["synth", "--out", "x", "--train", "-1"],
    ["synth", "--out", "x", "--seed", "-3"],
    ["shards", "--data", "d", "--out", "o", "--seed", "-1"],
    ["shards", "--data", "d", "--out", "o", "--shard-mb", "0"],
    ["predict", "--workdir", "w", "--images", "i", "--out", "o", "--chunk-size", "0"],
    ["predict", "--workdir", "w", "--images", "i", "--out", "o", "--batch-size", "-8"],
    ["report", "--workdir", "w", "--out", "o", "--examples", "-1"],
])
def test_numeric_options_out_of_bounds_are_refused_before_anything_runs(argv, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(argv)
    assert stop.value.code == 2 and "must be >" in capsys.readouterr().err
