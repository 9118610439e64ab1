"""Each seed system's preset, at tiny scale: trained (its seed's tasks) and tuned by `steel-tpu compare` (conftest's
compared_presets), then predicted and reported, end to end."""

import os

import pytest

from steel_tpu import config, kaggle, predict, report
from steel_tpu.workdir import Workdir

pytestmark = pytest.mark.slow  # one tiny training run per preset

# The tasks each seed trained (its docstring's command): seeds 001 and 002 had no classifier.
SEED_TASKS = {"seed001": ("segment",), "seed002": ("segment",), "seed003": ("classify", "segment"),
              "seed004": ("classify", "segment")}


def test_every_seed_preset_is_tested():
    assert {n for n in config.PRESETS if n.startswith("seed")} == set(SEED_TASKS)
    for name, tasks in SEED_TASKS.items():
        first_line = config.PRESETS[name].__doc__.strip().splitlines()[0]
        assert ("--task segment" in first_line) == (tasks == ("segment",))


def test_seed_presets_train_tune_predict_and_report(compared_presets, tiny_data, tmp_path):
    for name in compared_presets["configs"]:
        work = str(compared_presets["out"] / name)
        wd = Workdir(work)
        assert wd.config().name == name
        assert tuple(t for t in ("classify", "segment") if wd.completed_folds(t) == [0]) == SEED_TASKS[name]
        assert os.path.exists(os.path.join(work, "thresholds.json"))  # tuned by compare
        out = str(tmp_path / f"{name}.csv")
        predict.predict(workdir=work, images=os.path.join(tiny_data["data"], "test_images"), out=out, progress=False)
        assert len(kaggle.read_labels(out).image_ids) == 8
        page = open(report.report(workdir=work, out=str(tmp_path / f"report_{name}"))).read()
        assert name in page
