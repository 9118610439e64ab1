"""A Plan on the device: the device and batch, the ensemble's compiled predict step, the batch loop and the rows.

predict, rescore, pseudo and Beam all score through `Scorer`: host decoding (tf.data) in the caller, the ensemble,
full-resolution maps and pixel thresholds on the device, then `Scorer.run` hands each device batch to host work
(component filter, min areas, gate, RLE) in one worker thread, so the device never waits.
"""

import collections
import contextlib
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import tensorflow as tf

from steel_tpu import console
from steel_tpu.formats import rle

from steel_tpu.config import resolve
from steel_tpu.data import tfrecord
from steel_tpu.device import custom_gradients, distribute
from steel_tpu.device import steps as device_steps
from steel_tpu.scoring import ensemble as ensemble_lib

_IN_FLIGHT = 2  # device batches waiting for the host worker: bounds host memory, keeps the device busy


def device_and_batch(configs, *, device=None, batch_size=None):
    """(device, global batch) scoring runs with: the detected device (precision set) and the smallest member's
    segmenter batch unless given (every member's models score each batch); float16 on a GPU only when every member
    trained so. A batch that does not split over the replicas is refused."""
    configs = list(configs)
    device = device or distribute.select_strategy()
    distribute.set_precision(device.kind, gpu_float16=all(c.gpu_float16 for c in configs))
    batch_size = batch_size or min(resolve.global_batch(c.segment.data, replicas=device.replicas) for c in configs)
    distribute.per_replica_batch_size(device, batch_size)
    return device, batch_size


@contextlib.contextmanager
def scorer(plan, *, device=None, batch_size=None, tta=False, jit_compile=None):
    """In the block, a Scorer of `plan` (a scoring.source.Plan): its ensemble built on the device and its predict
    step compiled. The traced ensemble dies with the block: its custom gradients must not keep it alive (~100 MB a
    model) in a notebook that scores again and again."""
    device, batch_size = device_and_batch([m.config for m in plan.segmenting], device=device, batch_size=batch_size)
    with custom_gradients.forgotten_after():
        ens = ensemble_lib.build(plan, strategy=device.strategy)
        forward = ensemble_lib.make_forward(ens, pp=plan.postprocess, tta=tta)
        predict_step = device_steps.predict_step(device=device, forward=forward, models=ens.models,
                                                 jit_compile=distribute.use_xla(device, jit_compile))
        yield Scorer(plan=plan, device=device, batch_size=batch_size, ensemble=ens, predict_step=predict_step)


class Scorer:
    """What a scoring run holds while it runs: the plan, device, global batch, ensemble and predict step."""

    def __init__(self, *, plan, device, batch_size, ensemble, predict_step):
        self.plan, self.device, self.batch_size = plan, device, batch_size
        self.ensemble, self.predict_step = ensemble, predict_step

    @property
    def postprocess(self):
        return self.plan.postprocess

    def rows(self, batch, outputs):
        """(image ids, masks, areas, gating probabilities or None) of a device batch's valid rows, components
        filtered."""
        pp = self.plan.postprocess
        valid = slice(None) if batch["valid"].all() else batch["valid"]  # no copy of full batches' masks
        probs = outputs["probs"][valid] if "probs" in outputs else None
        ids = [i.decode() for i in batch["image_id"][valid]]
        masks, areas = outputs["masks"][valid], outputs["areas"][valid]
        if pp.filters_components:
            masks, areas = pp.filter(masks)
        return ids, masks, areas, probs

    def run(self, dataset, *, host_work, total, progress, pending=lambda: [], desc="predict"):
        """Score `dataset` (padded batches with "image", "image_id", "valid"), `host_work(batch, outputs) -> images
        done` in one worker thread; `pending()` names the inputs still being read (for decoding errors)."""
        _run_batches(dataset, predict_step=self.predict_step, host_work=host_work, pending=pending, total=total,
                     progress=progress, desc=desc)


def submitted_rles(masks, areas, class_probs, *, pp):
    """One list of RLE strings per image: the device's thresholded masks, '' where min area or gate drop one."""
    kept = pp.keep(areas, class_probs)
    return [[r if k else "" for r, k in zip(row, keep)] for row, keep in zip(rle.encode_batch(masks), kept)]


def _batches(dataset, pending):
    """The dataset's numpy batches; a decoding failure names the inputs being read (`pending()`: chunks not done)."""
    iterator = dataset.as_numpy_iterator() if dataset is not None else iter(())
    while True:
        try:
            yield next(iterator)
        except StopIteration:
            return
        except tf.errors.DataLossError as error:
            named = tfrecord.name_damaged(error, [p for c in pending() for p in c.inputs
                                                  if str(p).endswith(".tfrec")])
            if named is error:
                raise
            raise named from None
        except tf.errors.OpError as error:
            chunk = pending()[0] if pending() else None
            where = f"chunk {chunk.index} ({', '.join(map(str, chunk.inputs[:3]))}...)" if chunk else "the input"
            raise RuntimeError(f"input pipeline failed around {where}: {error.message}") from None


def _run_batches(dataset, *, predict_step, host_work, pending, total, progress, desc):
    """Device batches in the main thread, `host_work(batch, outputs) -> images done` in one worker, at most
    _IN_FLIGHT batches apart."""
    bar = console.Progress(total, desc=desc, unit="img", enabled=progress)
    in_flight, failed = collections.deque(), threading.Event()

    def work(batch, outputs):
        if failed.is_set():
            return  # an earlier batch failed: its chunk is incomplete, so nothing after it may be committed
        try:
            bar.update(host_work(batch, outputs))
        except BaseException:
            failed.set()
            raise

    try:
        with ThreadPoolExecutor(max_workers=1) as worker:
            try:
                for batch in _batches(dataset, pending):
                    outputs = predict_step(batch["image"])
                    in_flight.append(worker.submit(work, batch, outputs))
                    while len(in_flight) > _IN_FLIGHT or (in_flight and in_flight[0].done()):
                        in_flight.popleft().result()
                while in_flight:
                    in_flight.popleft().result()
            except BaseException:
                failed.set()  # queued host work must not commit anything after a failure
                raise
    finally:
        bar.close()


def pad_batch(images, *, batch_size):
    """`images` [n, ...] padded with zero rows to [batch_size, ...]: the one static shape a compiled step takes."""
    images = np.asarray(images)
    return np.concatenate([images, np.zeros((batch_size - len(images), *images.shape[1:]), images.dtype)])
