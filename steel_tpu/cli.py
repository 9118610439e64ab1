"""The `steel-tpu` command: parse arguments, call the run functions of the package, report errors plainly."""

import argparse
import json
import math
import sys

from steel_tpu import __version__, config, console
from steel_tpu.config.choices import DEVICES
from steel_tpu.cli_errors import user_error

EXAMPLES = {
    "synth": "steel-tpu synth --out data --train 400 --test 100",
    "evaluate": "steel-tpu evaluate --pred submission.csv --truth data/test_truth.csv --images data/test_images",
    "shards": "steel-tpu shards --data data --out shards --folds 5",
    "import-seed004": "steel-tpu import-seed004 --src gs://bucket/tfrecs --out shards --folds 5",
    "verify": "steel-tpu verify --shards shards --data data",
    "train": "steel-tpu train --shards shards --workdir work --config tiny --folds 0,1",
    "tune": "steel-tpu tune --workdir work",
    "rescore": "steel-tpu rescore --workdir work --shards shards",
    "predict": "steel-tpu predict --workdir work --images data/test_images --out submission.csv",
    "pseudo": "steel-tpu pseudo --workdir work --images data/test_images --out pseudo_shards --min-confidence 0.9",
    "report": "steel-tpu report --workdir work --out report --shards shards",
    "compare": "steel-tpu compare --shards shards --configs seed001,seed004 --folds 0 --out comparison",
    "env": "steel-tpu env --device auto",
    "export": "steel-tpu export --workdir work --out kit",
}
RESCORE_TOLERANCE = 0.01  # rescore.TOLERANCE, likewise (it imports TensorFlow)


def _synth(args):
    from steel_tpu.synth import synthesize

    print(json.dumps(synthesize(args.out, n_train=args.train, n_test=args.test, seed=args.seed), indent=1))


def _evaluate(args):
    from steel_tpu.metrics import evaluate

    print(evaluate(pred_path=args.pred, truth_path=args.truth, images=args.images,
                   intersection=args.intersection).format())


def _quiet_beam(args):
    """Beam logs a failing step's traceback before re-raising it: the CLI prints the error as one line instead."""
    if not getattr(args, "debug", False):
        import logging

        logging.getLogger("apache_beam.runners.common").setLevel(logging.CRITICAL)


def _shards(args):
    if args.runner:
        from steel_tpu.beam.options import pipeline_options

        pipeline_options(args.runner, args.pipeline_flags)  # a missing Beam or a bad flag, before Beam's imports
        _quiet_beam(args)
        from steel_tpu.beam.shards import build_shards

        print(build_shards(data=args.data, out=args.out, runner=args.runner, pipeline_flags=args.pipeline_flags,
                           folds=args.folds, seed=args.seed, shard_mb=args.shard_mb, split=args.split,
                           workers=args.workers, overwrite=args.overwrite, skip_bad=args.skip_bad))
        return
    from steel_tpu.data.shards import build_shards

    print(build_shards(data=args.data, out=args.out, folds=args.folds, seed=args.seed, shard_mb=args.shard_mb,
                       split=args.split, workers=args.workers, overwrite=args.overwrite, skip_bad=args.skip_bad))


def _import_seed004(args):
    from steel_tpu.data.seed004 import import_seed004

    print(import_seed004(src=args.src, out=args.out, folds=args.folds, seed=args.seed, shard_mb=args.shard_mb,
                         workers=args.workers, overwrite=args.overwrite))


def _verify(args):
    from steel_tpu.data.verify import verify

    print(verify(args.shards, data=args.data, workers=args.workers))


def _device(args):
    """The device `--device` chose (auto: None, the command detects it), built only when asked for explicitly."""
    if args.device in (None, "auto"):
        return None
    from steel_tpu import distribute

    return distribute.select_strategy(prefer=args.device)


def _models(args):
    """The one model source the --workdir arguments name (workdirs, a system folder or a kit), resolved once."""
    from steel_tpu.scoring.source import ModelSource

    return ModelSource.resolve(args.workdir)


def _train(args):
    # Built and validated before TensorFlow loads and anything is written: a bad --set fails in a second and never
    # leaves a workdir holding its config.
    overrides = [*args.set, *([f"device={args.device}"] if args.device else [])]
    members = config.members_of(args.config, overrides)
    from steel_tpu import train

    tasks = None if args.task == "both" else (args.task,)
    train.run_preset(shards=args.shards, workdir=args.workdir, name=args.config, members=members, tasks=tasks,
                     folds=args.folds, pseudo=args.pseudo)


def _tune(args):
    from steel_tpu.tuning.components import COMPONENT_GRID
    from steel_tpu.tuning.gain import MIN_GAIN
    from steel_tpu.tuning.soft import SOFT_GRID
    from steel_tpu.tuning.tune import tune

    tune(workdir=_models(args), out=args.out, component_grid=COMPONENT_GRID if args.components else (0,),
         soft_grid=SOFT_GRID if args.soft_gate else (0.0,), double=args.double,
         min_gain=MIN_GAIN if args.min_gain is None else args.min_gain)


def _rescore(args):
    from steel_tpu.rescore import rescore  # TensorFlow: the models score the OOF images again

    rescore(workdir=_models(args), shards=args.shards, thresholds=args.thresholds, tolerance=args.tolerance,
            batch_size=args.batch_size, device=_device(args))


# Single-machine options a Beam run cannot honour: refused by the parser, never silently dropped.
_NOT_WITH_RUNNER = {"predict": ("chunk_size", "device")}


def _predict(args):
    if args.runner:
        from steel_tpu.beam.options import pipeline_options

        pipeline_options(args.runner, args.pipeline_flags)
        _quiet_beam(args)
        from steel_tpu.beam.predict import predict as beam_predict

        beam_predict(workdir=_models(args), images=args.images, out=args.out, runner=args.runner,
                     pipeline_flags=args.pipeline_flags, batch_size=args.batch_size, tta=args.tta,
                     skip_bad=args.skip_bad, thresholds=args.thresholds, folds=args.folds)
        return
    from steel_tpu.predict import predict

    predict(workdir=_models(args), images=args.images, out=args.out, batch_size=args.batch_size, tta=args.tta,
            skip_bad=args.skip_bad, thresholds=args.thresholds, folds=args.folds, device=_device(args),
            **({} if args.chunk_size is None else {"chunk_size": args.chunk_size}))


def _pseudo(args):
    from steel_tpu.pseudo import pseudo_label

    pseudo_label(workdir=_models(args), images=args.images, out=args.out, hi=args.min_confidence,
                 lo=1.0 - args.min_confidence if args.max_absent is None else args.max_absent,
                 min_area=args.min_area, thresholds=args.thresholds, folds=args.folds, batch_size=args.batch_size,
                 tta=args.tta, shard_mb=args.shard_mb, device=_device(args))


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


def _report(args):
    from steel_tpu.report import report

    print(report(workdir=args.workdir, out=args.out, shards=args.shards, examples=args.examples))


def _compare(args):
    for name in args.configs:  # a bad --set fails before TensorFlow loads (compare's report and train import it)
        config.members_of(name, args.set)
    from steel_tpu.compare import compare

    tasks = ("classify", "segment") if args.task == "both" else (args.task,)
    compare(shards=args.shards, configs=args.configs, folds=args.folds, out=args.out, tasks=tasks,
            overrides=args.set)


def config_list(text):
    """`seed001,seed004` -> ('seed001', 'seed004'): two or more distinct presets (compare's --configs)."""
    try:
        return config.check_presets(text.split(","), name=repr(text))
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error))


def _env(args):
    from steel_tpu import distribute, env_report

    report = env_report.env_report(prefer=distribute.prefer_for(args.device), require_tpu=args.device == "tpu")
    print(json.dumps(report, indent=1) if args.json else "\n".join(env_report.format_report(report)))
    # Problems are information (the notebook's first output must not stop "Run all"); --strict makes them fail.
    return 1 if args.strict and report["problems"] else 0


def _export(args):
    from steel_tpu.export import export

    export(workdir=_models(args), out=args.out, thresholds=args.thresholds, folds=args.folds)


def _bounded(kind, low, *, strict=False, high=None):
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


_POSITIVE_INT, _COUNT = _bounded(int, 1), _bounded(int, 0)
# One thread per worker, started as work arrives: a typo such as 100000 would start one per image.
_WORKERS = _bounded(int, 1, high=256)


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Defaults shown where they say something (not None, an off switch or []); examples kept as written."""

    def _get_help_string(self, action):
        if action.default in (None, False, [], argparse.SUPPRESS) or action.required:
            return action.help
        return super()._get_help_string(action)


def _common():
    """--verbose and --debug, accepted before or after the command (SUPPRESS: the later one does not reset)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="show TensorFlow's C++ log lines (hidden by default; useful when a device is not found)")
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="on an error, show the full traceback instead of one line")
    return common


def _add(sub, name, func, help_text, common):
    p = sub.add_parser(name, help=help_text, description=help_text, parents=[common], formatter_class=_Formatter,
                       epilog=f"example:\n  {EXAMPLES[name]}")
    p.set_defaults(func=func)
    return p


def _add_runner(p):
    p.add_argument("--runner", default=None, metavar="RUNNER",
                   help="run as an Apache Beam pipeline (the [beam] extra) on RUNNER: DirectRunner or PrismRunner on "
                        "this machine, DataflowRunner on Google Cloud; any further --flag=value is a Beam pipeline "
                        "option (e.g. --project, --region, --temp_location)")


def _add_parsers(sub, common):
    p = _add(sub, "synth", _synth, "write the synthetic Severstal-like data set (Kaggle layout)", common)
    p.add_argument("--out", required=True, help="folder for train.csv, train_images/, test_images/, test_truth.csv")
    p.add_argument("--train", type=_COUNT, default=100, help="number of train images")
    p.add_argument("--test", type=_COUNT, default=20, help="number of test images (with a truth CSV)")
    p.add_argument("--seed", type=_COUNT, default=0, help="the same seed writes the same bytes")

    p = _add(sub, "evaluate", _evaluate, "Kaggle mean Dice of a submission against a truth CSV", common)
    p.add_argument("--pred", required=True, help="submission CSV (either layout, local or gs://)")
    p.add_argument("--truth", required=True, help="truth CSV (train.csv layout or legacy, local or gs://)")
    p.add_argument("--images", default=None, help="a folder of JPEGs or a text file of image ids: the exact image set "
                                                  "(default: the truth's images)")
    p.add_argument("--intersection", action="store_true",
                   help="score only the images both name, instead of refusing a prediction that misses images of "
                        "the truth or names others (prints how many were left out)")

    p = _add(sub, "shards", _shards, "pack images + RLE masks into TFRecord shards with stratified folds", common)
    p.add_argument("--data", required=True, help="Kaggle source: train.csv + train_images/ (or a JPEG folder with "
                                                 "--split test), local or gs://")
    p.add_argument("--out", required=True, help="the shard folder to write, local or gs://")
    p.add_argument("--folds", type=_bounded(int, 2), default=5, help="number of stratified folds K")
    p.add_argument("--seed", type=_COUNT, default=0, help="seed of the fold assignment")
    p.add_argument("--shard-mb", type=_bounded(float, 0, strict=True), default=100.0, help="target shard size in MB")
    p.add_argument("--split", choices=("train", "test"), default="train", help="train: with masks and folds")
    p.add_argument("--workers", type=_WORKERS, default=None, help="parallel workers (default: CPU cores)")
    p.add_argument("--overwrite", action="store_true", help="rebuild every shard instead of resuming")
    p.add_argument("--skip-bad", action="store_true", help="record bad images in the manifest and go on")
    _add_runner(p)

    p = _add(sub, "import-seed004", _import_seed004,
             "write a shard folder from seed 004's TFRecords (img_id, image, rle, label; *train-defect*-N.tfrec and "
             "*train-no-defect*-N.tfrec), JPEGs copied as they are, folds stratified as `shards` assigns them",
             common)
    p.add_argument("--src", required=True, help="the seed's folder of .tfrec files, local or gs://")
    p.add_argument("--out", required=True, help="the shard folder to write, local or gs://")
    p.add_argument("--folds", type=_bounded(int, 2), default=5, help="number of stratified folds K")
    p.add_argument("--seed", type=_COUNT, default=0, help="seed of the fold assignment")
    p.add_argument("--shard-mb", type=_bounded(float, 0, strict=True), default=100.0, help="target shard size in MB")
    p.add_argument("--workers", type=_WORKERS, default=None, help="parallel workers (default: CPU cores)")
    p.add_argument("--overwrite", action="store_true", help="rebuild every shard instead of resuming")

    p = _add(sub, "verify", _verify, "re-read shards and check them against the manifest (and the source)", common)
    p.add_argument("--shards", required=True, help="the shard folder, local or gs://")
    p.add_argument("--data", default=None, help="the Kaggle source, to check every image's bytes and masks round-trip")
    p.add_argument("--workers", type=_WORKERS, default=None, help="parallel readers (default: CPU cores)")

    p = _add(sub, "train", _train, "train the classifier and/or segmenter over K folds (resumes)", common)
    p.add_argument("--shards", required=True, help="the shard folder, local or gs://")
    p.add_argument("--workdir", required=True, help="checkpoints, logs and out-of-fold data (local or gs://)")
    p.add_argument("--config", required=True, choices=(*config.PRESETS, *config.SYSTEMS),
                   help="preset (always explicit: a TPU run must never fall back to the demo model): tiny = laptops, "
                        "tests, make demo; colab-tpu = one TPU v2-8/v3-8/v5e-8; full = the seed solution's scale; "
                        "seed000..seed004 = the seed write-ups' systems (seed000: six member workdirs in --workdir)")
    p.add_argument("--task", choices=("classify", "segment", "both"), default="both",
                   help="which models to train (both: those the config names in `tasks`)")
    p.add_argument("--folds", type=fold_list, default=None, help="comma-separated fold numbers (default: the config's)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. segment.train.epochs=5 (repeatable; checked before anything "
                        "is written)")
    p.add_argument("--pseudo", default=None, metavar="PSEUDO_SHARDS",
                   help="a pseudo-label shard folder (steel-tpu pseudo) mixed into each training batch at "
                        "TASK.data.pseudo_share (e.g. --set segment.data.pseudo_share=0.125); never validated on")
    p.add_argument("--device", choices=DEVICES, default=None,
                   help="where to train (default: the config's `device`; auto: a TPU when the host shows one, else "
                        "local GPUs, else the CPU); the same as --set device=...")

    p = _add(sub, "tune", _tune, "choose thresholds and minimum areas on out-of-fold predictions", common)
    p.add_argument("--workdir", required=True, action="append",
                   help="a training workdir, local or gs://; repeated: an ensemble of workdirs trained on one shard "
                        "folder, tuned on their averaged out-of-fold maps (folds complete in every one)")
    p.add_argument("--out", default=None, help="where thresholds.json and tune/ go (default: the workdir; required "
                                               "with several, and none of them)")
    p.add_argument("--components", action="store_true",
                   help="also choose a minimum connected-component size per class (second stage, slower)")
    p.add_argument("--soft-gate", action="store_true",
                   help="also choose a soft gate per class: the classifier's probability p raises the pixel "
                        "threshold by (1 - p) * k")
    p.add_argument("--double", action="store_true",
                   help="also try seed 004's double threshold per class: pixels above an upper threshold, counted "
                        "against the min area, decide presence; a lower one draws the mask (kept single unless "
                        "better; not with --components)")
    p.add_argument("--min-gain", type=float, default=None, metavar="IMAGES",
                   help="switch a class off (never submitted) unless its tuned setting beats submitting it empty by "
                        "at least this many images' Dice on the OOF images (default 1: one image's luck is not "
                        "learning; 0: only classes that lose)")

    p = _add(sub, "rescore", _rescore, "score the tuned post-processing at full resolution on the out-of-fold images "
                                       "(each fold's own models), beside tune's 1/4-resolution estimate", common)
    p.add_argument("--workdir", required=True, action="append",
                   help="a trained and tuned workdir or system folder, local or gs://; repeated: an ensemble of "
                        "workdirs (with --thresholds from `tune` over them); rescore.json goes beside the thresholds")
    p.add_argument("--shards", required=True, help="the shard folder the workdirs were trained from")
    p.add_argument("--thresholds", default=None, help="a thresholds.json (default: the workdir's)")
    p.add_argument("--tolerance", type=_bounded(float, 0.0), default=RESCORE_TOLERANCE,
                   help="warn about a class whose full-resolution Dice differs from the estimate by more")
    p.add_argument("--batch-size", type=_POSITIVE_INT, default=None, help="global batch (default: the segmenter's)")
    p.add_argument("--device", choices=DEVICES, default="auto",
                   help="auto: a TPU when the host shows one, else local GPUs, else the CPU")

    p = _add(sub, "predict", _predict, "score images with the workdir's fold ensemble into a Kaggle submission",
             common)
    p.add_argument("--workdir", required=True, action="append",
                   help="a training workdir, system folder or exported kit, local or gs://; repeated: every fold "
                        "model of every workdir averaged (needs --thresholds from `tune` over the same workdirs)")
    p.add_argument("--images", required=True, help="a folder of JPEGs or of test shards (local or gs://)")
    p.add_argument("--out", required=True, help="the submission CSV, current Kaggle layout (local or gs://)")
    p.add_argument("--batch-size", type=_POSITIVE_INT, default=None, help="global batch (default: the segmenter's)")
    p.add_argument("--tta", action="store_true", help="average over horizontal and vertical flips")
    p.add_argument("--skip-bad", action="store_true", help="list bad images in OUT.errors.csv and score them empty")
    p.add_argument("--thresholds", default=None, help="a thresholds.json (default: the workdir's, else defaults; "
                                                      "required with several --workdir)")
    p.add_argument("--folds", type=fold_list, default=None,
                   help="comma-separated fold models to use, of every workdir (default: all)")
    p.add_argument("--chunk-size", type=_POSITIVE_INT, default=None,
                   help="images per committed chunk (the resume unit; single machine only; default 1024)")
    p.add_argument("--device", choices=DEVICES, default=None,
                   help="auto: a TPU when the host shows one, else local GPUs, else the CPU (single machine only: "
                        "Beam workers use their own)")
    _add_runner(p)

    p = _add(sub, "pseudo", _pseudo, "pseudo-label unlabelled JPEGs with the workdir's ensemble: keep the images "
                                     "whose classifier and segmenter confidently agree, as pseudo shards", common)
    p.add_argument("--workdir", required=True, action="append",
                   help="a trained and tuned workdir, system folder or kit, local or gs://; repeated: an ensemble "
                        "of workdirs (with --thresholds from `tune` over them)")
    p.add_argument("--images", required=True, help="a folder of unlabelled JPEGs (e.g. test_images), local or gs://")
    p.add_argument("--out", required=True, help="the pseudo shard folder to write: new or empty")
    p.add_argument("--min-confidence", type=_bounded(float, 0.5, strict=True, high=1.0), default=0.9,
                   help="a class is confidently present at classifier probability >= this (with a mask of at least "
                        "its min area), absent at <= 1 - this (with no mask pixel); an image is kept when every "
                        "class is one or the other")
    p.add_argument("--max-absent", type=_bounded(float, 0.0, high=1.0), default=None,
                   help="the probability at or below which a class is confidently absent (default: 1 - "
                        "--min-confidence)")
    p.add_argument("--min-area", type=min_areas, default=None,
                   help="pixels a confidently present mask needs: one count or 4 (default: the thresholds' min areas)")
    p.add_argument("--thresholds", default=None, help="a thresholds.json (default: the workdir's; without one the "
                                                      "command stops: run tune first)")
    p.add_argument("--folds", type=fold_list, default=None, help="comma-separated fold models to use (default: all)")
    p.add_argument("--batch-size", type=_POSITIVE_INT, default=None, help="global batch (default: the segmenter's)")
    p.add_argument("--tta", action="store_true", help="average over horizontal and vertical flips")
    p.add_argument("--shard-mb", type=_bounded(float, 0, strict=True), default=100.0, help="target shard size in MB")
    p.add_argument("--device", choices=DEVICES, default="auto",
                   help="auto: a TPU when the host shows one, else local GPUs, else the CPU")

    p = _add(sub, "compare", _compare, "train two or more presets on the same folds (OUT/<preset>/, resumes), tune "
                                       "each, and write OUT/compare.html and compare.json comparing them per class",
             common)
    p.add_argument("--shards", required=True, help="the shard folder, local or gs://")
    p.add_argument("--configs", required=True, type=config_list, metavar="PRESET,PRESET[,...]",
                   help="comma-separated presets, two or more, each once: "
                        f"{', '.join([*config.PRESETS, *config.SYSTEMS])}")
    p.add_argument("--folds", required=True, type=fold_list, help="comma-separated fold numbers, the same for all")
    p.add_argument("--out", required=True,
                   help="a folder for compare.html, compare.json and one workdir per preset: new, empty, or an "
                        "earlier comparison of the same presets (its training resumes)")
    p.add_argument("--task", choices=("segment", "both"), default="both",
                   help="which models every preset trains (segment: no classifier gate to tune)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value of every preset, e.g. segment.train.epochs=5 (repeatable; "
                        "config.TINY_SCALE's keys shrink any preset for a CPU)")

    p = _add(sub, "env", _env, "what this host has: TensorFlow, Keras, libtpu, devices, strategy, credentials, "
                               "presets that fit, problems", common)
    p.add_argument("--device", choices=DEVICES, default="auto", help="the device choice to report on")
    p.add_argument("--json", action="store_true", help="the report as JSON")
    p.add_argument("--strict", action="store_true", help="exit 1 when a problem is listed")

    p = _add(sub, "export", _export, "a kit that scores offline (Kaggle): wheel, .keras fold models, thresholds, "
                                     "score.py", common)
    p.add_argument("--workdir", required=True, action="append",
                   help="a trained and tuned workdir or system folder, local or gs://; repeated: an ensemble of "
                        "workdirs (with --thresholds from `tune` over them), one kit for all of them")
    p.add_argument("--out", required=True, help="the kit folder: new, empty, or an earlier kit")
    p.add_argument("--thresholds", default=None, help="a thresholds.json (default: the workdir's)")
    p.add_argument("--folds", type=fold_list, default=None, help="comma-separated fold models (default: all)")

    p = _add(sub, "report", _report, "an HTML report of a training workdir", common)
    p.add_argument("--workdir", required=True, help="a training workdir, local or gs://")
    p.add_argument("--out", required=True, help="a folder for index.html and its figures")
    p.add_argument("--shards", default=None, help="the shard folder, to draw predictions over the images")
    p.add_argument("--examples", type=_COUNT, default=4, help="how many best and worst validation images to draw")


def build_parser():
    common = _common()
    parser = argparse.ArgumentParser(prog="steel-tpu", description=__doc__, parents=[common],
                                     formatter_class=_Formatter, epilog="run `steel-tpu COMMAND --help` for examples")
    parser.add_argument("--version", action="version", version=f"steel-tpu {__version__}")
    _add_parsers(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"), common)
    return parser


def parse(argv=None):
    """The parsed command line; with --runner, the arguments this parser does not know are Beam pipeline options
    (args.pipeline_flags, checked by Beam's own parser in steel_tpu.beam.options)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "runner", None):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    given = [f"--{dest.replace('_', '-')}" for dest in _NOT_WITH_RUNNER.get(args.command, ())
             if getattr(args, "runner", None) and getattr(args, dest) is not None]
    if given:
        parser.error(f"{', '.join(given)} cannot be used with --runner (a Beam pipeline has no chunked resume and "
                     "its workers choose their own device): leave them out, or drop --runner")
    args.pipeline_flags = extra
    return args


def main(argv=None):
    args = parse(argv)
    debug = getattr(args, "debug", False)
    verbose = getattr(args, "verbose", False)
    console.quiet_tensorflow(verbose=verbose)
    if not verbose:
        console.drop_native_logs()
    try:
        code = args.func(args)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"steel-tpu {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        paths = [p for v in vars(args).values() for p in (v if isinstance(v, list) else [v]) if isinstance(p, str)]
        message = user_error(error, paths=paths)
        if message is None or debug:
            raise
        # Bad input is the user's to fix: one clear line naming the file/line/image, no traceback.
        print(f"steel-tpu {args.command}: error: {message}", file=sys.stderr)
        return 2
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
