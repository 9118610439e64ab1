import json

import pytest

from steel_tpu import config


@pytest.mark.parametrize("name", sorted(config.PRESETS))
def test_presets_round_trip_through_json(name):
    cfg = config.preset(name)
    again = config.from_dict(json.loads(config.to_json(cfg)))
    assert again == cfg


@pytest.mark.parametrize("name", sorted(config.PRESETS))
def test_preset_resolutions_are_multiples_of_32(name):
    cfg = config.preset(name)
    for task in (cfg.classify, cfg.segment):
        assert task.data.image_height % 32 == 0 and task.data.image_width % 32 == 0
        assert task.data.batch_size % 8 == 0  # splits evenly over an 8-core TPU


def test_preset_docstrings_are_the_commands_that_run_them():
    for name, fn in config.PRESETS.items():
        assert fn.__doc__.strip().startswith("steel-tpu train") and f"--config {name}" in fn.__doc__


def test_overrides_parse_types_and_nested_keys():
    cfg = config.apply_overrides(
        config.preset("tiny"),
        ["segment.train.epochs=7", "segment.model.encoder=efficientnetb3", "folds=[0, 2]",
         "segment.data.oversample={2: 5}", "classify.model.weights=None"],
    )
    assert cfg.segment.train.epochs == 7
    assert cfg.segment.model.encoder == "efficientnetb3"
    assert cfg.folds == (0, 2)
    assert cfg.segment.data.oversample == {2: 5}
    assert cfg.classify.model.weights is None


@pytest.mark.parametrize("bad", ["segment.train.nope=1", "nosection.x=1", "epochs"])
def test_unknown_override_keys_are_errors(bad):
    with pytest.raises(ValueError, match="--set"):
        config.apply_overrides(config.preset("tiny"), [bad])


def test_unknown_preset_names_the_choices():
    with pytest.raises(ValueError, match="tiny"):
        config.preset("huge")


def test_overrides_revalidate_the_section():
    with pytest.raises(ValueError, match="crop_width"):
        config.apply_overrides(config.preset("tiny"), ["segment.augment.crop_width=100"])
