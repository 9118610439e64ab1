"""Train-step and predict images/s of the same segmenter under Keras' TensorFlow and JAX backends, interleaved.

    python benchmarks/bench_backends.py [--encoder plaincnn] [--size 64x320] [--batch 8] [--steps 5] [--repeat 5]
                                        [--device cpu] [--smoke]

A process has one Keras backend, so each backend runs in a worker process of its own (this script with --worker),
started once: it builds the `tiny` preset's UNet++ at --size (random init: speed only), compiles the product's own
train step (augmentation, loss, optimizer: device/steps.py) and predict forward, then times --steps train steps and
--steps predict batches each time it is asked. Both workers are asked in turn within every repeat, so both meet the
same load from other processes; printed: each backend's images/s (median and spread) and the JAX / TensorFlow
ratios per repeat. TensorFlow compiles with XLA where the product does (not on a CPU: distribute.use_xla); JAX
always compiles.
"""

import argparse
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import timing  # noqa: E402

BACKENDS = ("tf", "jax")


def worker(args):
    """Build, compile, answer 'go' lines with one JSON line of timings until stdin closes."""
    import time

    import numpy as np

    from steel_tpu import backend

    backend.activate(args.worker)
    from steel_tpu import config, tasks
    from steel_tpu.device import distribute
    from steel_tpu.device import steps as device_steps
    from steel_tpu.keras_api import keras

    height, width = args.size
    cfg = config.apply_overrides(config.preset("tiny"), [
        f"segment.data.image_height={height}", f"segment.data.image_width={width}",
        f"segment.model.encoder={args.encoder}", "segment.model.weights=None", "segment.augment.crop_height=None",
        "segment.augment.crop_width=None"])
    device = distribute.select_strategy(prefer=args.device, verbose=False)
    spec = tasks.make("segment", cfg)
    with device.strategy.scope():
        model = spec.build_model(pretrained=False)
        optimizer = keras.optimizers.Adam(1e-3)
        optimizer.build(model.trainable_variables)
    jit = distribute.use_xla(device, None)
    train = device_steps.train_step(device=device, model=model, loss_fn=spec.loss(class_counts=[1, 1, 1, 1]),
                                    optimizer=optimizer, global_batch_size=args.batch, augment_fn=spec.augment_fn(),
                                    jit_compile=jit)
    predict = device_steps.predict_step(device=device, forward=spec.forward(model), models=[model], jit_compile=jit)
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, size=(args.batch, height, width, 1), dtype=np.uint8)
    masks = (rng.uniform(size=(args.batch, height, width, 4)) > 0.95).astype(np.uint8)
    images = np.repeat(gray, 3, axis=-1)
    batches = _batches(device, gray, masks)

    def run():
        start = time.perf_counter()
        for s in range(args.steps):
            loss = train(batches, step=s, seed=0)
        assert np.isfinite(loss)
        trained = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(args.steps):
            predict(images)
        return {"train_images_per_s": args.steps * args.batch / trained,
                "predict_images_per_s": args.steps * args.batch / (time.perf_counter() - start)}

    run()  # compiles both
    print(json.dumps({"ready": True, "device": device.kind, "jit": jit or args.worker == "jax"}), flush=True)
    for line in sys.stdin:
        if line.strip() == "go":
            print(json.dumps(run()), flush=True)


def _batches(device, gray, masks):
    """An endless iterator of the same (luma images, masks) batch, as each backend's train step reads batches."""
    if device.backend == "jax":
        import itertools

        return itertools.repeat((gray, masks))
    import tensorflow as tf

    return iter(tf.data.Dataset.from_tensors((gray, masks)).repeat())


def _start(name, args):
    env = {**os.environ, "KERAS_BACKEND": {"tf": "tensorflow", "jax": "jax"}[name], "TF_CPP_MIN_LOG_LEVEL": "2"}
    command = [sys.executable, os.path.abspath(__file__), "--worker", name, "--encoder", args.encoder, "--size",
               f"{args.size[0]}x{args.size[1]}", "--batch", str(args.batch), "--steps", str(args.steps),
               "--device", args.device]
    proc = subprocess.Popen(command, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    ready = _answer(proc, name)
    return proc, ready


def _answer(proc, name):
    for line in proc.stdout:
        if line.startswith("{"):
            return json.loads(line)
    raise SystemExit(f"bench_backends: the {name} worker stopped (exit {proc.wait()})")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", choices=BACKENDS, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--encoder", default="plaincnn")
    parser.add_argument("--size", type=lambda t: tuple(int(v) for v in t.split("x")), default=(64, 320))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--device", choices=("cpu", "gpu", "tpu"), default="cpu")
    parser.add_argument("--smoke", action="store_true", help="the tests' size: 32x160, batch 2, 1 step, 2 repeats")
    args = parser.parse_args()
    if args.smoke:
        args.size, args.batch, args.steps, args.repeat = (32, 160), 2, 1, 2
    if args.worker:
        return worker(args)
    workers = {name: _start(name, args) for name in BACKENDS}
    where = ", ".join(f"{name}: {ready['device']} (XLA {ready['jit']})" for name, (_, ready) in workers.items())
    print(f"bench_backends: {args.encoder} UNet++ at {args.size[0]}x{args.size[1]}, batch {args.batch}, "
          f"{args.steps} steps a repeat, on {where}  [{timing.load()}]")
    times = {name: [] for name in BACKENDS}
    for _ in range(args.repeat):
        for name, (proc, _) in workers.items():
            proc.stdin.write("go\n")
            proc.stdin.flush()
            times[name].append(_answer(proc, name))
    for proc, _ in workers.values():
        proc.stdin.close()
        proc.wait()
    medians = {}
    for what in ("train_images_per_s", "predict_images_per_s"):
        for name in BACKENDS:
            median, lo, hi = timing.spread([t[what] for t in times[name]])
            medians.setdefault(what, {})[name] = round(median, 2)
            print(f"{what} {name}: {median:.2f} ({lo:.2f}..{hi:.2f} over {args.repeat})")
        ratios = [j[what] / t[what] for j, t in zip(times["jax"], times["tf"])]
        print(timing.ratio_line(f"{what} jax/tf", ratios))
    print(json.dumps({"backends": medians, "devices": {n: r["device"] for n, (_, r) in workers.items()}}))


if __name__ == "__main__":
    main()
