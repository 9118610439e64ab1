"""Training input pipeline vs the bare JPEG-decode bound and a seed-style Keras loader, same shards, same process.

    python benchmarks/bench_pipeline.py [--smoke]     # 512 synthetic images, cached under /tmp

(a) steel_tpu.data.pipeline.train_dataset at full 256x1600, masks included, steady state (shuffle buffer full):
    uint8 luma planes, what the train step takes (it makes the encoders' 3 channels on the device);
(b) the bound: tf.io.decode_jpeg (channels=3) in a tf.data map over the same JPEG bytes held in memory, batched;
(c) a seed-style loader: a keras.utils.PyDataset reading each JPEG with PIL and decoding its RLEs in Python into
    float32 batches, with Keras' default workers=1 (as the seed kernels ran it: one thread fetching ahead);
(c') the same loader given a worker thread per core.
Each round runs every loader once, seconds apart; ratios are taken within a round (same load from other
processes) and their median and spread over rounds are printed, in images/s and in process CPU time per image.
"""

import argparse
import collections
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

import timing  # noqa: E402
from steel_tpu.data import synth  # noqa: E402
from steel_tpu.constants import HEIGHT, NUM_CLASSES, WIDTH  # noqa: E402
from steel_tpu.data import example, pipeline  # noqa: E402
from steel_tpu.data.manifest import MANIFEST  # noqa: E402
from steel_tpu.data.shard_folder import ShardFolder  # noqa: E402
from steel_tpu.data.shards import build_shards  # noqa: E402

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


def _measure(batches, *, warmup, count):
    """(images/s, process CPU ms per image) of an iterator of (images, ...) batches in steady state.

    CPU time per image is the steadier figure on a shared machine: other processes slow the clock, not it.
    """
    for _ in range(warmup):
        next(batches)
    start, cpu, images = time.perf_counter(), time.process_time(), 0
    for _ in range(count):
        images += len(next(batches)[0])
    return images / (time.perf_counter() - start), (time.process_time() - cpu) * 1e3 / images


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
    """Seed-style: per batch, PIL-read each JPEG and decode each class's RLE in Python, yielding what the seed
    generators fed Keras: float32 images scaled to 0..1 and float32 masks (labels looked up in a dict, not the
    per-image DataFrame filter some kernels used)."""

    def __init__(self, source, batch, **kwargs):
        super().__init__(**kwargs)
        labels = pd.read_csv(os.path.join(source, "train.csv"))
        self.rles = {(r.ImageId, r.ClassId): r.EncodedPixels for r in labels.itertuples()}
        folder = os.path.join(source, "train_images")
        self.paths = sorted(os.path.join(folder, f) for f in os.listdir(folder))
        self.batch = batch

    def __len__(self):
        return len(self.paths) // self.batch

    def __getitem__(self, index):
        images = np.empty((self.batch, HEIGHT, WIDTH, 3), dtype=np.float32)
        masks = np.zeros((self.batch, HEIGHT, WIDTH, NUM_CLASSES), dtype=np.float32)
        for i, path in enumerate(self.paths[index * self.batch : (index + 1) * self.batch]):
            images[i] = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0
            image_id = os.path.basename(path)
            for c in range(NUM_CLASSES):
                rle = self.rles.get((image_id, c + 1))
                if isinstance(rle, str):
                    masks[i, :, :, c] = rle_to_mask(rle)
        return images, masks


def _seed_batches(loader, *, queue=10):
    """Endless batches in order, fetched by loader.workers threads at most `queue` batches ahead (Keras'
    OrderedEnqueuer and its default max_queue_size); closing the generator stops the workers."""
    pool = ThreadPoolExecutor(max_workers=loader.workers)
    pending, index = collections.deque(), 0
    try:
        while True:
            while len(pending) < queue:
                pending.append(pool.submit(loader.__getitem__, index % len(loader)))
                index += 1
            yield pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()
        pool.shutdown(wait=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--batches", type=int, default=60, help="timed batches per measurement")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "steel_tpu_bench_pipeline"))
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: proves the benchmark runs (tests use it)")
    args = parser.parse_args(argv)
    warmup = {"a": 30, "a_sampled": 30, "b": 10, "c": 2, "c_threads": 2}
    shuffle_buffer = 256
    if args.smoke:
        args.images, args.batch, args.batches, args.rounds = 24, 4, 2, 1
        warmup, shuffle_buffer = {name: 1 for name in warmup}, 8
    source, shards = _data(args.cache, args.images)
    files = ShardFolder.open(shards).check().files()
    jpegs = [example.parse_numpy(r.numpy())[example.IMAGE] for r in tf.data.TFRecordDataset(files)]
    workers = os.cpu_count()
    kwargs = dict(files=files, image_size=(HEIGHT, WIDTH), batch_size=args.batch, seed=0, shuffle_buffer=shuffle_buffer)
    runs = {
        "a": lambda: iter(pipeline.train_dataset(**kwargs)),
        "a_sampled": lambda: iter(pipeline.train_dataset(**kwargs, **SEED_TPU_SAMPLING)),
        "b": lambda: iter(_bound(jpegs, args.batch)),
        "c": lambda: _seed_batches(SeedLoader(source, args.batch)),
        "c_threads": lambda: _seed_batches(SeedLoader(source, args.batch, workers=workers)),
    }
    load = os.getloadavg()[0]
    rates, cpu = _rounds(runs, rounds=args.rounds, batches=args.batches, warmup=warmup)
    print(f"{len(jpegs)} images ({sum(map(len, jpegs)) / len(jpegs) / 1e3:.0f} KB JPEGs), batch {args.batch}, "
          f"{workers} cores (load average {load:.1f} before, {os.getloadavg()[0]:.1f} after), "
          f"full {HEIGHT}x{WIDTH}; medians of {args.rounds} rounds")
    labels = {
        "a": "(a)  train_dataset, masks included",
        "a_sampled": "(a') same, oversample {1: 2, 2: 4, 4: 2}, clean_keep 0.2",
        "b": "(b)  bound: tf.io.decode_jpeg(channels=3) alone",
        "c": "(c)  seed-style PyDataset (PIL + Python RLE)",
        "c_threads": f"(c') same, {workers} worker threads",
    }
    for name, label in labels.items():
        print(f"{label:56s} {np.median(rates[name]):7.0f} images/s  {np.median(cpu[name]):6.2f} CPU ms/image")
    for label, x, y, target in (("a/b", "a", "b", TARGET_BOUND), ("a/c", "a", "c", TARGET_SEED),
                                ("a/c'", "a", "c_threads", None)):
        # Ratios within a round (measured seconds apart, under the same load from other processes), then the median.
        print(timing.ratio_line(f"{label} images/s", list(np.divide(rates[x], rates[y])), target=target))
        print(timing.ratio_line(f"{label} CPU-time", list(np.divide(cpu[y], cpu[x]))))


def _rounds(runs, *, rounds, batches, warmup):
    """{name: [images/s per round]}, {name: [CPU ms per image per round]}; each round runs every loader once.

    `warmup` batches per loader cover the shuffle buffer fill and tf.data's autotuning; (c) has neither.
    """
    rates, cpu = {name: [] for name in runs}, {name: [] for name in runs}
    for _ in range(rounds):
        for name, make in runs.items():
            count = max(min(4, batches), batches // 4) if name.startswith("c") else batches
            rate, ms = _measure(make(), warmup=warmup[name], count=count)
            rates[name].append(rate)
            cpu[name].append(ms)
    return rates, cpu


if __name__ == "__main__":
    main()
