"""Each seed system's preset, at tiny scale: train (the seed's tasks), tune, predict and report, end to end."""

import os

import pytest

from steel_tpu import config, kaggle, predict, report, train, tune
from steel_tpu.workdir import Workdir

pytestmark = pytest.mark.slow  # one tiny training run per preset

SEED_PRESETS = ("seed001", "seed002", "seed003", "seed004")
# The tasks each seed trained (its docstring's command): seeds 001 and 002 had no classifier.
SEED_TASKS = {"seed001": ("segment",), "seed002": ("segment",), "seed003": ("classify", "segment"),
              "seed004": ("classify", "segment")}


def test_every_seed_preset_is_tested():
    assert {n for n in config.PRESETS if n.startswith("seed")} == set(SEED_PRESETS) == set(SEED_TASKS)
    for name in SEED_PRESETS:
        first_line = config.PRESETS[name].__doc__.strip().splitlines()[0]
        assert ("--task segment" in first_line) == (SEED_TASKS[name] == ("segment",))


@pytest.mark.parametrize("name", SEED_PRESETS)
def test_a_seed_preset_trains_tunes_predicts_and_reports(name, tiny_data, tmp_path):
    cfg = config.apply_overrides(config.preset(name), list(config.TINY_SCALE))
    work = str(tmp_path / "work")
    results = train.run(shards=tiny_data["shards"], workdir=work, cfg=cfg, tasks=SEED_TASKS[name], folds=(0,))
    assert [r["task"] for r in results] == list(SEED_TASKS[name])
    wd = Workdir(work)
    assert wd.config().name == name
    chosen = tune.tune(workdir=work, plots=False)
    assert chosen is not None and os.path.exists(os.path.join(work, "thresholds.json"))
    out = str(tmp_path / "submission.csv")
    predict.predict(workdir=work, images=os.path.join(tiny_data["data"], "test_images"), out=out, progress=False)
    labels = kaggle.read_labels(out)
    assert len(labels.image_ids) == 8
    page = open(report.report(workdir=work, out=str(tmp_path / "report"))).read()
    assert name in page
