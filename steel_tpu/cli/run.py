"""What each command runs: its arguments handed to the package's functions, TensorFlow imported only where needed."""

import json

from steel_tpu import backend, config


def synth(args):
    from steel_tpu.data.synth import synthesize

    print(json.dumps(synthesize(args.out, n_train=args.train, n_test=args.test, seed=args.seed), indent=1))


def evaluate(args):
    from steel_tpu.metrics import evaluate

    print(evaluate(pred_path=args.pred, truth_path=args.truth, images=args.images,
                   intersection=args.intersection).format())


def _quiet_beam(args):
    """Beam logs a failing step's traceback before re-raising it: the CLI prints the error as one line instead."""
    if not getattr(args, "debug", False):
        import logging

        logging.getLogger("apache_beam.runners.common").setLevel(logging.CRITICAL)


def shards(args):
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


def import_seed004(args):
    from steel_tpu.data.seed004 import import_seed004

    print(import_seed004(src=args.src, out=args.out, folds=args.folds, seed=args.seed, shard_mb=args.shard_mb,
                         workers=args.workers, overwrite=args.overwrite))


def verify(args):
    from steel_tpu.data.verify import verify

    print(verify(args.shards, data=args.data, workers=args.workers))


def _backend(args):
    """Fix the Keras backend `--backend` chose (auto: from the host) before anything imports Keras."""
    backend.use(args.backend or "auto")


def _device(args):
    """The device `--device` chose (auto: None, the command detects it), built only when asked for explicitly."""
    if args.device in (None, "auto"):
        return None
    from steel_tpu.device import distribute

    return distribute.select_strategy(prefer=args.device)


def _models(args):
    """The one model source the --workdir arguments name (workdirs, a system folder or a kit), resolved once."""
    from steel_tpu.scoring.source import ModelSource

    return ModelSource.resolve(args.workdir)


def train(args):
    # Built and validated before TensorFlow loads and anything is written: a bad --set fails in a second and never
    # leaves a workdir holding its config.
    overrides = [*args.set, *([f"device={args.device}"] if args.device else []),
                 *([f"backend={args.backend}"] if args.backend else [])]
    members = config.members_of(args.config, overrides)
    # Every member gets the same --set and no preset chooses a backend of its own: the first one's is theirs.
    backend.use(next(iter(members.values())).backend)
    from steel_tpu.training import presets

    tasks = None if args.task == "both" else (args.task,)
    presets.run_preset(shards=args.shards, workdir=args.workdir, name=args.config, members=members, tasks=tasks,
                     folds=args.folds, pseudo=args.pseudo)


def tune(args):
    from steel_tpu.tuning.components import COMPONENT_GRID
    from steel_tpu.tuning.gain import MIN_GAIN
    from steel_tpu.tuning.soft import SOFT_GRID
    from steel_tpu.tuning.tune import tune

    tune(workdir=_models(args), out=args.out, component_grid=COMPONENT_GRID if args.components else (0,),
         soft_grid=SOFT_GRID if args.soft_gate else (0.0,), double=args.double,
         min_gain=MIN_GAIN if args.min_gain is None else args.min_gain)


def rescore(args):
    _backend(args)
    from steel_tpu.scoring.rescore import rescore  # TensorFlow: the models score the OOF images again

    rescore(workdir=_models(args), shards=args.shards, thresholds=args.thresholds, tolerance=args.tolerance,
            batch_size=args.batch_size, device=_device(args))


def predict(args):
    _backend(args)
    if args.runner:
        from steel_tpu.beam.options import pipeline_options

        pipeline_options(args.runner, args.pipeline_flags)
        _quiet_beam(args)
        from steel_tpu.beam.predict import predict as beam_predict

        beam_predict(workdir=_models(args), images=args.images, out=args.out, runner=args.runner,
                     pipeline_flags=args.pipeline_flags, batch_size=args.batch_size, tta=args.tta,
                     skip_bad=args.skip_bad, thresholds=args.thresholds, folds=args.folds)
        return
    from steel_tpu.scoring.predict import predict

    predict(workdir=_models(args), images=args.images, out=args.out, batch_size=args.batch_size, tta=args.tta,
            skip_bad=args.skip_bad, thresholds=args.thresholds, folds=args.folds, device=_device(args),
            **({} if args.chunk_size is None else {"chunk_size": args.chunk_size}))


def pseudo(args):
    _backend(args)
    from steel_tpu.scoring.pseudo import pseudo_label

    pseudo_label(workdir=_models(args), images=args.images, out=args.out, hi=args.min_confidence,
                 lo=1.0 - args.min_confidence if args.max_absent is None else args.max_absent,
                 min_area=args.min_area, thresholds=args.thresholds, folds=args.folds, batch_size=args.batch_size,
                 tta=args.tta, shard_mb=args.shard_mb, device=_device(args))


def report(args):
    from steel_tpu.reports.report import report

    print(report(workdir=args.workdir, out=args.out, shards=args.shards, examples=args.examples))


def compare(args):
    for name in args.configs:  # a bad --set fails before TensorFlow loads (compare's report and train import it)
        config.members_of(name, args.set)
    from steel_tpu.reports.compare import compare

    tasks = ("classify", "segment") if args.task == "both" else (args.task,)
    compare(shards=args.shards, configs=args.configs, folds=args.folds, out=args.out, tasks=tasks,
            overrides=args.set)


def env(args):
    _backend(args)
    from steel_tpu import env_report
    from steel_tpu.device import distribute

    report = env_report.env_report(prefer=distribute.prefer_for(args.device), require_tpu=args.device == "tpu")
    print(json.dumps(report, indent=1) if args.json else "\n".join(env_report.format_report(report)))
    # Problems are information (the notebook's first output must not stop "Run all"); --strict makes them fail.
    return 1 if args.strict and report["problems"] else 0


def export(args):
    from steel_tpu.scoring.export import export

    export(workdir=_models(args), out=args.out, thresholds=args.thresholds, folds=args.folds)
