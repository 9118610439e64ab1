"""Training input pipeline vs the bare JPEG-decode bound and a seed-style Keras loader, same shards, same process.

    python benchmarks/bench_pipeline.py            # 512 synthetic images, cached under /tmp

(a) steel_tpu.data.pipeline.train_dataset at full 256x1600, masks included, steady state (shuffle buffer full);
(b) the bound: tf.io.decode_jpeg (channels=3) in a tf.data map over the same JPEG bytes held in memory, batched;
(c) a seed-style loader: a keras.utils.PyDataset reading each JPEG with PIL and decoding its RLEs in Python,
    with Keras' default workers=1 (as the seed kernels ran it: one thread fetching ahead of the consumer);
(c') the same loader given a worker thread per core.
Rounds alternate a, b, c so that load from other processes hits them alike; the best round of each is kept.
"""

import argparse
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import tensorflow as tf  # noqa: E402
from PIL import Image  # noqa: E402

from steel_tpu import synth  # noqa: E402
from steel_tpu.constants import HEIGHT, NUM_CLASSES, WIDTH  # noqa: E402
from steel_tpu.data import example, pipeline  # noqa: E402
from steel_tpu.data.shards import MANIFEST, build_shards  # noqa: E402

TARGET_BOUND = 0.85
TARGET_SEED = 3.0
SEED_TPU_SAMPLING = dict(oversample={1: 2, 2: 4, 4: 2}, clean_keep=0.2)


def _data(cache, n):
    """(source folder, shard folder) of n synthetic images, made once under `cache`."""
    source, shards = os.path.join(cache, f"synth-{n}"), os.path.join(cache, f"shards-{n}")
    if not os.path.exists(os.path.join(source, "train.csv")):
        synth.synthesize(source, n_train=n, n_test=0, seed=0)
    if not os.path.exists(os.path.join(shards, MANIFEST)):
        build_shards(data=source, out=shards, folds=5, shard_mb=4.0, progress=False)
    return source, shards


def _images_per_s(batches, *, warmup, count):
    """Steady-state images/s of an iterator of (images, ...) batches."""
    for _ in range(warmup):
        next(batches)
    start, images = time.perf_counter(), 0
    for _ in range(count):
        images += len(next(batches)[0])
    return images / (time.perf_counter() - start)


def _bound(jpegs, batch):
    ds = tf.data.Dataset.from_tensor_slices(jpegs).repeat()
    ds = ds.map(lambda jpeg: tf.io.decode_jpeg(jpeg, channels=3), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch, drop_remainder=True).map(lambda images: (images,)).prefetch(tf.data.AUTOTUNE)


def rle_to_mask(rle, height=HEIGHT, width=WIDTH):
    """The Kaggle-kernel decoder the seed loaders used: a Python loop over runs."""
    mask = np.zeros(height * width, dtype=np.uint8)
    tokens = rle.split()
    for start, length in zip(tokens[0::2], tokens[1::2]):
        mask[int(start) - 1 : int(start) - 1 + int(length)] = 1
    return mask.reshape(width, height).T


class SeedLoader(keras.utils.PyDataset):
    """Seed-style: per batch, PIL-read each JPEG and decode each class's RLE in Python."""

    def __init__(self, source, batch, **kwargs):
        super().__init__(**kwargs)
        labels = pd.read_csv(os.path.join(source, "train.csv"))
        self.rles = {(r.ImageId, r.ClassId): r.EncodedPixels for r in labels.itertuples()}
        self.paths = sorted(os.path.join(source, "train_images", f) for f in os.listdir(os.path.join(source, "train_images")))
        self.batch = batch

    def __len__(self):
        return len(self.paths) // self.batch

    def __getitem__(self, index):
        images = np.empty((self.batch, HEIGHT, WIDTH, 3), dtype=np.uint8)
        masks = np.zeros((self.batch, HEIGHT, WIDTH, NUM_CLASSES), dtype=np.uint8)
        for i, path in enumerate(self.paths[index * self.batch : (index + 1) * self.batch]):
            images[i] = np.asarray(Image.open(path).convert("RGB"))
            image_id = os.path.basename(path)
            for c in range(NUM_CLASSES):
                rle = self.rles.get((image_id, c + 1))
                if isinstance(rle, str):
                    masks[i, :, :, c] = rle_to_mask(rle)
        return images, masks


def _seed_batches(loader):
    """Endless batches in order, loader.workers threads fetching ahead like Keras' OrderedEnqueuer."""
    pool = ThreadPoolExecutor(max_workers=loader.workers)

    def forever():
        while True:
            yield from pool.map(loader.__getitem__, range(len(loader)))

    return forever()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--batches", type=int, default=60, help="timed batches per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "steel_tpu_bench_pipeline"))
    args = parser.parse_args()
    source, shards = _data(args.cache, args.images)
    files = pipeline.shard_files(shards)
    jpegs = [example.parse_numpy(r.numpy())[example.IMAGE] for r in tf.data.TFRecordDataset(files)]
    workers = os.cpu_count()
    kwargs = dict(files=files, image_size=(HEIGHT, WIDTH), batch_size=args.batch, seed=0, shuffle_buffer=256)
    runs = {
        "a": lambda: iter(pipeline.train_dataset(**kwargs)),
        "a_sampled": lambda: iter(pipeline.train_dataset(**kwargs, **SEED_TPU_SAMPLING)),
        "b": lambda: iter(_bound(jpegs, args.batch)),
        "c": lambda: _seed_batches(SeedLoader(source, args.batch)),
        "c_threads": lambda: _seed_batches(SeedLoader(source, args.batch, workers=workers)),
    }
    # Warm-up covers the shuffle buffer fill and tf.data's autotuning; (c) has neither.
    warmup = {"a": 30, "a_sampled": 30, "b": 10, "c": 2, "c_threads": 2}
    best = dict.fromkeys(runs, 0.0)
    for _ in range(args.rounds):
        for name, make in runs.items():
            count = max(4, args.batches // 4) if name.startswith("c") else args.batches
            best[name] = max(best[name], _images_per_s(make(), warmup=warmup[name], count=count))
    print(f"{len(jpegs)} images ({sum(map(len, jpegs)) / len(jpegs) / 1e3:.0f} KB JPEGs), batch {args.batch}, "
          f"{workers} cores, full {HEIGHT}x{WIDTH}, best of {args.rounds} rounds")
    print(f"(a)  train_dataset, masks included          {best['a']:8.0f} images/s")
    print(f"(a') same, seed-TPU sampling {SEED_TPU_SAMPLING}  {best['a_sampled']:8.0f} images/s")
    print(f"(b)  bound: tf.io.decode_jpeg alone          {best['b']:8.0f} images/s")
    print(f"(c)  seed-style PyDataset (PIL + Python RLE) {best['c']:8.0f} images/s")
    print(f"(c') same, {workers} worker threads              {best['c_threads']:8.0f} images/s")
    for label, ratio, target in (("a/b", best["a"] / best["b"], TARGET_BOUND), ("a/c", best["a"] / best["c"], TARGET_SEED)):
        print(f"{label} = {ratio:.2f} (target >= {target}) {'OK' if ratio >= target else 'BELOW TARGET'}")


if __name__ == "__main__":
    main()
