"""Shard building vs a plain copy of the same JPEGs (the I/O bound), one process: python benchmarks/bench_shards.py"""

import argparse
import os
import shutil
import tempfile
import time

from steel_tpu import storage, synth
from steel_tpu.data.shards import build_shards
from steel_tpu.data.source import TRAIN_IMAGES

TARGET = 0.5


def _source(cache, n):
    """The synthetic set, generated once into `cache` (rendering 1,000 images takes about a minute)."""
    data = os.path.join(cache, f"synth-{n}")
    if not os.path.exists(os.path.join(data, "train.csv")):
        synth.synthesize(data, n_train=n, n_test=0, seed=0)
    return data


def _copy(images, dst):
    os.makedirs(dst)
    for path in images:
        shutil.copyfile(path, os.path.join(dst, os.path.basename(path)))


def _best(runs, fn):
    """Best wall time of `runs` calls, each into a fresh temp dir (the first run also warms the page cache)."""
    times = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory(prefix="bench-shards-") as tmp:
            start = time.perf_counter()
            fn(os.path.join(tmp, "out"))
            times.append(time.perf_counter() - start)
    return min(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "steel_tpu_bench"))
    args = parser.parse_args()
    data = _source(args.cache, args.images)
    folder = os.path.join(data, TRAIN_IMAGES)
    images = sorted(os.path.join(folder, n) for n in storage.list_files(folder) if n.endswith(".jpg"))
    mb = sum(os.path.getsize(p) for p in images) / 1e6
    copy_s = _best(args.runs, lambda out: _copy(images, out))
    shard_s = _best(args.runs, lambda out: build_shards(data=data, out=out, progress=False))
    copy_rate, shard_rate = len(images) / copy_s, len(images) / shard_s
    ratio = shard_rate / copy_rate
    print(f"{len(images)} images, {mb:.0f} MB, {os.cpu_count()} cores, best of {args.runs}")
    print(f"copy (shutil.copyfile each) {copy_rate:8.0f} images/s")
    print(f"build_shards (5 folds)      {shard_rate:8.0f} images/s")
    print(f"ratio shards/copy {ratio:.2f} (target >= {TARGET}) {'OK' if ratio >= TARGET else 'BELOW TARGET'}")


if __name__ == "__main__":
    main()
