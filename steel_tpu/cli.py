"""The `steel-tpu` command: parse arguments, call the run functions of the package, report errors plainly."""

import argparse
import json
import sys


def _synth(args):
    from steel_tpu.synth import synthesize

    print(json.dumps(synthesize(args.out_dir, n_train=args.train, n_test=args.test, seed=args.seed), indent=1))


def _evaluate(args):
    from steel_tpu.metrics import evaluate

    print(evaluate(pred_path=args.pred, truth_path=args.truth, images=args.images).format())


def _shards(args):
    from steel_tpu.data.shards import build_shards

    print(build_shards(data=args.data, out=args.out, folds=args.folds, seed=args.seed, shard_mb=args.shard_mb,
                       split=args.split, workers=args.workers, overwrite=args.overwrite, skip_bad=args.skip_bad))


def _verify(args):
    from steel_tpu.data.verify import verify

    print(verify(args.out, data=args.data))


def _train(args):
    from steel_tpu import config, train

    cfg = config.apply_overrides(config.preset(args.config), args.set)
    folds = None if args.folds is None else tuple(int(f) for f in args.folds.split(","))
    tasks = ("classify", "segment") if args.task == "both" else (args.task,)
    train.run(data=args.data, work=args.workdir, cfg=cfg, tasks=tasks, folds=folds)


def _tune(args):
    from steel_tpu.tune import tune

    tune(workdir=args.workdir, out=args.out)


def _predict(args):
    from steel_tpu.predict import predict

    predict(workdir=args.workdir, images=args.images, out=args.out, batch_size=args.batch_size, tta=args.tta,
            skip_bad=args.skip_bad, thresholds=args.thresholds, folds=args.folds, chunk_size=args.chunk_size)


def _report(args):
    from steel_tpu.report import report

    print(report(workdir=args.workdir, out=args.out, data=args.data, examples=args.examples))


def _add_parsers(sub):
    p = sub.add_parser("synth", help="write the synthetic Severstal-like data set (Kaggle layout)")
    p.add_argument("out_dir")
    p.add_argument("--train", type=int, default=100, help="number of train images")
    p.add_argument("--test", type=int, default=20, help="number of test images (with a truth CSV)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_synth)

    p = sub.add_parser("evaluate", help="Kaggle mean Dice of a submission against a truth CSV")
    p.add_argument("--pred", required=True, help="submission CSV (either layout, local or gs://)")
    p.add_argument("--truth", required=True, help="truth CSV (train.csv layout or legacy, local or gs://)")
    p.add_argument("--images", default=None, help="a folder of JPEGs or a text file of image ids: the exact image set")
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("shards", help="pack images + RLE masks into TFRecord shards with stratified folds")
    p.add_argument("--data", required=True, help="source: train.csv + train_images/ (or a JPEG folder with --split test)")
    p.add_argument("--out", required=True, help="destination folder, local or gs://")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shard-mb", type=float, default=100.0, help="target shard size in MB")
    p.add_argument("--split", choices=("train", "test"), default="train")
    p.add_argument("--workers", type=int, default=None, help="parallel workers (default: CPU cores)")
    p.add_argument("--overwrite", action="store_true", help="rebuild every shard instead of resuming")
    p.add_argument("--skip-bad", action="store_true", help="record bad images in the manifest and go on")
    p.set_defaults(func=_shards)

    p = sub.add_parser("verify", help="re-read shards and check them against the manifest (and the source)")
    p.add_argument("out", help="the shard folder (local or gs://)")
    p.add_argument("--data", default=None, help="the source, to check every image's bytes and masks round-trip")
    p.set_defaults(func=_verify)

    p = sub.add_parser("train", help="train the classifier and/or segmenter over K folds (resumes)")
    p.add_argument("--data", required=True, help="the shard folder (local or gs://)")
    p.add_argument("--workdir", required=True, help="checkpoints, logs and out-of-fold data (local or gs://)")
    p.add_argument("--task", choices=("classify", "segment", "both"), default="both")
    p.add_argument("--folds", default=None, help="comma-separated fold numbers (default: the config's)")
    p.add_argument("--config", default="tiny", help="preset: tiny, colab-tpu, full")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. segment.train.epochs=5 (repeatable)")
    p.set_defaults(func=_train)

    p = sub.add_parser("tune", help="choose thresholds and minimum areas on out-of-fold predictions")
    p.add_argument("--workdir", required=True)
    p.add_argument("--out", default=None, help="where thresholds.json and tune/ go (default: the workdir)")
    p.set_defaults(func=_tune)

    p = sub.add_parser("predict", help="score images with the workdir's fold ensemble into a Kaggle submission")
    p.add_argument("--workdir", required=True)
    p.add_argument("--images", required=True, help="a folder of JPEGs or of test shards (local or gs://)")
    p.add_argument("--out", required=True, help="the submission CSV (local or gs://)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--tta", action="store_true", help="average over horizontal and vertical flips")
    p.add_argument("--skip-bad", action="store_true", help="list bad images in OUT.errors.csv and score them empty")
    p.add_argument("--thresholds", default=None, help="a thresholds.json (default: the workdir's, else defaults)")
    p.add_argument("--folds", type=int, nargs="+", default=None, help="only these fold models (default: all)")
    p.add_argument("--chunk-size", type=int, default=1024, help="images per committed chunk (the resume unit)")
    p.set_defaults(func=_predict)

    p = sub.add_parser("report", help="an HTML report of a training workdir")
    p.add_argument("--workdir", required=True)
    p.add_argument("--out", required=True, help="a folder for index.html and its figures")
    p.add_argument("--data", default=None, help="the shard folder, to draw predictions over the images")
    p.add_argument("--examples", type=int, default=4, help="how many best and worst validation images to draw")
    p.set_defaults(func=_report)


def build_parser():
    parser = argparse.ArgumentParser(prog="steel-tpu", description=__doc__)
    _add_parsers(parser.add_subparsers(dest="command", required=True))
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError) as e:
        # Bad input is the user's to fix: one clear line naming the file/line/image, no traceback.
        print(f"steel-tpu {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
