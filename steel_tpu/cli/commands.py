"""The table of commands: what runs each, its help, an example that parses, its arguments (the parser is built
from it, in steel_tpu.cli)."""

import dataclasses

from steel_tpu.cli import run
from steel_tpu.cli.arguments import (BACKEND, BATCH_SIZE, COUNT, DEVICE, MODEL_FOLDS, POSITIVE_INT, PRESETS, RUNNER,
                                     SET, SHARD_BUILD, SHARD_MB, SHARDS, TTA, WORKERS, arg, bounded, config_list,
                                     fold_list, min_areas, thresholds, workdirs)
from steel_tpu.config.choices import BACKENDS, DEVICES


@dataclasses.dataclass(frozen=True)
class Command:
    """One command: what runs it, its one-line help, an example that parses, its arguments, and the options a
    Beam run (`--runner`) cannot honour (refused by the parser when given with it, never silently dropped)."""

    run: object
    help: str
    example: str
    arguments: tuple
    not_with_runner: tuple = ()


COMMANDS = {
    "synth": Command(
        run.synth, "write the synthetic Severstal-like data set (Kaggle layout)",
        "steel-tpu synth --out data --train 400 --test 100", (
            arg("--out", required=True, help="folder for train.csv, train_images/, test_images/, test_truth.csv"),
            arg("--train", type=COUNT, default=100, help="number of train images"),
            arg("--test", type=COUNT, default=20, help="number of test images (with a truth CSV)"),
            arg("--seed", type=COUNT, default=0, help="the same seed writes the same bytes"))),
    "evaluate": Command(
        run.evaluate, "Kaggle mean Dice of a submission against a truth CSV",
        "steel-tpu evaluate --pred submission.csv --truth data/test_truth.csv --images data/test_images", (
            arg("--pred", required=True, help="submission CSV (either layout, local or gs://)"),
            arg("--truth", required=True, help="truth CSV (train.csv layout or legacy, local or gs://)"),
            arg("--images", default=None, help="a folder of JPEGs or a text file of image ids: the exact image set "
                                               "(default: the truth's images)"),
            arg("--intersection", action="store_true",
                help="score only the images both name, instead of refusing a prediction that misses images of the "
                     "truth or names others (prints how many were left out)"))),
    "shards": Command(
        run.shards, "pack images + RLE masks into TFRecord shards with stratified folds",
        "steel-tpu shards --data data --out shards --folds 5", (
            arg("--data", required=True, help="Kaggle source: train.csv + train_images/ (or a JPEG folder with "
                                              "--split test), local or gs://"),
            *SHARD_BUILD,
            arg("--split", choices=("train", "test"), default="train", help="train: with masks and folds"),
            arg("--skip-bad", action="store_true", help="record bad images in the manifest and go on"),
            RUNNER)),
    "import-seed004": Command(
        run.import_seed004,
        "write a shard folder from seed 004's TFRecords (img_id, image, rle, label; *train-defect*-N.tfrec and "
        "*train-no-defect*-N.tfrec), JPEGs copied as they are, folds stratified as `shards` assigns them",
        "steel-tpu import-seed004 --src gs://bucket/tfrecs --out shards --folds 5", (
            arg("--src", required=True, help="the seed's folder of .tfrec files, local or gs://"),
            *SHARD_BUILD)),
    "verify": Command(
        run.verify, "re-read shards and check them against the manifest (and the source)",
        "steel-tpu verify --shards shards --data data", (
            SHARDS,
            arg("--data", default=None, help="the Kaggle source, to check every image's bytes and masks round-trip"),
            arg("--workers", type=WORKERS, default=None, help="parallel readers (default: CPU cores)"))),
    "train": Command(
        run.train, "train the classifier and/or segmenter over K folds (resumes)",
        "steel-tpu train --shards shards --workdir work --config tiny --folds 0,1", (
            SHARDS,
            arg("--workdir", required=True, help="checkpoints, logs and out-of-fold data (local or gs://)"),
            arg("--config", required=True, choices=PRESETS,
                help="preset (always explicit: a TPU run must never fall back to the demo model): tiny = laptops, "
                     "tests, make demo; colab-tpu = any TPU slice (Colab v5e-1, Kaggle v5e-8 / v6e-8); full = the "
                     "seed solution's scale; "
                     "seed000..seed004 = the seed write-ups' systems (seed000: six member workdirs in --workdir)"),
            arg("--task", choices=("classify", "segment", "both"), default="both",
                help="which models to train (both: those the config names in `tasks`)"),
            arg("--folds", type=fold_list, default=None, help="comma-separated fold numbers (default: the config's)"),
            SET,
            arg("--pseudo", default=None, metavar="PSEUDO_SHARDS",
                help="a pseudo-label shard folder (steel-tpu pseudo) mixed into each training batch at "
                     "TASK.data.pseudo_share (e.g. --set segment.data.pseudo_share=0.125); never validated on"),
            arg("--device", choices=DEVICES, default=None,
                help="where to train (default: the config's `device`; auto: a TPU when the host shows one, else "
                     "local GPUs, else the CPU); the same as --set device=..."),
            arg("--backend", choices=BACKENDS, default=None,
                help="which Keras backend trains (default: the config's `backend`; auto: JAX on a TPU host whose "
                     "TensorFlow cannot drive the TPU, else TensorFlow); the same as --set backend=..."))),
    "tune": Command(
        run.tune, "choose thresholds and minimum areas on out-of-fold predictions", "steel-tpu tune --workdir work", (
            workdirs("a training workdir or system folder, local or gs://; repeated: an ensemble of workdirs trained "
                     "on one shard folder, tuned on their averaged out-of-fold maps (folds complete in every one)"),
            arg("--out", default=None, help="where thresholds.json and tune/ go (default: the workdir or system; "
                                            "required with several, and none of them)"),
            arg("--components", action="store_true",
                help="also choose a minimum connected-component size per class (second stage, slower)"),
            arg("--soft-gate", action="store_true",
                help="also choose a soft gate per class: the classifier's probability p raises the pixel threshold "
                     "by (1 - p) * k"),
            arg("--double", action="store_true",
                help="also try seed 004's double threshold per class: pixels above an upper threshold, counted "
                     "against the min area, decide presence; a lower one draws the mask (kept single unless better; "
                     "not with --components)"),
            arg("--min-gain", type=float, default=None, metavar="IMAGES",
                help="switch a class off (never submitted) unless its tuned setting beats submitting it empty by at "
                     "least this many images' Dice on the OOF images (default 1: one image's luck is not learning; "
                     "0: only classes that lose)"))),
    "rescore": Command(
        run.rescore, "score the tuned post-processing at full resolution on the out-of-fold images (each fold's own "
                  "models), beside tune's 1/4-resolution estimate",
        "steel-tpu rescore --workdir work --shards shards", (
            workdirs("a trained and tuned workdir or system folder, local or gs://; repeated: an ensemble of "
                     "workdirs (with --thresholds from `tune` over them); rescore.json goes beside the thresholds"),
            arg("--shards", required=True, help="the shard folder the workdirs were trained from"),
            thresholds("a thresholds.json (default: the workdir's or system's)"),
            arg("--tolerance", type=bounded(float, 0.0), default=0.01,
                help="warn about a class whose full-resolution Dice differs from the estimate by more"),
            BATCH_SIZE, DEVICE, BACKEND)),
    "predict": Command(
        run.predict, "score images with the model source's fold ensemble into a Kaggle submission",
        "steel-tpu predict --workdir work --images data/test_images --out submission.csv", (
            workdirs("a training workdir, system folder or exported kit, local or gs://; repeated: every fold "
                     "model of every workdir averaged (needs --thresholds from `tune` over the same workdirs)"),
            arg("--images", required=True, help="a folder of JPEGs or of test shards (local or gs://)"),
            arg("--out", required=True, help="the submission CSV, current Kaggle layout (local or gs://)"),
            BATCH_SIZE, TTA,
            arg("--skip-bad", action="store_true", help="list bad images in OUT.errors.csv and score them empty"),
            thresholds("a thresholds.json (default: the source's own, else defaults; required with several "
                       "--workdir)"),
            MODEL_FOLDS,
            arg("--chunk-size", type=POSITIVE_INT, default=None,
                help="images per committed chunk (the resume unit; single machine only; default 1024)"),
            DEVICE, BACKEND, RUNNER),
        not_with_runner=("chunk_size", "device")),
    "pseudo": Command(
        run.pseudo, "pseudo-label unlabelled JPEGs with the model source's ensemble: keep the images whose classifier "
                 "and segmenter confidently agree, as pseudo shards",
        "steel-tpu pseudo --workdir work --images data/test_images --out pseudo_shards --min-confidence 0.9", (
            workdirs("a trained and tuned workdir, system folder or kit, local or gs://; repeated: an ensemble of "
                     "workdirs (with --thresholds from `tune` over them)"),
            arg("--images", required=True, help="a folder of unlabelled JPEGs (e.g. test_images), local or gs://"),
            arg("--out", required=True, help="the pseudo shard folder to write: new or empty"),
            arg("--min-confidence", type=bounded(float, 0.5, strict=True, high=1.0), default=0.9,
                help="a class is confidently present at classifier probability >= this (with a mask of at least "
                     "its min area), absent at <= 1 - this (with no mask pixel); an image is kept when every class "
                     "is one or the other"),
            arg("--max-absent", type=bounded(float, 0.0, high=1.0), default=None,
                help="the probability at or below which a class is confidently absent (default: 1 - "
                     "--min-confidence)"),
            arg("--min-area", type=min_areas, default=None,
                help="pixels a confidently present mask needs: one count or 4 (default: the thresholds' min areas)"),
            thresholds("a thresholds.json (default: the source's own; without one the command stops: run tune "
                       "first)"),
            MODEL_FOLDS, BATCH_SIZE, TTA, SHARD_MB, DEVICE, BACKEND)),
    "report": Command(
        run.report, "an HTML report of a training workdir or system",
        "steel-tpu report --workdir work --out report --shards shards", (
            arg("--workdir", required=True, help="a training workdir or system folder, local or gs://"),
            arg("--out", required=True, help="a folder for index.html and its figures"),
            arg("--shards", default=None, help="the shard folder, to draw predictions over the images"),
            arg("--examples", type=COUNT, default=4, help="how many best and worst validation images to draw"))),
    "compare": Command(
        run.compare, "train two or more presets on the same folds (OUT/<preset>/, resumes), tune each, and write "
                  "OUT/compare.html and compare.json comparing them per class",
        "steel-tpu compare --shards shards --configs seed001,seed004 --folds 0 --out comparison", (
            SHARDS,
            arg("--configs", required=True, type=config_list, metavar="PRESET,PRESET[,...]",
                help=f"comma-separated presets, two or more, each once: {', '.join(PRESETS)}"),
            arg("--folds", required=True, type=fold_list, help="comma-separated fold numbers, the same for all"),
            arg("--out", required=True,
                help="a folder for compare.html, compare.json and one workdir per preset: new, empty, or an earlier "
                     "comparison of the same presets (its training resumes)"),
            arg("--task", choices=("segment", "both"), default="both",
                help="which models every preset trains (segment: no classifier gate to tune)"),
            arg("--set", action="append", default=[], metavar="KEY=VALUE",
                help="override a config value of every preset, e.g. segment.train.epochs=5 (repeatable; "
                     "config.TINY_SCALE's keys shrink any preset for a CPU)"))),
    "env": Command(
        run.env, "what this host has: TensorFlow, Keras, libtpu, devices, strategy, credentials, presets that fit, "
              "problems", "steel-tpu env --device auto", (
            arg("--device", choices=DEVICES, default=None, help="the device choice to report on (default: auto)"),
            BACKEND,
            arg("--json", action="store_true", help="the report as JSON"),
            arg("--strict", action="store_true", help="exit 1 when a problem is listed"))),
    "export": Command(
        run.export, "a kit that scores offline (Kaggle): wheel, fold model weights, thresholds, score.py",
        "steel-tpu export --workdir work --out kit", (
            workdirs("a trained and tuned workdir or system folder, local or gs://; repeated: an ensemble of "
                     "workdirs (with --thresholds from `tune` over them), one kit for all of them"),
            arg("--out", required=True, help="the kit folder: new, empty, or an earlier kit"),
            thresholds("a thresholds.json (default: the source's own)"),
            arg("--folds", type=fold_list, default=None, help="comma-separated fold models (default: all)"))),
}
