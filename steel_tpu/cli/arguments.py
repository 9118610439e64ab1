"""The command line's argument types and the argument groups several commands share (one definition each)."""

import argparse
import math

from steel_tpu import config
from steel_tpu.config.choices import BACKENDS, DEVICES


def arg(*flags, **options):
    """One argument: argparse's add_argument(*flags, **options), as data."""
    return flags, options


def bounded(kind, low, *, strict=False, high=None):
    """An argparse type: a finite `kind` (int or float) at least `low` (above it when strict), at most `high`."""

    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}")
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        if value < low or (strict and value == low):
            raise argparse.ArgumentTypeError(f"{text} must be {'>' if strict else '>='} {low}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"{text} must be <= {high}")
        return value

    return parse


def fold_list(text):
    """`0,1,2` -> (0, 1, 2): distinct non-negative fold numbers (the one --folds syntax for choosing folds)."""
    try:
        folds = tuple(int(part) for part in text.split(","))
        config.check_folds(folds)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated fold numbers such as 0,1,2 ({error})")
    return folds


def min_areas(text):
    """`600` (every class) or `600,600,900,2000` (one per class) -> 4 pixel counts >= 0."""
    try:
        areas = tuple(int(part) for part in text.split(","))
    except ValueError:
        areas = ()
    if len(areas) == 1:
        areas *= 4
    if len(areas) != 4 or min(areas) < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected one pixel count or 4 comma-separated ones, each >= 0")
    return areas


def config_list(text):
    """`seed001,seed004` -> ('seed001', 'seed004'): two or more distinct presets (compare's --configs)."""
    try:
        return config.check_presets(text.split(","), name=repr(text))
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error))


POSITIVE_INT, COUNT = bounded(int, 1), bounded(int, 0)
# One thread per worker, started as work arrives: a typo such as 100000 would start one per image.
WORKERS = bounded(int, 1, high=256)
SHARD_MB = arg("--shard-mb", type=bounded(float, 0, strict=True), default=100.0, help="target shard size in MB")
PRESETS = (*config.PRESETS, *config.SYSTEMS)


def workdirs(help_text):
    """--workdir, repeatable: the model source (scoring.source.ModelSource) a command resolves once."""
    return arg("--workdir", required=True, action="append", help=help_text)


def thresholds(help_text):
    """--thresholds: a thresholds.json (formats/thresholds.py) instead of the model source's own."""
    return arg("--thresholds", default=None, help=help_text)


SHARDS = arg("--shards", required=True, help="the shard folder, local or gs://")
DEVICE = arg("--device", choices=DEVICES, default=None,
             help="where the models run: auto (the default) a TPU when the host shows one, else local GPUs, else the "
                  "CPU; tpu, gpu or cpu explicitly")
BACKEND = arg("--backend", choices=BACKENDS, default=None,
              help="which Keras backend runs the models: auto (the default) JAX on a TPU host whose TensorFlow cannot "
                   "drive the TPU (Colab, Kaggle), else TensorFlow; KERAS_BACKEND, when set, is auto's answer")
BATCH_SIZE = arg("--batch-size", type=POSITIVE_INT, default=None, help="global batch (default: the segmenter's)")
TTA = arg("--tta", action="store_true", help="average over horizontal and vertical flips")
MODEL_FOLDS = arg("--folds", type=fold_list, default=None,
                  help="comma-separated fold models to use, of every member (default: all)")
SET = arg("--set", action="append", default=[], metavar="KEY=VALUE",
          help="override a config value, e.g. segment.train.epochs=5 (repeatable; checked before anything is "
               "written; docs/config.md lists every key)")
RUNNER = arg("--runner", default=None, metavar="RUNNER",
             help="run as an Apache Beam pipeline (the [beam] extra) on RUNNER: DirectRunner or PrismRunner on this "
                  "machine, DataflowRunner on Google Cloud; any further --flag=value is a Beam pipeline option (e.g. "
                  "--project, --region, --temp_location)")
# Building a shard folder: `shards` and `import-seed004`.
SHARD_BUILD = (
    arg("--out", required=True, help="the shard folder to write, local or gs://"),
    arg("--folds", type=bounded(int, 2), default=5, help="number of stratified folds K"),
    arg("--seed", type=COUNT, default=0, help="seed of the fold assignment"),
    SHARD_MB,
    arg("--workers", type=WORKERS, default=None, help="parallel workers (default: CPU cores)"),
    arg("--overwrite", action="store_true", help="rebuild every shard instead of resuming"),
)
