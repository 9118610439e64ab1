"""What the user meant is what runs: thresholds files with exactly tune's keys, numeric options in sane bounds."""

import json

import pytest
from fakes import oof_workdir

from steel_tpu import cli
from steel_tpu.formats import thresholds as thresholds_format
from steel_tpu.formats.thresholds import ThresholdsError
from steel_tpu.formats.workdir import Workdir
from steel_tpu.scoring.source import ModelSource
from steel_tpu.tuning import tune


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    work = str(tmp_path_factory.mktemp("tuned") / "work")
    oof_workdir(work)
    tune.tune(workdir=work, plots=False)
    return work


def test_tune_output_loads_everywhere(tuned):
    doc = Workdir(tuned).thresholds().to_doc()
    found = ModelSource.resolve(tuned).thresholds()
    assert found.path == Workdir(tuned).thresholds_path()
    assert found.postprocess == thresholds_format.from_doc(doc, where=found.path).postprocess
    assert ModelSource.resolve(tuned).thresholds(found.path).postprocess == found.postprocess


def test_a_hand_written_file_with_the_three_keys_loads(tmp_path):
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"pixel_threshold": [0.4] * 4, "min_area": [10] * 4, "gate": []}))
    assert ModelSource.resolve(str(tmp_path)).thresholds(str(path)).postprocess.min_area == (10,) * 4


@pytest.mark.parametrize("edit, named", [
    (lambda d: d.pop("min_area"), "missing key(s) ['min_area']"),
    (lambda d: d.update(min_areas=[0] * 4), "unknown key(s) ['min_areas']"),
    (lambda d: (d.pop("gate"), d.update(gates=[])), "missing key(s) ['gate'], unknown key(s) ['gates']"),
])
def test_missing_or_unknown_keys_are_named(tuned, tmp_path, edit, named):
    doc = Workdir(tuned).thresholds().to_doc()
    edit(doc)
    path = tmp_path / "thresholds.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ThresholdsError, match=str(path).replace(".", r"\.") + ": not a valid thresholds file") as error:
        thresholds_format.read(str(path))
    assert named in str(error.value)
    with pytest.raises(ThresholdsError):
        ModelSource.resolve(tuned).thresholds(str(path))


def test_a_thresholds_file_that_is_not_an_object_is_named(tmp_path):
    path = tmp_path / "t.json"
    path.write_text("[0.5, 0.5]")
    with pytest.raises(ThresholdsError, match="a JSON object expected"):
        thresholds_format.read(str(path))


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
