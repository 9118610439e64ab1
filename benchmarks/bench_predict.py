"""Images/s of `predict` against a seed-000-style scoring loop, same models and images, interleaved, one process.

    python benchmarks/bench_predict.py [--images 200] [--size 64x320] [--repeat 3] [--smoke]

Models: two B0 UNet++ folds + one B0 binary classifier at --size (random init: speed only; the mask heads'
biases are set so ~5% of pixels are defects, as on real Severstal masks, so RLE strings have realistic lengths).
Baseline (seed 000): load the models, PIL decode + resize of every image, each model's Keras `predict` over all
images, then per image and class: threshold, PIL resize of the mask to 1600x256, mask2rle, a DataFrame row.
Each repeat runs both contenders once, one after the other (same load from other processes); printed are the
median and spread of the per-repeat ratios, end to end and for the host path alone (everything but the models,
what remains of each when the device is an accelerator rather than these CPU cores: predict's upsampling and
thresholding run in its device forward, so they are made before the clock starts; the seed does them on the host
with PIL, so they count), and where the time goes:
model load and tracing, the models, decoding, post-processing.
Both apply the same gate (p_any >= 0, so the classifier runs but keeps everything) and pixel threshold 0.5.
"""

import argparse
import contextlib
import dataclasses
import io
import os
import shutil
import sys
import tempfile
import time

import keras
import numpy as np
import pandas as pd
import tensorflow as tf
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import timing  # noqa: E402

from steel_tpu import config as config_lib  # noqa: E402
from steel_tpu import metrics, postprocess, tasks  # noqa: E402
from steel_tpu.data import pipeline  # noqa: E402
from steel_tpu.data import synth
from steel_tpu.device import step
from steel_tpu.formats import kaggle
from steel_tpu.formats.submission import ChunkedSubmission  # noqa: E402
from steel_tpu.formats.workdir import Workdir  # noqa: E402
from steel_tpu.scoring import ensemble  # noqa: E402
from steel_tpu.scoring import predict
from steel_tpu.scoring.scorer import submitted_rles  # noqa: E402
from steel_tpu.scoring.source import ModelSource  # noqa: E402

FOLDS = (0, 1)
DEFECT_FRACTION = 0.05
# The same gate as the baseline's (keeps everything); 150 px: the 1st place's minimum component size.
HOST_PP = {"plain": postprocess.PostProcess(gate=(0.0,)),
           "components": postprocess.PostProcess(gate=(0.0,), min_component=(150,) * 4)}


def _data(folder, n):
    """`n` synthetic test JPEGs, cached in `folder` across runs."""
    images = os.path.join(folder, "test_images")
    if not (os.path.isdir(images) and len(os.listdir(images)) == n):
        shutil.rmtree(folder, ignore_errors=True)
        synth.synthesize(folder, n_train=0, n_test=n, seed=7)
    return images


def _calibrate(model, sample):
    """Shift the mask head's bias so DEFECT_FRACTION of the pixels of `sample` exceed 0.5, per class."""
    layer = model.get_layer("masks_logits")
    logits = keras.Model(model.inputs, layer.output).predict(sample, verbose=0)
    kernel, bias = layer.get_weights()
    cut = np.quantile(logits.reshape(-1, logits.shape[-1]), 1 - DEFECT_FRACTION, axis=0)
    layer.set_weights([kernel, bias - cut])


def _workdir(work, *, size, sample_paths):
    """A workdir of random-init fold models, saved exactly as training saves them."""
    cfg = config_lib.preset("tiny")
    h, w = size
    for task in (cfg.classify, cfg.segment):
        task.data = dataclasses.replace(task.data, image_height=h, image_width=w, batch_size=None,
                                        batch_per_replica=8)
    # EfficientNet-B0, as the TPU presets (and the README's figures): tiny's plaincnn would shrink the models' share.
    cfg.segment.model = dataclasses.replace(cfg.segment.model, encoder="efficientnetb0",
                                            decoder_filters=(256, 128, 64, 32, 16))
    # Seed 000's classifier is binary (one p_any gating the whole image), so the baseline's gate is the same rule.
    cfg.classify.model = dataclasses.replace(cfg.classify.model, encoder="efficientnetb0", heads="binary")
    cfg.folds = FOLDS
    wd = Workdir(work)
    wd.save_config(cfg)
    sample = _load_images(sample_paths, size)
    keras.utils.set_random_seed(0)
    for task in tasks.NAMES:
        for fold in FOLDS if task == "segment" else FOLDS[:1]:
            model = tasks.make(task, cfg).build_model()
            if task == "segment":
                _calibrate(model, sample)
            wd.save_weights(model, task, fold)
            wd.mark_done(task, fold, {"task": task})


def _load_images(paths, size):
    h, w = size
    return np.stack([np.asarray(Image.open(p).convert("RGB").resize((w, h), Image.BILINEAR)) for p in paths])


def mask2rle(img):
    """The Kaggle kernels' mask-to-RLE (column-major), as seed 000 uses it."""
    pixels = img.T.flatten()
    pixels = np.concatenate([[0], pixels, [0]])
    runs = np.where(pixels[1:] != pixels[:-1])[0] + 1
    runs[1::2] -= runs[::2]
    return " ".join(str(x) for x in runs)


def _load_models(work):
    """The workdir's models, built and loaded the way a seed kernel loads its saved models."""
    wd = Workdir(work)
    cfg = wd.config()
    models = {}
    for task in tasks.NAMES:
        for fold in wd.completed_folds(task):
            model = tasks.make(task, cfg).build_model()
            wd.load_weights(model, task, fold)
            models.setdefault(task, []).append(model)
    return models


def baseline(work, paths, *, size, out):
    """The seed-000 loop: load the models, predict everything with each, then post-process image by image.

    Returns ({stage: seconds}, mean mask probabilities, p_any).
    """
    start = time.perf_counter()
    models = _load_models(work)
    stages = {"load": time.perf_counter() - start}
    start = time.perf_counter()
    images = _load_images(paths, size).astype(np.float32)
    stages["decode"] = time.perf_counter() - start
    start = time.perf_counter()
    seg = np.mean([m.predict(images, batch_size=8, verbose=0) for m in models["segment"]], axis=0)
    p_any = models["classify"][0].predict(images, batch_size=8, verbose=0)[:, 0]
    stages["models"] = time.perf_counter() - start
    start = time.perf_counter()
    seed_post(paths, seg, p_any, out=out)
    stages["post"] = time.perf_counter() - start
    return stages, seg, p_any


def seed_post(paths, seg, p_any, *, out):
    """Seed 000's post-processing: per image and class, threshold, PIL resize to 1600x256, mask2rle, a row."""
    rows = []
    for i, path in enumerate(paths):
        rles = []
        for c in range(4):
            mask = np.array(Image.fromarray(seg[i, :, :, c] >= 0.5).resize((1600, 256))).astype(int)
            rles.append(mask2rle(mask) if p_any[i] >= 0.0 else "")
        rows.append([os.path.basename(path), *rles])
    df = pd.DataFrame(rows, columns=["ImageId", "rle_1", "rle_2", "rle_3", "rle_4"])
    long = df.melt(id_vars="ImageId", var_name="ClassId", value_name="EncodedPixels")
    long["ClassId"] = long["ClassId"].str[-1].astype(int)
    long[["ImageId", "EncodedPixels", "ClassId"]].to_csv(out, index=False)


def device_share(seg, *, batch_size, pp):
    """Per batch, the (bool masks, areas) the device hands the host: full-resolution upsampling and thresholding of
    `seg`. Made once, before any clock starts: on a TPU or GPU this is device work, not host path."""
    return [[t.numpy() for t in postprocess.to_masks(postprocess.to_full_resolution(seg[i:i + batch_size]), pp)]
            for i in range(0, len(seg), batch_size)]


def host_path(paths, device, p_any, *, size, batch_size, out, pp):
    """({"decode": s, "post": s}) that `predict` spends outside the device on these images: tf.data decoding, then
    min area / gate, RLE and committed CSV chunks of the device's full-resolution masks (`device`, device_share's)."""
    start = time.perf_counter()
    for _ in pipeline.predict_dataset(source=list(paths), image_size=size, batch_size=batch_size):
        pass
    decode = time.perf_counter() - start
    start = time.perf_counter()
    writer = ChunkedSubmission(out, plan={"bench": len(paths)})
    for (masks, areas), i in zip(device, range(0, len(paths), batch_size)):
        if pp.filters_components:  # as predict's _host_work: components dropped, areas counted after
            masks, areas = pp.filter(masks)
        rles = submitted_rles(masks, areas, p_any[i:i + batch_size, None], pp=pp)
        writer.commit(i // batch_size, list(zip([os.path.basename(p) for p in paths[i:i + batch_size]], rles)))
    writer.finish((len(paths) + batch_size - 1) // batch_size)
    return {"decode": decode, "post": time.perf_counter() - start}


def predict_stages(work, paths, *, size, batch_size):
    """{stage: seconds} of predict's own parts run one at a time: ensemble load + trace, then the models alone on
    decoded batches. (predict overlaps decoding and post-processing with the models, so its end-to-end time is
    less than the sum.)"""
    start = time.perf_counter()
    plan = ModelSource.resolve(work).plan(thresholds=postprocess.PostProcess(), tasks=("classify", "segment"))
    ens = ensemble.build(plan, strategy=tf.distribute.get_strategy())
    forward = ensemble.make_forward(ens, pp=postprocess.PostProcess())
    predict_step = step.make_predict_step(forward=forward, strategy=tf.distribute.get_strategy(), jit_compile=False)
    batches = [b["image"] for b in pipeline.predict_dataset(source=list(paths), image_size=size,
                                                            batch_size=batch_size).as_numpy_iterator()]
    predict_step(batches[0])
    stages = {"load": time.perf_counter() - start}
    start = time.perf_counter()
    for images in batches:
        predict_step(images)
    stages["models"] = time.perf_counter() - start
    return stages


def scoring_inputs(data, *, n_images, size):
    """(image folder, its sorted paths, a fresh random-init workdir at `size`) under `data`: what the scoring
    benchmarks score."""
    images = _data(data, n_images)
    paths = sorted(os.path.join(images, f) for f in os.listdir(images))
    work = os.path.join(data, f"work_{size[0]}x{size[1]}")
    shutil.rmtree(work, ignore_errors=True)
    _workdir(work, size=size, sample_paths=paths[:8])
    return images, paths, work


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--size", default="64x320", help="model input HxW (multiples of 32)")
    parser.add_argument("--data", default=os.path.join(tempfile.gettempdir(), "steel_bench_predict"))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: proves the benchmark runs (tests use it)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.images, args.repeat = 8, 1
        args.data = args.data.rstrip("/") + "_smoke"
    size = tuple(int(v) for v in args.size.split("x"))
    images, paths, work = scoring_inputs(args.data, n_images=args.images, size=size)
    n = len(paths)
    ours_csv, seed_csv = os.path.join(args.data, "ours.csv"), os.path.join(args.data, "seed.csv")
    seed_runs = []

    def ours():
        for name in os.listdir(args.data):  # a fresh submission each repeat, not a resumed one
            if name.startswith("ours.csv"):
                shutil.rmtree(os.path.join(args.data, name), ignore_errors=True)
                with contextlib.suppress(FileNotFoundError):
                    os.remove(os.path.join(args.data, name))
        with contextlib.redirect_stdout(io.StringIO()):
            predict.predict(workdir=work, images=images, out=ours_csv, thresholds=postprocess.PostProcess(gate=(0.0,)),
                            batch_size=args.batch_size, progress=False)

    def seed():
        seed_runs.append(baseline(work, paths, size=size, out=seed_csv))

    times = timing.interleaved({"seed-000": seed, "predict": ours}, repeats=args.repeat)
    seed_stages = {k: float(np.median([r[0][k] for r in seed_runs])) for k in seed_runs[0][0]}
    _, seg, p_any = seed_runs[-1]
    host_csv = os.path.join(args.data, "host.csv")
    host_runs = {"plain": [], "components": []}

    device = {kind: device_share(seg, batch_size=args.batch_size, pp=pp) for kind, pp in HOST_PP.items()}

    def ours_host(kind):
        def run():
            shutil.rmtree(host_csv, ignore_errors=True)
            with contextlib.suppress(FileNotFoundError):
                os.remove(host_csv)
            host_runs[kind].append(host_path(paths, device[kind], p_any, size=size, batch_size=args.batch_size,
                                             out=host_csv, pp=HOST_PP[kind]))
        return run

    # Host paths alone: seed's image loading + post-processing vs predict's decoding + post-processing, and
    # predict's with component filtering on (what `tune --components` can choose), for its cost per image.
    host_times = timing.interleaved({
        "seed-000": lambda: (_load_images(paths, size).astype(np.float32), seed_post(paths, seg, p_any, out=seed_csv)),
        "predict": ours_host("plain"), "predict+components": ours_host("components")}, repeats=max(3, args.repeat))
    ours_host_stages = {k: float(np.median([r[k] for r in host_runs["plain"]])) for k in host_runs["plain"][0]}
    ours_stages = {**predict_stages(work, paths, size=size, batch_size=args.batch_size), **ours_host_stages}

    agree = metrics.score_labels(kaggle.read_labels(ours_csv), kaggle.read_labels(seed_csv),
                                 image_ids=[os.path.basename(p) for p in paths])
    print(f"{n} images, model input {size[0]}x{size[1]}, 2 B0 UNet++ folds + B0 binary classifier, batch "
          f"{args.batch_size}, {os.cpu_count()} CPU cores shared by model and host, {args.repeat} interleaved "
          f"repeats [{timing.load()}]")
    print("end to end (model load, tracing, models, decode, post-processing, CSV), medians:")
    for name in ("predict", "seed-000"):
        median = float(np.median(times[name]))
        stages = ours_stages if name == "predict" else seed_stages
        print(f"  {name:9s} {median:7.2f} s  {n / median:6.1f} images/s   where the time goes (each stage alone): "
              + ", ".join(f"{k} {v:.2f} s" for k, v in stages.items()))
    print(timing.ratio_line("end_to_end predict/seed-000", timing.speedups(times, baseline="seed-000",
                                                                           contender="predict")))
    print("host path only (what is left when the device is fast: decoding, masks, RLE, rows, CSV), medians:")
    for name in ("predict", "seed-000"):
        median = float(np.median(host_times[name]))
        print(f"  {name:9s} {median:7.2f} s  {n / median:6.1f} images/s")
    print(timing.ratio_line("host_path predict/seed-000", timing.speedups(host_times, baseline="seed-000",
                                                                          contender="predict")))
    post = {k: np.array([r["post"] for r in runs]) for k, runs in host_runs.items()}
    extra = (post["components"] - post["plain"]) / n * 1e3  # paired repeats: the same load on both
    print(f"component filtering at full resolution (min {HOST_PP['components'].min_component[0]} px a class, "
          f"8-connected, every class): {np.median(extra):.2f} ms per image more host time "
          f"({extra.min():.2f}..{extra.max():.2f} over {extra.size}); post-processing "
          f"{np.median(post['plain']) / n * 1e3:.2f} ms per image without it")
    print(f"agreement of the two submissions (Dice of predict's masks vs seed's): {agree.format()}")


if __name__ == "__main__":
    main()
