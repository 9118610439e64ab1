"""Batch scoring on Beam: list a JPEG folder, check and decode each image, run the ensemble (the fold models of one
or several workdirs) with RunInference, then the single-machine post-processing, RLE and CSV layout
(steel_tpu.predict, steel_tpu.submission_writer).

The submission is written once, sorted by image id, so it is byte-identical to `steel-tpu predict` on the same
images; bad images follow the same rules (an error naming every one, or with --skip-bad empty rows plus
OUT.errors.csv).
"""

import time

import apache_beam as beam
import numpy as np
from apache_beam.ml.inference.base import KeyedModelHandler, ModelHandler, RunInference

from steel_tpu import distribute, ensemble, members, resolve, step, storage
from steel_tpu.beam.options import pipeline_options
from steel_tpu.data import decode, source
from steel_tpu.kaggle import EMPTY
from steel_tpu.predict import scoring_plan, submitted_rles, write_errors
from steel_tpu.submission_writer import HEADER, claim, rows_text

_METRICS = "steel_tpu.predict"


class EnsembleHandler(ModelHandler):
    """Decoded luma planes -> the ensemble's full-resolution masks, areas (and gate probabilities) per image: the
    fold models of one workdir, or of several (members.plan), averaged.

    The model is the single-machine predict step (ensemble.make_forward under the worker's strategy); batches are
    padded to `batch_size` as the single-machine input pipeline pads them, so each worker compiles one shape.
    """

    def __init__(self, *, workdirs, folds, pp, tta, batch_size, image_size, jit_compile):
        super().__init__()
        self.workdirs, self.folds, self.pp, self.tta = workdirs, folds, pp, tta
        self.batch_size, self.image_size = batch_size, image_size
        self.jit_compile = jit_compile

    def load_model(self):
        device = distribute.select_strategy(verbose=False)
        # The worker plans again: a Member holds open workdirs, which are not shipped to it.
        planned = members.plan(self.workdirs, folds=self.folds, tasks=self.pp.tasks)
        distribute.set_precision(device.kind, gpu_float16=all(m.config.gpu_float16 for m in planned))
        distribute.per_replica_batch_size(device, self.batch_size)
        ens = ensemble.build(planned, strategy=device.strategy)
        # The single-machine forward with the whole PostProcess: soft gate and double threshold act on the device.
        forward = ensemble.make_forward(ens, pp=self.pp, tta=self.tta)
        return step.make_predict_step(forward=forward, strategy=device.strategy,
                                      jit_compile=distribute.use_xla(device, self.jit_compile))

    def run_inference(self, batch, model, inference_args=None):
        grays = np.stack(batch)
        padded = np.concatenate([grays, np.zeros((self.batch_size - len(batch), *grays.shape[1:]), grays.dtype)])
        outputs = model(decode.to_images(padded, image_size=self.image_size).numpy())
        return [{k: v[i] for k, v in outputs.items()} for i in range(len(batch))]

    def batch_elements_kwargs(self):
        return {"min_batch_size": self.batch_size, "max_batch_size": self.batch_size}

    def get_num_bytes(self, batch):
        return sum(a.nbytes for a in batch)


def _list_images(images):
    """(image id, path) of every JPEG in the folder, by the one listing rule single-machine predict uses."""
    _, _, found, _ = source.locate(images, split="test")
    return sorted(found.items())


def _check(item):
    image_id, path = item
    problem, _ = source.check_jpeg(path)
    return image_id, path, problem


def _decode(item, *, image_size):
    image_id, path, _ = item
    return image_id, decode.decode_gray(storage.read_bytes(path), image_size=image_size).numpy()


def _rles(item, *, pp):
    image_id, out = item
    probs = out["probs"][None] if "probs" in out else None
    return image_id, submitted_rles(out["masks"][None], out["areas"][None], probs, pp=pp)[0]


def _write(rows, *, bad, images, out, skip_bad):
    """The submission (every image x class, sorted by id) and OUT.errors.csv: once, after every image is in."""
    bad = sorted(bad)
    if bad and not skip_bad:
        raise source.SourceError(source.describe_bad(dict(bad), images))
    if not rows:
        images_dir = source.locate(images, split="test")[0]
        raise source.SourceError(f"{images}: empty source, no JPEG files (.jpg, .jpeg) in {images_dir}")
    write_errors(out, bad)
    with storage.atomic_write(out, "wb") as f:
        f.write((HEADER + rows_text(sorted(rows))).encode())
    beam.metrics.Metrics.counter(_METRICS, "images").inc(len(rows))
    beam.metrics.Metrics.counter(_METRICS, "bad").inc(len(bad))


def predict(*, workdir, images, out, runner, pipeline_flags=(), batch_size=None, tta=False, skip_bad=False,
            thresholds=None, folds=None, jit_compile=None):
    """`steel-tpu predict` on `runner`: the same submission CSV and errors file; returns a summary dict. `workdir`
    is one workdir or kit, or several (a list, with their ensemble's `thresholds`), as single-machine predict."""
    start = time.perf_counter()
    options = pipeline_options(runner, pipeline_flags)
    members.require_thresholds(workdir, thresholds)  # before claim(out) deletes a previous submission
    claim(out)  # as single-machine predict: an unusable --out fails now, and the previous OUT goes before the work
    pp, pp_from, planned = scoring_plan(workdir, thresholds=thresholds, folds=folds)
    size = members.segment_size(members.segmenting(planned)[0].config)  # every segmenter's (members.plan checked)
    # Beam batches are sized when the pipeline is built, before any worker's device is known: one replica's batch
    # (a CPU or one-GPU worker), the smallest member's; give --batch-size for workers with more replicas. Scores do
    # not depend on it.
    launch_batch = min(resolve.global_batch(m.config.segment.data, replicas=1) for m in members.segmenting(planned))
    handler = EnsembleHandler(workdirs=[m.path for m in planned], folds=folds, pp=pp, tta=tta,
                              batch_size=batch_size or launch_batch, image_size=size, jit_compile=jit_compile)
    p = beam.Pipeline(options=options)
    checked = (p
               | "Folder" >> beam.Create([str(images)])
               | "List" >> beam.FlatMap(_list_images)
               | "Spread" >> beam.Reshuffle()  # the listing is one element: spread its images over workers
               | "Check" >> beam.Map(_check))
    bad = (checked
           | "Bad" >> beam.Filter(lambda c: c[2] is not None)
           | "Reason" >> beam.Map(lambda c: (c[0], c[2])))
    scored = (checked
              | "Good" >> beam.Filter(lambda c: c[2] is None)
              | "Decode" >> beam.Map(_decode, image_size=size)
              | "Ensemble" >> RunInference(KeyedModelHandler(handler))
              | "PostProcess" >> beam.Map(_rles, pp=pp))
    empty = bad | "Empty" >> beam.Map(lambda b: (b[0], EMPTY))
    _ = ((scored, empty)
         | "Rows" >> beam.Flatten()
         | "All" >> beam.combiners.ToList()
         | "Write" >> beam.Map(_write, bad=beam.pvalue.AsList(bad), images=str(images), out=str(out),
                               skip_bad=skip_bad))
    result = p.run()
    result.wait_until_finish()
    counters = {c.key.metric.name: c.committed for c in result.metrics().query()["counters"]
                if c.key.metric.namespace == _METRICS}
    seconds = time.perf_counter() - start
    images_n, bad_n = counters.get("images", 0), counters.get("bad", 0)
    summary = {"out": str(out), "images": images_n, "skipped": bad_n,
               "errors": str(out) + ".errors.csv" if bad_n else None, "seconds": round(seconds, 2),
               "images_per_s": round((images_n - bad_n) / seconds, 2), "thresholds": pp_from, "tta": tta,
               "runner": runner}
    print(f"predict ({runner}): {images_n} images ({bad_n} skipped as bad), {images_n - bad_n} scored in "
          f"{seconds:.1f}s ({summary['images_per_s']} images/s) -> {out}")
    return summary
