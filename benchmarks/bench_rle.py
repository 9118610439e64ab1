"""RLE codec vs the seed code on the same Severstal-like masks, interleaved: python benchmarks/bench_rle.py [--smoke]"""

import argparse
import os

import numpy as np
import timing

from steel_tpu.constants import HEIGHT, WIDTH
from steel_tpu.formats import rle

CLASSES = 4


def severstal_like(count, rng):
    """[count, H, W] uint8 masks: 0-5 coarse elliptic blobs each (a third of the masks empty), like train.csv."""
    rows, cols = np.ogrid[:HEIGHT, :WIDTH]
    masks = np.zeros((count, HEIGHT, WIDTH), np.uint8)
    for mask in masks:
        for _ in range(rng.choice(6, p=[0.35, 0.25, 0.15, 0.1, 0.1, 0.05])):
            cy, cx = rng.uniform(0, HEIGHT), rng.uniform(0, WIDTH)
            ry, rx = rng.uniform(4, 130), rng.uniform(4, 300)
            # A wobbly rim, as hand-drawn polygons have.
            wobble = 1 + 0.15 * np.sin(cols / rng.uniform(5, 40) + rng.uniform(0, 6))
            mask[((rows - cy) / ry) ** 2 + ((cols - cx) / rx) ** 2 < wobble] = 1
    return masks


def seed_decode(text):
    tokens = text.split()
    starts, lengths = np.asarray(tokens[0::2], dtype=int), np.asarray(tokens[1::2], dtype=int)
    flat = np.zeros(HEIGHT * WIDTH, dtype=np.uint8)
    for s, l in zip(starts, lengths):
        flat[s - 1 : s - 1 + l] = 1
    return flat.reshape(WIDTH, HEIGHT).T


def seed_encode(mask):
    pixels = mask.T.flatten()
    pixels = np.concatenate([[0], pixels, [0]])
    runs = np.where(pixels[1:] != pixels[:-1])[0] + 1
    runs[1::2] -= runs[::2]
    return " ".join(str(x) for x in runs)


def streamed(fn, items):
    """A pass calling fn on each item and dropping the result, as a streaming caller does."""

    def run():
        for item in items:
            fn(item)

    return run


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--masks", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: proves the benchmark runs (tests use it)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.masks, args.repeat = 16, 2
    rng = np.random.default_rng(args.seed)
    masks = severstal_like(args.masks // CLASSES * CLASSES, rng)
    texts = [seed_encode(m) for m in masks]
    assert [rle.encode(m) for m in masks] == texts
    assert all(np.array_equal(rle.decode(t), m) for t, m in zip(texts, masks))
    # The model's output layout: [N, H, W, C], contiguous.
    images = np.ascontiguousarray(masks.reshape(-1, CLASSES, HEIGHT, WIDTH).transpose(0, 2, 3, 1))
    batches = [images[i : i + 16] for i in range(0, len(images), 16)]
    per_image = [[seed_encode(m[..., k]) for k in range(CLASSES)] for m in images]
    assert sum((rle.encode_batch(b) for b in batches), []) == per_image

    runs = np.mean([len(t.split()) // 2 for t in texts])
    empty = np.mean([not t for t in texts])
    print(
        f"{len(masks)} Severstal-like {HEIGHT}x{WIDTH} masks ({empty:.0%} empty, {runs:.0f} runs on average), "
        f"{os.cpu_count()} cores, {args.repeat} interleaved repeats; rates are medians in masks/s  [{timing.load()}]"
    )
    rows = [
        ("decode/seed_loop", streamed(seed_decode, texts), streamed(rle.decode, texts)),
        ("encode/seed", streamed(seed_encode, masks), streamed(rle.encode, masks)),
        ("encode_batch[16,H,W,4]/seed_each",
         streamed(lambda m: [seed_encode(m[..., k]) for k in range(CLASSES)], images),
         streamed(rle.encode_batch, batches)),
    ]
    for name, reference, project in rows:
        times = timing.interleaved({"seed": reference, "project": project}, repeats=args.repeat, warmup=1)
        rates = {k: len(masks) / np.median(v) for k, v in times.items()}
        print(f"{name:34s} seed {rates['seed']:7.0f}  project {rates['project']:7.0f}")
        print(timing.ratio_line(name, timing.speedups(times, baseline="seed", contender="project")))


if __name__ == "__main__":
    main()
