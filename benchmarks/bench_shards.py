"""Shard building vs an honest I/O bound on the same JPEGs, interleaved: python benchmarks/bench_shards.py [--smoke]

The bound reads every JPEG into memory, SHA-256s it and writes it into one file per thread, with as many threads
as build_shards uses: the least any shard builder does (it must see, checksum and write every byte). A plain
`shutil.copyfile` is no bound: on Linux it copies inside the kernel (copy_file_range) from the page cache, and
no byte reaches the process; it is printed for reference only.
"""

import argparse
import hashlib
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import timing

from steel_tpu import storage
from steel_tpu.data import synth
from steel_tpu.data.shards import build_shards
from steel_tpu.data.source import TRAIN_IMAGES

TARGET = 0.5


def _source(cache, n):
    """The synthetic set, generated once into `cache` (rendering 1,000 images takes about a minute)."""
    data = os.path.join(cache, f"synth-{n}")
    if not os.path.exists(os.path.join(data, "train.csv")):
        synth.synthesize(data, n_train=n, n_test=0, seed=0)
    return data


def _kernel_copy(images, dst):
    os.makedirs(dst)
    for path in images:
        shutil.copyfile(path, os.path.join(dst, os.path.basename(path)))


def _read_hash_write(images, dst, *, workers):
    """Each of `workers` threads reads its share of the JPEGs, hashes and appends them to its own file."""
    os.makedirs(dst)

    def one(k):
        digest = hashlib.sha256()
        with open(os.path.join(dst, f"part-{k}"), "wb") as out:
            for path in images[k::workers]:
                with open(path, "rb") as f:
                    data = f.read()
                digest.update(data)
                out.write(data)
        return digest.hexdigest()

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(one, range(workers)))


def _in_fresh_dir(fn):
    def run():
        with tempfile.TemporaryDirectory(prefix="bench-shards-") as tmp:
            fn(os.path.join(tmp, "out"))

    return run


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "steel_tpu_bench"))
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: proves the benchmark runs (tests use it)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.images, args.repeat = 24, 2
    data = _source(args.cache, args.images)
    folder = os.path.join(data, TRAIN_IMAGES)
    images = sorted(os.path.join(folder, n) for n in storage.list_files(folder) if n.endswith(".jpg"))
    mb = sum(os.path.getsize(p) for p in images) / 1e6
    workers = os.cpu_count()
    # All three read the same files, which the first (untimed) repeat brings into the page cache for all alike.
    times = timing.interleaved({
        "kernel_copy": _in_fresh_dir(lambda out: _kernel_copy(images, out)),
        "bound": _in_fresh_dir(lambda out: _read_hash_write(images, out, workers=workers)),
        "shards": _in_fresh_dir(lambda out: build_shards(data=data, out=out, progress=False)),
    }, repeats=args.repeat, warmup=1)
    rate = {k: len(images) / np.median(v) for k, v in times.items()}
    print(f"{len(images)} images, {mb:.0f} MB, {workers} cores, median of {args.repeat} interleaved repeats "
          f"[{timing.load()}]")
    print(f"shutil.copyfile each (in-kernel copy, reference only) {rate['kernel_copy']:8.0f} images/s")
    print(f"bound: read + SHA-256 + write, {workers} threads          {rate['bound']:8.0f} images/s")
    print(f"build_shards (5 folds, {workers} threads)                  {rate['shards']:8.0f} images/s")
    print(timing.ratio_line("shards/read_hash_write", timing.speedups(times, baseline="bound", contender="shards"),
                            target=TARGET))


if __name__ == "__main__":
    main()
