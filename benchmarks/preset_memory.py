"""The device memory one train step of a preset needs per chip, from XLA's own analysis of the compiled JAX step,
beside the HBM of the chips people get (Colab's v5e-1, Kaggle's v5e-8 / v6e-8).

    python benchmarks/preset_memory.py [--presets colab-tpu,full] [--smoke]

For each preset and task: the model built with random weights (memory does not depend on their values), bfloat16
as on a TPU, the product's own train step (augmentation, loss, Adam: device/steps.py) compiled by XLA for the
per-replica batch of host images the preset feeds, and `compiled.memory_analysis()`: arguments (weights, optimizer
slots, the batch), outputs and temporaries (activations kept for the backward pass), less what the outputs reuse
of the donated arguments. Compiled for this machine's CPU: XLA's TPU compiler lays memory out differently (padding
to its tiles, its own fusion), so a TPU's figure differs; what this bounds is the size of the problem, not the exact
HBM. Run under KERAS_BACKEND=jax (it sets it when unset).
"""

import argparse
import json
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "jax")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# HBM per chip (Google Cloud TPU documentation: v5e 16 GiB, v6e 32 GiB).
CHIPS = {"v5e": 16, "v6e": 32}
GIB = 1 << 30


def measure(name, task, *, overrides):
    import numpy as np

    from steel_tpu import backend, config, tasks
    from steel_tpu.config import resolve
    from steel_tpu.device import distribute
    from steel_tpu.device import steps as device_steps
    from steel_tpu.keras_api import keras

    backend.activate("jax")
    cfg = config.apply_overrides(config.preset(name), [
        f"{task}.model.weights=None", f"{task}.model.allow_random_weights=True", *overrides])
    device = distribute.select_strategy(prefer="cpu", verbose=False)
    distribute.set_precision("tpu")  # bfloat16 compute, float32 weights: what the preset runs on a TPU
    resolved = resolve.resolve_for(cfg, replicas=1)
    spec = tasks.make(task, resolved)
    data = spec.config.data
    model = spec.build_model(pretrained=False)
    optimizer = keras.optimizers.Adam(1e-3)
    optimizer.build(model.trainable_variables)
    step = device_steps.train_step(device=device, model=model, loss_fn=spec.loss(class_counts=[1, 1, 1, 1]),
                                   optimizer=optimizer, global_batch_size=data.batch_size,
                                   augment_fn=spec.augment_fn())
    images = np.zeros((data.batch_size, data.image_height, data.image_width, 1), np.uint8)
    masks = np.zeros((data.batch_size, data.image_height, data.image_width, 4), np.uint8)
    analysis = step.memory(images, masks)
    keras.backend.clear_session()
    total = (analysis.argument_size_in_bytes + analysis.output_size_in_bytes + analysis.temp_size_in_bytes
             - analysis.alias_size_in_bytes)
    return {"preset": name, "task": task, "batch_per_chip": data.batch_size,
            "input": f"{data.image_height}x{data.image_width}", "arguments_gib": analysis.argument_size_in_bytes / GIB,
            "temporaries_gib": analysis.temp_size_in_bytes / GIB, "total_gib": total / GIB,
            **{f"share_of_{chip}": total / (hbm * GIB) for chip, hbm in CHIPS.items()}}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="colab-tpu")
    parser.add_argument("--smoke", action="store_true", help="the tests' size: the tiny preset at 64x320")
    args = parser.parse_args()
    names, overrides = args.presets.split(","), []
    if args.smoke:
        names, overrides = ["tiny"], []
    rows = [measure(name, task, overrides=overrides) for name in names for task in ("segment", "classify")]
    for row in rows:
        print(f"{row['preset']} {row['task']}: {row['batch_per_chip']} images of {row['input']} per chip: "
              f"{row['total_gib']:.2f} GiB (arguments {row['arguments_gib']:.2f}, temporaries "
              f"{row['temporaries_gib']:.2f}); " + ", ".join(f"{row[f'share_of_{c}']:.0%} of a {c} chip's {h} GiB"
                                                             for c, h in CHIPS.items()))
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
