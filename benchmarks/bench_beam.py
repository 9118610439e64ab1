"""Images/s of `steel-tpu predict --runner DirectRunner` (Beam) against single-machine `predict`, same models and
images, one process; and, on paper, the Beam workers needed for 1 million images an hour at the measured cost.

    .venv/bin/python benchmarks/bench_beam.py [--images 96] [--size 64x320] [--data /tmp/steel_bench_beam] [--smoke]

Models: bench_predict.py's two random-init B0 UNet++ folds (mask biases set for ~5% defects), no gate.
The local Beam runner is expected to be slower: it runs the same model code plus Beam's bundling, pickling and a
global sort, on the same cores. Its point is scale: the same pipeline on Dataflow spreads images over workers.
The two submissions are compared byte for byte. The paper estimate divides 1e6 / 3600 images/s by what one
4-vCPU worker does at the Beam path's measured CPU ms/image (model load and tracing included: pessimistic).
"""

import argparse
import math
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench_predict import scoring_inputs  # noqa: E402  (benchmarks/ is this script's own folder)

from steel_tpu import postprocess  # noqa: E402
from steel_tpu.scoring import predict  # noqa: E402
from steel_tpu.beam import predict as beam_predict  # noqa: E402

TARGET_PER_HOUR = 1_000_000
WORKER_VCPUS = 4  # e.g. n2-standard-4, Dataflow's common batch worker size


def _timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--size", default="64x320", help="model input HxW (multiples of 32)")
    parser.add_argument("--data", default="/tmp/steel_bench_beam")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--smoke", action="store_true", help="8 images in a temporary folder: the test's size")
    args = parser.parse_args(argv)
    if args.smoke:
        args.images, args.data = 8, tempfile.mkdtemp(prefix="bench_beam_")
    size = tuple(int(v) for v in args.size.split("x"))
    images, paths, work = scoring_inputs(args.data, n_images=args.images, size=size)
    n, pp = len(paths), postprocess.PostProcess()  # no gate: the classifier only gates
    single_csv, beam_csv = os.path.join(args.data, "single.csv"), os.path.join(args.data, "beam.csv")

    single, single_cpu = _timed(lambda: predict.predict(workdir=work, images=images, out=single_csv, thresholds=pp,
                                                        batch_size=args.batch_size, progress=False))
    beam, beam_cpu = _timed(lambda: beam_predict.predict(
        workdir=work, images=images, out=beam_csv, thresholds=pp, batch_size=args.batch_size,
        runner="DirectRunner", pipeline_flags=["--direct_num_workers=1"]))
    with open(single_csv, "rb") as a, open(beam_csv, "rb") as b:
        identical = a.read() == b.read()

    per_worker = WORKER_VCPUS * n / beam_cpu  # images/s of one worker if the Beam path scales over its vCPUs
    need = TARGET_PER_HOUR / 3600
    print(f"\n{n} images, model input {size[0]}x{size[1]}, 2 B0 UNet++ folds (no gate), batch "
          f"{args.batch_size}, {os.cpu_count()} CPU cores (end to end: model load, tracing, scoring, CSV)")
    print(f"  predict (single machine)    {single:7.1f} s  {n / single:6.2f} images/s  "
          f"{1000 * single_cpu / n:6.0f} CPU ms/image")
    print(f"  predict --runner DirectRunner {beam:5.1f} s  {n / beam:6.2f} images/s  "
          f"{1000 * beam_cpu / n:6.0f} CPU ms/image")
    print(f"  ratio Beam local / single machine: {single / beam:.2f}x images/s")
    print(f"  submissions byte-identical: {identical}")
    print(f"paper estimate: {TARGET_PER_HOUR:,} images/hour = {need:.0f} images/s; one {WORKER_VCPUS}-vCPU CPU worker "
          f"at {1000 * beam_cpu / n:.0f} CPU ms/image ~ {per_worker:.1f} images/s -> "
          f"~{math.ceil(need / per_worker)} workers (CPU, this model size)")
    if args.smoke:
        shutil.rmtree(args.data, ignore_errors=True)
    if not identical:
        sys.exit("the Beam submission differs from the single-machine one")


if __name__ == "__main__":
    main()
