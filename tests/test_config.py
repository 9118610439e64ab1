import json
import subprocess
import sys
import time

import pytest

from steel_tpu import config


ALL = sorted([*config.PRESETS, *config.SYSTEMS])  # a system's members are each checked as a preset is


@pytest.mark.parametrize("name", ALL)
def test_presets_round_trip_through_json(name):
    for cfg in config.members_of(name).values():
        again = config.from_json_doc(json.loads(config.to_json(cfg)))
        assert again == cfg


@pytest.mark.parametrize("name", ALL)
def test_preset_resolutions_are_multiples_of_32(name):
    for cfg in config.members_of(name).values():
        for task in (cfg.classify, cfg.segment):
            assert task.data.image_height % 32 == 0 and task.data.image_width % 32 == 0
            assert task.data.batch_per_replica  # per replica: the global batch follows the slice (resolve.py)


def test_preset_docstrings_are_the_commands_that_run_them():
    for name, fn in {**config.PRESETS, **config.SYSTEMS}.items():
        assert fn.__doc__.strip().startswith("steel-tpu train") and f"--config {name}" in fn.__doc__


def test_a_system_is_not_one_config_and_its_overrides_reach_every_member():
    with pytest.raises(ValueError, match="is a system of member workdirs"):
        config.preset("seed000")
    members = config.members_of("seed000", ["segment.train.epochs=3"])
    assert {cfg.segment.train.epochs for cfg in members.values()} == {3}
    assert list(config.members_of("tiny")) == [None]


def test_a_config_json_of_an_unreleased_format_is_refused_in_one_line():
    old = config.to_dict(config.preset("tiny"))  # no "format": written before classifier and segmenter configs
    with pytest.raises(ValueError, match=r"config format None, this steel_tpu reads format 2 .*new --workdir$"):
        config.from_json_doc(old)
    assert config.from_json_doc(json.loads(config.to_json(config.preset("tiny")))) == config.preset("tiny")


@pytest.mark.parametrize("overrides, message", [
    (["segment.model.classes=[3, 2]"], "distinct class ids"),
    (["segment.model.classes=[]"], "distinct class ids"),
    (["segment.model.classes=[5]"], "distinct class ids"),
    (["classify.model.classes=[2]"], "no config key 'classes' in ClassifierModel"),
    (["classify.model.arch=unet"], "no config key 'arch' in ClassifierModel"),
    (["segment.model.heads=binary"], "no config key 'heads' in SegmenterModel"),
    (["tasks=[]"], "classify, segment or both"),
    (['tasks=["segment", "segment"]'], "classify, segment or both"),
    (['tasks=["train"]'], "classify, segment or both"),
])
def test_bad_tasks_and_classes_are_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        config.apply_overrides(config.preset("tiny"), overrides)


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


@pytest.mark.parametrize("bad, key", [
    ("classify.train.epochs=five", "classify.train.epochs"), ("segment.data.batch_size=-3", "batch_size"),
    ("segment.model.encoder=efficientnetb9", "encoder"), ("gpu_float16=yes", "gpu_float16"),
    ("segment.train.epochs=0", "epochs"), ("classify.train.steps_per_epoch=0", "steps_per_epoch"),
    ("segment.train.learning_rate=0", "learning_rate"), ("segment.data.image_width=1000", "image_width"),
    ("segment.augment.crop_width=100", "crop_width"), ("segment.augment.crop_height=512", "crop_height"),
    ("segment.model.arch=fpn", "arch"), ("classify.model.heads=three", "heads"),
    ("classify.train.loss={'bce': 1, 'tversky': 1}", "loss"), ("segment.train.ema_decay=1", "ema_decay"),
    ("segment.train.pos_weight=often", "pos_weight"), ("segment.train.pos_weight=[1, 2]", "pos_weight"),
    ("segment.data.clean_keep=1.5", "clean_keep"),
    ("segment.data.oversample={1: 0}", "oversample"), ("segment.train.eval_threshold=2", "eval_threshold"),
    ("folds=[0, 0]", "folds"), ("folds=[-1]", "folds"), ("classify.model.encoder=resnet34", "encoder"),
    ("segment.model.weights=noisy", "weights"), ("oof_scale=3", "oof_scale"),
    ("classify.model.weights=imagenet", "weights"),  # tiny's plaincnn has none
    ("segment.model.head=argmax", "head"), ("segment.train.class_weights=[1, 2, 3, 4]", "class_weights"),
    ("segment.train.class_weights=[1, 2, 3, 4, -5]", "class_weights"),
])
def test_bad_values_fail_naming_the_key(bad, key):
    with pytest.raises(ValueError, match=f"--set .*{key}") as error:
        config.apply_overrides(config.preset("tiny"), [bad])
    assert "\n" not in str(error.value)


SOFTMAX = ["segment.model.head=softmax", "segment.train.loss={'cce': 1.0, 'dice': 0.5}"]


def test_softmax_head_with_cce_and_class_weights():
    cfg = config.apply_overrides(config.preset("tiny"), [*SOFTMAX, "segment.train.class_weights=[0.5, 2, 4, 1, 2]"])
    assert cfg.segment.model.head == "softmax" and cfg.segment.train.class_weights == (0.5, 2.0, 4.0, 1.0, 2.0)
    assert config.from_json_doc(json.loads(config.to_json(cfg))) == cfg
    assert config.preset("tiny").segment.model.head == "sigmoid"  # the default everywhere


@pytest.mark.parametrize("overrides, message", [
    (["segment.model.head=softmax"],  # the preset's bce + dice
     r"--set segment\.train\.loss=\{'bce': 0\.5, 'dice': 0\.5\}: model\.head=softmax trains with cce, dice, batch_dice "
     r"only; bce needs model\.head=sigmoid$"),
    (["segment.model.head=softmax", "segment.train.loss={'focal': 1, 'lovasz': 1, 'cce': 1}"],
     r"focal and lovasz need model\.head=sigmoid$"),
    (["segment.train.loss={'cce': 1}"],
     r"segment\.train\.loss=\{'cce': 1\}: model\.head=sigmoid trains with bce, dice, batch_dice, focal, lovasz only; "
     r"cce needs model\.head=softmax$"),
    (["segment.train.class_weights=[1, 1, 1, 1, 1]"], r"class_weights=.*weights the cce loss term, which loss="),
    (["classify.model.head=softmax"], r"no config key 'head' in ClassifierModel"),
    ([*SOFTMAX, "segment.train.pos_weight=auto"], r"segment\.train: pos_weight='auto', label_smoothing=0\.0: bce "),
    ([*SOFTMAX, "segment.train.label_smoothing=0.1"], r"label_smoothing=0\.1: bce options"),
])
def test_head_and_loss_terms_must_agree(overrides, message):
    with pytest.raises(ValueError, match=message) as error:
        config.apply_overrides(config.preset("tiny"), overrides)
    assert "\n" not in str(error.value)


def test_override_values_are_coerced_to_the_field_type():
    cfg = config.apply_overrides(config.preset("tiny"), [
        "gpu_float16=true", "segment.train.learning_rate=1", "tpu=1234", "tpu=local", "segment.train.jit_compile=None"])
    assert cfg.gpu_float16 is True and cfg.segment.train.learning_rate == 1.0
    assert isinstance(cfg.segment.train.learning_rate, float) and cfg.tpu == "local"
    assert cfg.segment.train.jit_compile is None
    # A field taking a string or numbers: the numbers parse as numbers, the word stays a word.
    for text, want in (("[2, 1, 1, 3]", (2.0, 1.0, 1.0, 3.0)), ("auto", "auto"), ("None", None)):
        cfg = config.apply_overrides(config.preset("tiny"), [f"segment.train.pos_weight={text}"])
        assert cfg.segment.train.pos_weight == want


def test_overrides_apply_together_in_any_order():
    # resnet34 is only valid for an sm-* arch: checked once all overrides are in, whatever their order.
    for order in (["segment.model.encoder=resnet34", "segment.model.arch=sm-fpn"],
                  ["segment.model.arch=sm-fpn", "segment.model.encoder=resnet34"]):
        assert config.apply_overrides(config.preset("tiny"), order).segment.model.encoder == "resnet34"


def test_presets_and_direct_construction_are_validated():
    with pytest.raises(ValueError, match="epochs"):
        config.TrainConfig(epochs=-1)
    with pytest.raises(ValueError, match="batch_size"):
        config.DataConfig(batch_size=0)
    with pytest.raises(ValueError, match="encoder"):
        config.SegmenterModel(encoder="efficientnetb9")
    with pytest.raises(ValueError, match="encoder"):
        config.ClassifierModel(encoder="resnet34")  # a segmentation-models backbone: segmenters only


def test_config_json_with_unknown_missing_or_bad_keys_names_them():
    d = config.to_dict(config.preset("tiny"))
    del d["segment"]["train"]["epochs"]
    d["segment"]["train"]["epoch"] = 3
    with pytest.raises(ValueError, match=r"segment\.train\.: unknown keys \['epoch'\]; missing keys \['epochs'\]"):
        config.from_dict(d)
    d = config.to_dict(config.preset("tiny"))
    d["classify"]["train"]["epochs"] = "five"
    with pytest.raises(ValueError, match="classify.train.epochs must be an integer"):
        config.from_dict(d)


def test_config_imports_no_tensorflow():
    code = "import sys, steel_tpu.config; print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120).stdout
    assert out.strip() == "False"


def test_every_name_a_config_may_choose_has_its_builder():
    from steel_tpu import models
    from steel_tpu.config import choices
    from steel_tpu.device import losses
    from steel_tpu.models import encoders

    # The names live in config.choices only (no TensorFlow there); each has what builds it.
    assert choices.ENCODERS == encoders.encoder_names()
    assert tuple(models.BUILDERS) == choices.SEGMENTER_ARCHS
    assert choices.SEGMENTER_HEADS == tuple(choices.HEAD_LOSS_TERMS)
    assert set(choices.LOSS_TERMS) == set(losses.TERMS)


def test_the_config_reference_is_generated_from_the_schema():
    from pathlib import Path

    from steel_tpu.config import reference

    text = reference.markdown()
    assert (Path(__file__).resolve().parents[1] / "docs" / "config.md").read_text() == text
    rows = reference.rows()
    assert all(meaning for _, _, _, meaning in rows), [key for key, _, _, meaning in rows if not meaning]
    assert {key for key, *_ in rows} == set(_leaves(config.to_dict(config.Config())))


def _leaves(d, prefix=""):
    for key, value in d.items():
        if isinstance(value, dict) and key not in ("oversample", "loss"):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"


def test_a_bad_set_fails_fast_and_writes_nothing(tmp_path):
    work = tmp_path / "work"
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "steel_tpu", "train", "--shards", str(tmp_path), "--workdir",
                           str(work), "--config", "tiny", "--task", "both",
                           "--set", "segment.model.encoder=efficientnetb9"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and time.perf_counter() - start < 30
    assert proc.stderr.strip().startswith("steel-tpu train: error: --set segment.model.encoder='efficientnetb9'")
    assert not work.exists()  # the corrected rerun starts clean
