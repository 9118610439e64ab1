"""Batch scoring on Beam: list a JPEG folder, check and decode each image, run the model source's ensemble (a
workdir, a system, a kit or several workdirs) with RunInference, then the single-machine post-processing, RLE and
CSV layout (steel_tpu.scoring, steel_tpu.formats.submission).

The submission is written once, sorted by image id, so it is byte-identical to `steel-tpu predict` on the same
images; bad images follow the same rules (an error naming every one, or with --skip-bad empty rows plus
OUT.errors.csv).
"""

import time

import apache_beam as beam
import numpy as np
from apache_beam.ml.inference.base import KeyedModelHandler, ModelHandler, RunInference

from steel_tpu import storage

from steel_tpu.beam.options import pipeline_options
from steel_tpu.config import resolve
from steel_tpu.data import decode, source
from steel_tpu.device import distribute
from steel_tpu.formats.kaggle import EMPTY
from steel_tpu.formats.kaggle import SUBMISSION_HEADER, submission_rows
from steel_tpu.formats.submission import claim
from steel_tpu.scoring import scorer as scorer_lib
from steel_tpu.scoring.predict import write_errors
from steel_tpu.scoring.source import ModelSource

_METRICS = "steel_tpu.scoring.predict"


class EnsembleHandler(ModelHandler):
    """Decoded luma planes -> the ensemble's full-resolution masks, areas (and gate probabilities) per image.

    The model is the single-machine predict step (scoring.scorer under the worker's strategy); batches are padded
    to `batch_size` as the single-machine input pipeline pads them, so each worker compiles one shape.
    """

    def __init__(self, *, given, thresholds, folds, tta, batch_size, image_size, jit_compile):
        super().__init__()
        # The worker resolves the source again from the paths as given: open model sets are not shipped to it.
        self.given, self.thresholds, self.folds, self.tta = given, thresholds, folds, tta
        self.batch_size, self.image_size = batch_size, image_size
        self.jit_compile = jit_compile
        self._held = None

    def load_model(self):
        plan = ModelSource.resolve(self.given).plan(thresholds=self.thresholds, folds=self.folds)
        device = distribute.select_strategy(verbose=False)
        self._held = scorer_lib.scorer(plan, device=device, batch_size=self.batch_size, tta=self.tta,
                                       jit_compile=self.jit_compile)
        return self._held.__enter__().predict_step  # held for the worker's life: Beam calls it batch after batch

    def run_inference(self, batch, model, inference_args=None):
        padded = scorer_lib.pad_batch(np.stack(batch), batch_size=self.batch_size)
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
    return image_id, scorer_lib.submitted_rles(out["masks"][None], out["areas"][None], probs, pp=pp)[0]


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
        f.write((SUBMISSION_HEADER + submission_rows(sorted(rows))).encode())
    beam.metrics.Metrics.counter(_METRICS, "images").inc(len(rows))
    beam.metrics.Metrics.counter(_METRICS, "bad").inc(len(bad))


def predict(*, workdir, images, out, runner, pipeline_flags=(), batch_size=None, tta=False, skip_bad=False,
            thresholds=None, folds=None, jit_compile=None):
    """`steel-tpu predict` on `runner`: the same submission CSV and errors file; returns a summary dict. `workdir`
    is what single-machine predict takes (a ModelSource or what resolves into one: a workdir, system or kit, or
    several workdirs with their ensemble's `thresholds`)."""
    start = time.perf_counter()
    options = pipeline_options(runner, pipeline_flags)
    models = ModelSource.resolve(workdir)
    models.check_thresholds_given(thresholds)  # before claim(out) deletes a previous submission
    claim(out)  # as single-machine predict: an unusable --out fails now, and the previous OUT goes before the work
    plan = models.plan(thresholds=thresholds, folds=folds)
    pp, pp_from, size = plan.postprocess, plan.thresholds_from, plan.segment_size
    # Beam batches are sized when the pipeline is built, before any worker's device is known: one replica's batch
    # (a CPU or one-GPU worker), the smallest member's; give --batch-size for workers with more replicas. Scores do
    # not depend on it.
    launch_batch = min(resolve.global_batch(m.config.segment.data, replicas=1) for m in plan.segmenting)
    handler = EnsembleHandler(given=list(models.given), thresholds=plan.thresholds, folds=folds, tta=tta,
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
