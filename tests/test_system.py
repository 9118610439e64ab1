"""A system folder (seed 000's member workdirs): system.json's claim and checks, and a system standing for its
members wherever workdirs are read."""

import json
import os

import pytest

from steel_tpu import cli, config
from steel_tpu.formats import system
from steel_tpu.scoring import members
from steel_tpu.scoring.source import ModelSource


def _claim(folder, names=("binary", "class1")):
    system.claim(str(folder), name="seed000", members=dict.fromkeys(names))


def test_a_system_folder_stands_for_its_members(tmp_path):
    w = tmp_path / "w"
    _claim(w)
    assert json.loads((w / "system.json").read_text()) == {"name": "seed000", "members": ["binary", "class1"]}
    source = ModelSource.resolve(str(w))
    assert source.paths == (str(w / "binary"), str(w / "class1"))
    assert (source.kind, source.home, source.own_folder()) == ("system", str(w), str(w))
    member = ModelSource.resolve([str(w / "binary")])
    assert (member.kind, member.home, member.own_folder()) == ("workdir", None, str(w / "binary"))
    _claim(w)  # the same system again: a resume
    with pytest.raises(system.SystemFileError, match="not seed000 of binary, class2"):
        _claim(w, ("binary", "class2"))
    with pytest.raises(members.MembersError, match="give it alone"):
        ModelSource.resolve([str(w), str(tmp_path / "other")])


@pytest.mark.parametrize("text, message", [
    ("{", "bad JSON"),
    ('{"name": "seed000"}', "expected"),
    ('{"name": "seed000", "members": ["../escape"]}', "distinct names"),
    ('{"name": "seed000", "members": ["a", "a"]}', "distinct names"),
    ('{"name": "seed000", "members": []}', "distinct names"),
])
def test_a_bad_system_file_is_named(tmp_path, text, message):
    (tmp_path / "system.json").write_text(text)
    with pytest.raises(system.SystemFileError, match=message) as refused:
        ModelSource.resolve(str(tmp_path))
    assert str(tmp_path / "system.json") in str(refused.value)


def test_a_workdir_is_never_made_a_system(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(system.SystemFileError, match="a training workdir already"):
        _claim(tmp_path)
    assert not (tmp_path / "system.json").exists()


def test_a_member_with_nothing_to_train_on_is_refused_before_anything_is_written(tiny_data, tmp_path, capsys):
    # tiny_data's fold 1 holds no class-1 image: the class-1 segmenter validated on fold 0 would train on none.
    work = tmp_path / "w"
    sets = [a for item in config.TINY_SCALE for a in ("--set", item)]
    assert cli.main(["train", "--shards", tiny_data["shards"], "--workdir", str(work), "--config", "seed000",
                     "--folds", "0", *sets]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"steel-tpu train: error: [seed000] member class1: {tiny_data['shards']}: folds [1] hold no "
                   "image of class(es) [1] and clean_keep=0 keeps no other: nothing to train on"]
    assert not os.path.exists(work)


def test_a_task_the_config_does_not_train_is_refused(tiny_data, tmp_path, capsys):
    work = tmp_path / "w"
    assert cli.main(["train", "--shards", tiny_data["shards"], "--workdir", str(work), "--config", "seed001",
                     "--task", "classify", "--set", "device=cpu"]) == 2
    assert "config seed001 trains segment only (its `tasks`), not classify" in capsys.readouterr().err
    assert not os.path.exists(work)
