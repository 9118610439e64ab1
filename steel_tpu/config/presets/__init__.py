"""The named presets, one module each (each function's docstring is the command that runs it), and the systems."""

from steel_tpu.config.fields import require
from steel_tpu.config.overrides import apply_overrides
from steel_tpu.config.presets.colab_tpu import colab_tpu
from steel_tpu.config.presets.full import full
from steel_tpu.config.presets.seed000 import seed000
from steel_tpu.config.presets.seed001 import seed001
from steel_tpu.config.presets.seed002 import seed002
from steel_tpu.config.presets.seed003 import seed003
from steel_tpu.config.presets.seed004 import seed004
from steel_tpu.config.presets.tiny import tiny
from steel_tpu.config.schema import TASKS

PRESETS = {"tiny": tiny, "colab-tpu": colab_tpu, "full": full,
           "seed001": seed001, "seed002": seed002, "seed003": seed003, "seed004": seed004}
# Presets of several models trained as member workdirs of one system folder (system.py): {member: Config}.
SYSTEMS = {"seed000": seed000}

# Any preset at a size a CPU trains in seconds (tests; a first look at a preset on a laptop): small inputs, one
# step, no pretrained weights, the CPU. `steel-tpu train --config NAME --set KEY=VALUE ...` with these does the same.
# No reference batch: resolve.py would otherwise scale one step per execution up to the preset's images per call
# (seed 004: 32 steps of 4 images).
TINY_SCALE = tuple(f"{task}.{key}" for task in TASKS for key in (
    "data.image_height=64", "data.image_width=320", "data.batch_per_replica=4", "train.epochs=1",
    "train.steps_per_epoch=1", "train.steps_per_execution=1", "train.reference_batch=None",
    "model.weights=None")) + ("device=cpu",)


def check_presets(names, *, name="--configs"):
    """`names` as a tuple, refused unless two or more distinct presets (what `steel-tpu compare` trains)."""
    names = tuple(names)
    require(len(names) >= 2, f"{name}: give two or more comma-separated presets to compare, e.g. seed001,seed004")
    unknown = [n for n in names if n not in PRESETS and n not in SYSTEMS]
    require(not unknown, f"{name}: unknown preset {unknown[0]!r}; choose from {', '.join([*PRESETS, *SYSTEMS])}"
            if unknown else "")
    twice = sorted({n for n in names if names.count(n) > 1})
    require(not twice, f"{name}: {', '.join(twice)} named twice; each preset is trained once, into OUT/<preset>")
    return names


def preset(name):
    if name in SYSTEMS:
        raise ValueError(f"config {name!r} is a system of member workdirs ({', '.join(SYSTEMS[name]())}): "
                         "`steel-tpu train --config` trains it, one member at a time")
    if name not in PRESETS:
        raise ValueError(f"unknown config {name!r}; choose from {', '.join([*PRESETS, *SYSTEMS])}")
    return PRESETS[name]()


def members_of(name, overrides=()):
    """{member: validated Config} of preset `name` with the `--set` overrides applied to each member; a plain
    preset is one member, None (its workdir is the one given)."""
    if name in SYSTEMS:
        return {member: apply_overrides(cfg, overrides) for member, cfg in SYSTEMS[name]().items()}
    return {None: apply_overrides(preset(name), overrides)}


