"""The `steel-tpu` command: parse arguments, call the run functions of the package, report errors plainly."""

import argparse
import sys


def _cmd_synth(args):
    from steel_tpu.synth import synthesize

    summary = synthesize(args.out_dir, n_train=args.train, n_test=args.test, seed=args.seed)
    print(summary)


def _cmd_evaluate(args):
    from steel_tpu.metrics import evaluate

    scores = evaluate(pred_path=args.pred, truth_path=args.truth, images=args.images)
    print(scores.format())


def _cmd_shards(args):
    from steel_tpu.data.shards import build_shards

    summary = build_shards(
        data=args.data,
        out=args.out,
        folds=args.folds,
        seed=args.seed,
        shard_mb=args.shard_mb,
        split=args.split,
        workers=args.workers,
        overwrite=args.overwrite,
        skip_bad=args.skip_bad,
    )
    print(summary)


def _cmd_verify(args):
    from steel_tpu.data.verify import verify

    print(verify(args.out, data=args.data))


def _add_synth(sub):
    p = sub.add_parser("synth", help="write the synthetic Severstal-like data set (Kaggle layout)")
    p.add_argument("out_dir")
    p.add_argument("--train", type=int, default=100, help="number of train images")
    p.add_argument("--test", type=int, default=20, help="number of test images (with a truth CSV)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_synth)


def _add_evaluate(sub):
    p = sub.add_parser("evaluate", help="Kaggle mean Dice of a submission against a truth CSV")
    p.add_argument("--pred", required=True, help="submission CSV (either layout, local or gs://)")
    p.add_argument("--truth", required=True, help="truth CSV (train.csv layout or legacy, local or gs://)")
    p.add_argument("--images", default=None, help="a folder of JPEGs or a text file of image ids: the exact image set")
    p.set_defaults(func=_cmd_evaluate)


def _add_shards(sub):
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
    p.set_defaults(func=_cmd_shards)


def _add_verify(sub):
    p = sub.add_parser("verify", help="re-read shards and check them against the manifest (and the source)")
    p.add_argument("out", help="the shard folder (local or gs://)")
    p.add_argument("--data", default=None, help="the source, to check every image's bytes and masks round-trip")
    p.set_defaults(func=_cmd_verify)


def build_parser():
    parser = argparse.ArgumentParser(prog="steel-tpu", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_synth, _add_evaluate, _add_shards, _add_verify):
        add(sub)
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
