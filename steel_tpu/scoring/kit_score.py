"""Score a folder of test JPEGs into a Kaggle submission with this kit, offline (written by `steel-tpu export`).

    python score.py --images ../input/severstal-steel-defect-detection/test_images --out submission.csv

Needs only what a Kaggle image has (TensorFlow, numpy, PIL, fsspec...) and this folder: steel_tpu comes from the
wheel beside this file, installed (`pip install --no-index --no-deps *.whl`) or, when it is not, imported from the
wheel itself. No network. Runs on the GPU when there is one, else the CPU (--device chooses); on a TPU runtime
(Kaggle's v5e-8 / v6e-8) through JAX, which --backend auto chooses there.
"""

import argparse
import os
import sys

KIT = os.path.dirname(os.path.abspath(__file__))
WHEEL = "{{WHEEL}}"
VERSION = "{{VERSION}}"


def use_kit_package():
    """Where steel_tpu comes from: 'installed' when the kit's version is installed, else 'wheel' (imported from it)."""
    try:
        import steel_tpu

        if steel_tpu.__version__ == VERSION:
            return "installed"
    except ImportError:
        pass
    for name in [m for m in sys.modules if m == "steel_tpu" or m.startswith("steel_tpu.")]:
        del sys.modules[name]
    sys.path.insert(0, os.path.join(KIT, WHEEL))  # a pure-Python wheel is a zip Python imports from
    return "wheel"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", required=True, help="a folder of test JPEGs (or of test shards)")
    parser.add_argument("--out", default="submission.csv", help="the submission CSV to write")
    parser.add_argument("--device", choices=("auto", "gpu", "cpu", "tpu"), default="auto",
                        help="auto: the GPU when there is one, else the CPU")
    parser.add_argument("--backend", choices=("auto", "tf", "jax"), default="auto",
                        help="the Keras backend: auto chooses JAX on a TPU runtime (or as KERAS_BACKEND says), else "
                             "TensorFlow")
    parser.add_argument("--batch-size", type=int, default=None, help="global batch (default: the training one)")
    parser.add_argument("--tta", action="store_true", help="average over horizontal and vertical flips")
    parser.add_argument("--skip-bad", action="store_true", help="score unreadable images empty, listed beside OUT")
    args = parser.parse_args(argv)
    source = use_kit_package()
    from steel_tpu import cli

    print(f"score.py: steel_tpu {VERSION} ({source}) from {KIT}")
    command = ["predict", "--workdir", KIT, "--images", args.images, "--out", args.out, "--device", args.device,
               "--backend", args.backend]
    command += ["--batch-size", str(args.batch_size)] if args.batch_size else []
    command += ["--tta"] * args.tta + ["--skip-bad"] * args.skip_bad
    return cli.main(command)


if __name__ == "__main__":
    sys.exit(main())
