"""Accelerator proof: colab-tpu segmenter training and predict images/s, 256x1600 input, mixed precision.

    python benchmarks/gpu_proof.py [--batch 32] [--predict-batch 16] [--steps 20] [--backends] [--out proof.json]
    python benchmarks/gpu_proof.py --smoke     # tiny sizes: runs on a CPU in seconds (the test runs this)

--backends adds the same segmenter's train and predict images/s under Keras' TensorFlow and JAX backends, through
the product's own steps (benchmarks/bench_backends.py, one worker process per backend), under "backends".

Runs on whatever select_strategy finds (GPU: mixed_float16 with loss scaling; TPU: mixed_bfloat16; CPU: float32).
Images are random uint8 made on the device, so the figures are the model's step rate, not the input pipeline's.
Weights are random (ImageNet weights change no step's cost). Prints one JSON object with the figures and versions.
"""

import argparse
import json
import os
import subprocess
import sys
import time

import tensorflow as tf

from steel_tpu import config, keras_api

from steel_tpu.device import distribute
from steel_tpu.keras_api import keras
from steel_tpu.models import build_segmenter

FULL = (256, 1600)
CROP = (256, 512)
SMOKE = {"full": (64, 320), "crop": (64, 128), "batch": 2, "predict_batch": 2, "steps": 2, "warmup": 1}


def _segmenter(cfg, shape):
    m = cfg.segment.model
    return build_segmenter(arch=m.arch, encoder=m.encoder, input_shape=(*shape, 3),
                           decoder_filters=m.decoder_filters, weights=None)


def _per_replica_images(strategy, batch, shape, seed):
    per_replica = batch // strategy.num_replicas_in_sync

    def make(context):
        gen = tf.random.stateless_uniform((per_replica, *shape, 3), seed=(seed, context.replica_id_in_sync_group),
                                          maxval=256, dtype=tf.int32)
        return tf.cast(gen, tf.uint8)

    return strategy.experimental_distribute_values_from_function(make)


def _rate(fn, args, *, steps, warmup, images_per_step):
    for _ in range(warmup):  # the first call builds and compiles the graph
        fn(*args)
    start = time.perf_counter()
    for _ in range(steps):
        out = fn(*args)
    float(out)  # wait for the device
    return images_per_step * steps / (time.perf_counter() - start)


def measure(*, full, crop, batch, predict_batch, steps, warmup, prefer=None):
    device = distribute.select_strategy(prefer=prefer, verbose=False)
    strategy = device.strategy
    distribute.per_replica_batch_size(device, batch)
    distribute.per_replica_batch_size(device, predict_batch)
    precision = distribute.set_precision(device.kind, gpu_float16=True)  # mixed precision wherever it pays
    cfg = config.preset("colab-tpu")
    with strategy.scope():
        model = _segmenter(cfg, crop)
        full_model = _segmenter(cfg, full)
        optimizer = distribute.wrap_optimizer(keras.optimizers.Adam(1e-4), precision)
    bce = keras.losses.BinaryCrossentropy(reduction="none")
    jit = distribute.use_xla(device)

    def train_replica(images):
        # Crops are taken on the device, as in training: one random window per batch of full-width images.
        offset = tf.random.uniform((), 0, full[1] - crop[1] + 1, dtype=tf.int32)
        x = tf.cast(images[:, :, offset:offset + crop[1]], tf.float32)
        target = tf.cast(x[..., :1] > 127.0, tf.float32) * tf.ones((1, 1, 1, 4))
        with tf.GradientTape() as tape:
            pred = model(x, training=True)
            loss = tf.reduce_mean(bce(target, pred)) / strategy.num_replicas_in_sync
            scaled = keras_api.scale_loss(optimizer, loss)
        grads = keras_api.unscale_gradients(optimizer, tape.gradient(scaled, model.trainable_variables))
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    def predict_replica(images):
        return tf.reduce_mean(full_model(tf.cast(images, tf.float32), training=False))

    @tf.function(jit_compile=jit)
    def train_step(images):
        return strategy.reduce("SUM", strategy.run(train_replica, args=(images,)), axis=None)

    @tf.function(jit_compile=jit)
    def predict_step(images):
        return strategy.reduce("SUM", strategy.run(predict_replica, args=(images,)), axis=None)

    train_images = _per_replica_images(strategy, batch, full, seed=1)
    predict_images = _per_replica_images(strategy, predict_batch, full, seed=2)
    return {
        **distribute.describe(device),
        "precision": precision,
        "input": f"{full[0]}x{full[1]}", "crop": f"{crop[0]}x{crop[1]}", "batch": batch,
        "predict_batch": predict_batch, "steps": steps, "xla": jit,
        "model": f"{cfg.segment.model.encoder} {cfg.segment.model.arch} (colab-tpu segmenter)",
        "train_images_per_s": round(_rate(train_step, (train_images,), steps=steps, warmup=warmup,
                                          images_per_step=batch), 2),
        "predict_images_per_s": round(_rate(predict_step, (predict_images,), steps=steps, warmup=warmup,
                                            images_per_step=predict_batch), 2),
    }


def backends(*, device, size, batch, steps, smoke):
    """{"train_images_per_s": {"tf": .., "jax": ..}, "predict_images_per_s": {..}} from bench_backends.py, or
    {"error": why} (e.g. a GPU host whose JAX is the CPU build: the lock's)."""
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench_backends.py")
    command = [sys.executable, script, "--device", device, "--repeat", "3"]
    command += ["--smoke"] if smoke else ["--encoder", "efficientnetb0", "--size", f"{size[0]}x{size[1]}",
                                          "--batch", str(batch), "--steps", str(steps)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        return {"error": (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])["backends"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes that run on a CPU in seconds")
    parser.add_argument("--batch", type=int, default=32, help="global training batch (crops)")
    parser.add_argument("--predict-batch", type=int, default=16, help="global predict batch (full resolution)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--prefer", choices=distribute.PREFER, default=None, help="force a device kind")
    parser.add_argument("--backends", action="store_true", help="also both Keras backends' images/s (see above)")
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args(argv)
    sizes = dict(SMOKE) if args.smoke else {"full": FULL, "crop": CROP, "batch": args.batch,
                                            "predict_batch": args.predict_batch, "steps": args.steps,
                                            "warmup": args.warmup}
    result = measure(**sizes, prefer=args.prefer)
    if args.backends:
        # Full 256x1600 images (no crops: bench_backends trains on what it feeds), the predict batch.
        result["backends"] = backends(device=result["device"], size=sizes["full"], batch=sizes["predict_batch"],
                                      steps=sizes["steps"], smoke=args.smoke)
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return result


if __name__ == "__main__":
    main()
