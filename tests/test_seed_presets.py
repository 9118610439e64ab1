"""Each seed system's preset, at tiny scale: trained (its seed's models) and tuned by `steel-tpu compare` (conftest's
compared_presets), then predicted and reported, end to end; seed 000 as a system of six member workdirs."""

import json
import os

import pytest

from steel_tpu import cli, config
from steel_tpu.formats import kaggle, kit, system
from steel_tpu.formats.workdir import Workdir
from steel_tpu.reports import report
from steel_tpu.scoring import predict

pytestmark = pytest.mark.slow  # one tiny training run per preset

# The models each seed trained: seeds 001 and 002 had no classifier; seed 000 had six, one member workdir each.
SEED_TASKS = {"seed001": ("segment",), "seed002": ("segment",), "seed003": ("classify", "segment"),
              "seed004": ("classify", "segment")}
SEED000 = {"binary": ("classify",), "multilabel": ("classify",),
           **{f"class{c}": ("segment",) for c in (1, 2, 3, 4)}}


def test_every_seed_preset_is_tested():
    assert {n for n in [*config.PRESETS, *config.SYSTEMS] if n.startswith("seed")} == {*SEED_TASKS, "seed000"}
    for name, tasks in SEED_TASKS.items():
        assert config.preset(name).tasks == tasks
        assert "--task" not in config.PRESETS[name].__doc__.strip().splitlines()[0]
    members = config.members_of("seed000")
    assert {m: cfg.tasks for m, cfg in members.items()} == SEED000
    # Each model is fed only the data it should see: the multilabel classifier and each segmenter defect images
    # (of its class) only; each segmenter predicts its one class.
    assert members["binary"].classify.data.clean_keep == 1.0 and members["binary"].classify.model.heads == "binary"
    assert members["multilabel"].classify.data.clean_keep == 0.0
    for c in (1, 2, 3, 4):
        assert members[f"class{c}"].segment.model.classes == (c,)
        assert members[f"class{c}"].segment.data.clean_keep == 0.0


def _models(work):
    """{workdir: its tasks} of a preset's workdir, or of each member of a system."""
    paths = system.member_paths(work) if system.is_system(work) else (work,)
    return {path: Workdir(path).config().tasks for path in paths}


def test_seed_presets_train_tune_predict_and_report(compared_presets, tiny_data, tmp_path):
    fold = compared_presets["fold"]
    for name in compared_presets["configs"]:
        work = str(compared_presets["out"] / name)
        for path, tasks in _models(work).items():
            wd = Workdir(path)
            assert wd.config().name == name
            assert tuple(t for t in ("classify", "segment") if wd.completed_folds(t) == [fold]) == tasks
        assert tuple(sorted({t for tasks in _models(work).values() for t in tasks})) == (
            ("classify", "segment") if name == "seed000" else SEED_TASKS[name])
        assert os.path.exists(os.path.join(work, "thresholds.json"))  # tuned by compare
        out = str(tmp_path / f"{name}.csv")
        predict.predict(workdir=work, images=os.path.join(tiny_data["data"], "test_images"), out=out, progress=False)
        assert len(kaggle.read_labels(out).image_ids) == 8
        page = open(report.report(workdir=work, out=str(tmp_path / f"report_{name}"))).read()
        assert name in page
        if name == "seed000":
            for member in SEED000:
                assert f"Member {member}: training curves" in page
                assert os.path.exists(tmp_path / f"report_{name}" / f"curves_{member}_{SEED000[member][0]}.png")


def test_a_system_or_an_ensemble_is_one_model_source_everywhere(compared_presets, tiny_data, tmp_path, capsys):
    """Seed 000's system, or seed 003's and 004's workdirs as an ensemble: exported as one kit that scores like the
    source, rescored as one, pseudo-labelled with, and scored on Beam like on one machine."""
    out, names = compared_presets["out"], compared_presets["configs"]
    if "seed000" in names:
        given, thresholds = [str(out / "seed000")], str(out / "seed000" / "thresholds.json")
    else:
        given, ens = [str(out / n) for n in names], str(tmp_path / "ens")
        assert cli.main(["tune", *[a for w in given for a in ("--workdir", w)], "--out", ens]) == 0
        thresholds = os.path.join(ens, "thresholds.json")
    workdirs = [a for w in given for a in ("--workdir", w)]
    images = os.path.join(tiny_data["data"], "test_images")
    kit_dir, reference = str(tmp_path / "kit"), str(tmp_path / "source.csv")
    assert cli.main(["predict", *workdirs, "--thresholds", thresholds, "--images", images, "--out", reference]) == 0
    assert cli.main(["export", *workdirs, "--thresholds", thresholds, "--out", kit_dir]) == 0
    info = json.loads(open(os.path.join(kit_dir, kit.KIT_JSON)).read())
    members = [m["name"] for m in info["members"]]
    # A member whose models the thresholds do not use (a classifier, where no gate was tuned) is left out.
    expected = [m for m in SEED000 if m.startswith("class") or m in members] if "seed000" in names else ["m0", "m1"]
    assert info["format"] == kit.WRITTEN["members"] and members == expected
    assert all(os.path.exists(os.path.join(kit_dir, m, kit.CONFIG)) for m in members)
    from_kit = str(tmp_path / "kit.csv")
    assert cli.main(["predict", "--workdir", kit_dir, "--images", images, "--out", from_kit]) == 0
    assert open(from_kit, "rb").read() == open(reference, "rb").read()

    assert cli.main(["rescore", *workdirs, "--thresholds", thresholds, "--shards", tiny_data["shards"]]) == 0
    rescored = json.loads(open(os.path.join(os.path.dirname(thresholds), "rescore.json")).read())
    assert rescored["folds"] == [compared_presets["fold"]] and rescored["n_images"] > 0

    # Pseudo-labels from the same source: every image scored by it and judged (a loose rule, so some are kept).
    pseudo_out = str(tmp_path / "pseudo")
    code = cli.main(["pseudo", *workdirs, "--thresholds", thresholds, "--images", images, "--out", pseudo_out,
                     "--min-confidence", "0.5000001", "--max-absent", "0.5", "--min-area", "0"])
    if code == 0:
        provenance = json.loads(open(os.path.join(pseudo_out, "manifest.json")).read())["pseudo"]
        assert provenance["scored"] == 8 and provenance["workdir"] == ", ".join(given)
    else:  # scored, and none confident: refused in one line, nothing written
        assert "none of 8 images passed the confidence rule" in capsys.readouterr().err
        assert not os.path.exists(pseudo_out)

    on_beam = str(tmp_path / "beam.csv")
    assert cli.main(["predict", *workdirs, "--thresholds", thresholds, "--images", images, "--out", on_beam,
                     "--runner", "DirectRunner"]) == 0
    assert open(on_beam, "rb").read() == open(reference, "rb").read()
