"""Images/s of `predict` against a seed-000-style scoring loop, same models and images, one process.

    .venv/bin/python benchmarks/bench_predict.py [--images 200] [--size 64x320] [--data /tmp/steel_bench_predict]

Models: two B0 UNet++ folds + one B0 binary classifier at --size (random init: speed only; the mask heads'
biases are set so ~5% of pixels are defects, as on real Severstal masks, so RLE strings have realistic lengths).
Baseline (seed 000): load the models, PIL decode + resize of every image, each model's Keras `predict` over all
images, then per image and class: threshold, PIL resize of the mask to 1600x256, mask2rle, a DataFrame row.
Printed: end-to-end images/s and process CPU ms/image of both, and the host path alone (everything but the
models), which is what remains of each when the device is an accelerator rather than these CPU cores.
Both apply the same gate (p_any >= 0, so the classifier runs but keeps everything) and pixel threshold 0.5.
"""

import argparse
import dataclasses
import os
import shutil
import sys
import time

import keras
import numpy as np
import pandas as pd
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from steel_tpu import config as config_lib  # noqa: E402
from steel_tpu import kaggle, metrics, postprocess, predict, synth, tasks  # noqa: E402
from steel_tpu.data import pipeline  # noqa: E402
from steel_tpu.submission_writer import ChunkedSubmission  # noqa: E402
from steel_tpu.workdir import Workdir  # noqa: E402

FOLDS = (0, 1)
DEFECT_FRACTION = 0.05


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
    cfg = config_lib.tiny()
    h, w = size
    for task in (cfg.classify, cfg.segment):
        task.data = dataclasses.replace(task.data, image_height=h, image_width=w, batch_size=8)
    cfg.segment.model = dataclasses.replace(cfg.segment.model, decoder_filters=(256, 128, 64, 32, 16))
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

    Returns the seconds spent outside the models (image loading, masks, RLE, rows, CSV).
    """
    models = _load_models(work)
    start = time.perf_counter()
    images = _load_images(paths, size).astype(np.float32)
    host = time.perf_counter() - start
    seg = np.mean([m.predict(images, batch_size=8, verbose=0) for m in models["segment"]], axis=0)
    p_any = models["classify"][0].predict(images, batch_size=8, verbose=0)[:, 0]
    start = time.perf_counter()
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
    return host + time.perf_counter() - start, seg, p_any


def host_path(paths, seg, p_any, *, size, batch_size, out):
    """Seconds `predict` spends outside the device on these images: tf.data decoding, then min area / gate, RLE
    and committed CSV chunks of the device's full-resolution masks, made here from the same probabilities."""
    start = time.perf_counter()
    for _ in pipeline.predict_dataset(source=list(paths), image_size=size, batch_size=batch_size):
        pass
    decode = time.perf_counter() - start
    pp = postprocess.PostProcess(gate=(0.0,))
    writer = ChunkedSubmission(out, plan={"bench": len(paths)})
    post = 0.0
    for i in range(0, len(paths), batch_size):
        maps = postprocess.to_full_resolution(seg[i:i + batch_size])
        masks, areas = (t.numpy() for t in postprocess.to_masks(maps, pp.pixel_threshold))  # the device's share
        start = time.perf_counter()
        rles = predict.submitted_rles(masks, areas, p_any[i:i + batch_size, None], pp=pp)
        writer.commit(i // batch_size, list(zip([os.path.basename(p) for p in paths[i:i + batch_size]], rles)))
        post += time.perf_counter() - start
    start = time.perf_counter()
    writer.finish((len(paths) + batch_size - 1) // batch_size)
    return decode, post + time.perf_counter() - start


def _timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--size", default="64x320", help="model input HxW (multiples of 32)")
    parser.add_argument("--data", default="/tmp/steel_bench_predict")
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args(argv)
    size = tuple(int(v) for v in args.size.split("x"))
    images = _data(args.data, args.images)
    paths = sorted(os.path.join(images, f) for f in os.listdir(images))
    work = os.path.join(args.data, f"work_{size[0]}x{size[1]}")
    shutil.rmtree(work, ignore_errors=True)
    _workdir(work, size=size, sample_paths=paths[:8])
    n = len(paths)
    ours_csv, seed_csv = os.path.join(args.data, "ours.csv"), os.path.join(args.data, "seed.csv")

    summary, ours, ours_cpu = _timed(lambda: predict.predict(
        workdir=work, images=images, out=ours_csv, thresholds=postprocess.PostProcess(gate=(0.0,)),
        batch_size=args.batch_size, progress=False))
    (seed_host, seg, p_any), seed, seed_cpu = _timed(lambda: baseline(work, paths, size=size, out=seed_csv))
    decode, post = host_path(paths, seg, p_any, size=size, batch_size=args.batch_size,
                             out=os.path.join(args.data, "host.csv"))

    agree = metrics.score_labels(kaggle.read_labels(ours_csv), kaggle.read_labels(seed_csv),
                                 image_ids=[os.path.basename(p) for p in paths])
    print(f"\n{n} images, model input {size[0]}x{size[1]}, 2 B0 UNet++ folds + B0 classifier, batch "
          f"{args.batch_size}, {os.cpu_count()} CPU cores shared by model and host")
    print(f"end to end (model load, tracing, models, decode, post-processing, CSV):")
    print(f"  predict   {ours:7.1f} s  {n / ours:6.1f} images/s  {1000 * ours_cpu / n:6.0f} CPU ms/image  "
          f"[{summary['images']} images x 4 rows]")
    print(f"  seed-000  {seed:7.1f} s  {n / seed:6.1f} images/s  {1000 * seed_cpu / n:6.0f} CPU ms/image")
    print(f"  ratio predict / seed-000: {seed / ours:.2f}x wall, {seed_cpu / ours_cpu:.2f}x CPU  (target >= 3x)")
    print(f"host path only (what is left when the device is fast: decoding, masks, RLE, rows, CSV):")
    print(f"  predict   {decode + post:7.2f} s  {n / (decode + post):6.1f} images/s  "
          f"(decode {decode:.2f} s + min area/gate/RLE/CSV {post:.2f} s, timed one after the other)")
    print(f"  seed-000  {seed_host:7.2f} s  {n / seed_host:6.1f} images/s")
    print(f"  ratio predict / seed-000: {seed_host / (decode + post):.2f}x as timed; "
          f"{seed_host / max(decode, post):.2f}x bound by predict's slower host stage (tf.data decoding and the "
          f"worker thread run concurrently); thresholding is on the device, counted end to end")
    print(f"agreement of the two submissions (Dice of predict's masks vs seed's): {agree.format()}")


if __name__ == "__main__":
    main()
