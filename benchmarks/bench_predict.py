"""Images/s of `predict` against a seed-000-style scoring loop, same models and images, one process.

    .venv/bin/python benchmarks/bench_predict.py [--images 200] [--size 64x320] [--data /tmp/steel_bench_predict]

Models: two B0 UNet++ folds + one B0 binary classifier at --size (random init: speed only; the mask heads'
biases are set so ~5% of pixels are defects, as on real Severstal masks, so RLE strings have realistic lengths).
Baseline (seed 000): PIL decode + resize of every image, each model's Keras `predict` over all images, then per
image and class: threshold, PIL resize of the mask to 1600x256, numpy/Python mask2rle, a row for a DataFrame.
Both apply the same gate (p_any >= 0, so the classifier runs but keeps everything) and pixel threshold 0.5.
"""

import argparse
import dataclasses
import json
import os
import shutil
import sys
import time

import numpy as np
import pandas as pd
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from steel_tpu import config as config_lib  # noqa: E402
from steel_tpu import kaggle, metrics, postprocess, predict, storage, synth, train, workdir  # noqa: E402

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
    import keras

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
    workdir.save_config(work, cfg)
    sample = _load_images(sample_paths, size)
    models = {}
    for task in workdir.TASKS:
        for fold in FOLDS if task == "segment" else FOLDS[:1]:
            model = train.build_model(task, getattr(cfg, task))
            if task == "segment":
                _calibrate(model, sample)
            workdir.save_weights(model, workdir.fold_file(work, task, fold, "best.weights.h5"))
            storage.write_text(workdir.fold_file(work, task, fold, "done.json"), json.dumps({"task": task}))
            models.setdefault(task, []).append(model)
    return models


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


def baseline(paths, models, *, size, out):
    """The seed-000 loop: predict everything with each model, then post-process image by image."""
    images = _load_images(paths, size).astype(np.float32)
    seg = np.mean([m.predict(images, batch_size=8, verbose=0) for m in models["segment"]], axis=0)
    p_any = models["classify"][0].predict(images, batch_size=8, verbose=0)[:, 0]
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
    models = _workdir(work, size=size, sample_paths=paths[:8])
    pp = postprocess.PostProcess(gate=(0.0,))

    start = time.perf_counter()
    ours_csv = os.path.join(args.data, "ours.csv")
    summary = predict.predict(workdir=work, images=images, out=ours_csv, thresholds=pp, batch_size=args.batch_size,
                              progress=False)
    ours = time.perf_counter() - start

    start = time.perf_counter()
    seed_csv = os.path.join(args.data, "seed.csv")
    baseline(paths, models, size=size, out=seed_csv)
    seed = time.perf_counter() - start

    n = len(paths)
    agree = metrics.score_labels(kaggle.read_labels(ours_csv), kaggle.read_labels(seed_csv), image_ids=[
        os.path.basename(p) for p in paths])
    print(f"images {n}, model input {size[0]}x{size[1]}, 2 B0 UNet++ folds + B0 classifier, batch {args.batch_size}")
    print(f"predict (end to end, incl. model load + XLA compile): {ours:.1f}s  {n / ours:.1f} images/s  "
          f"[{summary['images']} rows x 4]")
    print(f"seed-000 loop (incl. model predict tracing):          {seed:.1f}s  {n / seed:.1f} images/s")
    print(f"ratio predict / seed-000: {seed / ours:.2f}x  (target >= 3x)")
    print(f"agreement of the two submissions (Dice of ours vs seed's masks): {agree.format()}")


if __name__ == "__main__":
    main()
