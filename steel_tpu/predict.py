"""Score a folder of JPEGs (or test shards) with a workdir's fold ensemble into a Kaggle submission CSV.

Host decoding (tf.data, prefetched); the ensemble, full-resolution maps and pixel thresholds on the device (the
training strategy code); min areas, gating and RLE encoding in one worker thread, so the device never waits.
Progress is committed in chunks beside the output (submission_writer); a re-run resumes after the last one.
"""

import collections
import csv
import io
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import tensorflow as tf

from steel_tpu import (console, custom_gradients, distribute, ensemble, kit, members, postprocess, resolve, rle, step,
                       storage, system)
from steel_tpu.data import pipeline, source, tfrecord
from steel_tpu.data.shard_folder import ShardFolder, holds_shards
from steel_tpu.kaggle import EMPTY
from steel_tpu.submission_writer import ChunkedSubmission, claim, errors_path
from steel_tpu.workdir import THRESHOLDS, read_thresholds

CHUNK_SIZE = 1024  # images per committed part file: at most this much work is redone after a crash
_IN_FLIGHT = 2  # device batches waiting for the host worker: bounds host memory, keeps the device busy


@dataclass(frozen=True)
class Chunk:
    """One committed unit of work, in output order."""

    index: int
    inputs: tuple  # what the input pipeline reads: JPEG paths of the good images, or one test shard
    size: int  # images the model sees
    image_ids: tuple | None  # every image, bad ones included, in output order; None: learnt from a shard
    bad: tuple = ()  # (image id, reason): written as empty masks


def _jpeg_chunks(images, *, chunk_size, skip_bad, workers):
    """Chunks of a JPEG folder, every image checked from its header (id-naming SourceError unless skip_bad)."""
    found = source.scan(images, split="test", workers=workers, skip_bad=skip_bad)
    reasons = dict(found.skipped)
    ids = sorted(set(found.paths) | set(reasons))
    chunks = []
    for index, start in enumerate(range(0, len(ids), chunk_size)):
        part = tuple(ids[start:start + chunk_size])
        good = [i for i in part if i in found.paths]
        chunks.append(Chunk(index=index, inputs=tuple(found.paths[i] for i in good), size=len(good),
                            image_ids=part, bad=tuple((i, reasons[i]) for i in part if i in reasons)))
    return chunks


def _shard_chunks(images):
    """One chunk per shard the manifest lists, sized from it; sizes checked and unlisted shards refused first."""
    folder = ShardFolder.open(images, split="test").check()
    return [Chunk(index=i, inputs=(path,), size=entry["records"], image_ids=None)
            for i, (path, entry) in enumerate(zip(folder.files(), folder.entries))]


def plan_chunks(images, *, chunk_size=CHUNK_SIZE, skip_bad=False, workers=None):
    """The chunks of `images`: a folder of test shards (its manifest.json) or of *.jpg files, local or gs://."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if holds_shards(images):
        return _shard_chunks(images)
    return _jpeg_chunks(images, chunk_size=chunk_size, skip_bad=skip_bad, workers=workers or os.cpu_count())


def load_thresholds(work, thresholds=None):
    """(PostProcess, where it came from, the thresholds doc read or None): a PostProcess, a thresholds.json path,
    or the workdir's (or defaults).

    Several workdirs (`work` a list) need a thresholds.json tuned for exactly them; one workdir refuses one tuned
    for an ensemble (members.check_tuned_for)."""
    if isinstance(thresholds, postprocess.PostProcess):
        return thresholds, "given", None
    home = system.home(work)
    if thresholds is None and home is not None:
        thresholds = storage.join(home, THRESHOLDS)
        if not storage.exists(thresholds):
            raise FileNotFoundError(f"{thresholds}: the system is not tuned; run `steel-tpu tune --workdir {home}`")
    members.require_thresholds(work, thresholds)
    if thresholds:
        path, doc = thresholds, read_thresholds(thresholds)
    else:
        wd = kit.open_models(members.paths(work)[0])
        path, doc = wd.thresholds_path(), wd.thresholds()
    if doc is not None:
        members.check_tuned_for(doc, where=path, work=work)
        return postprocess.from_thresholds(doc, where=path), path, doc
    print(f"predict: no {path}: using defaults (pixel threshold 0.5, no min area, no gate); "
          f"run `steel-tpu tune --workdir {wd}` first to tune them")
    return postprocess.PostProcess(), "defaults", None


def scoring_plan(workdir, *, thresholds=None, folds=None):
    """(PostProcess, where it came from, members.plan's Members) that `workdir` (one or several) scores with,
    checked before any model is built: the thresholds fit the members, a gate has every classifier the members'
    configs train, and a fold model tune did not average is named (it scores too)."""
    pp, pp_from, doc = load_thresholds(workdir, thresholds)
    planned = members.plan(workdir, folds=folds, tasks=pp.tasks)
    for member in planned:
        if pp.needs_classifier and "classify" in member.config.tasks and not member.folds.get("classify"):
            raise FileNotFoundError(f"{pp_from} gates on a classifier, but {member.path} has no completed classify "
                                    "folds")
    if pp.needs_classifier and not any(m.folds.get("classify") for m in planned):
        raise FileNotFoundError(f"{pp_from} gates on a classifier, but no workdir of "
                                f"{', '.join(members.paths(workdir))} trains one (config `tasks`)")
    if len(planned) > 1 and doc is not None:
        unseen = members.check_models(doc, where=pp_from, members=planned)
        if unseen:
            print(f"predict: {len(unseen)} fold model(s) tune did not average (e.g. {unseen[0]}) score too: "
                  f"{pp_from} was tuned on the others' out-of-fold maps")
    return pp, pp_from, planned


def device_and_batch(cfg, *, device=None, batch_size=None):
    """(device, global batch) scoring runs with: the detected device (precision set) and the segmenter's batch
    unless given; a batch that does not split over the replicas is refused. `cfg` may be an ensemble's member
    configs (a list): float16 on a GPU only when every member trained so, and the smallest member's batch (every
    member's models score each batch)."""
    configs = list(cfg) if isinstance(cfg, (list, tuple)) else [cfg]
    device = device or distribute.select_strategy()
    distribute.set_precision(device.kind, gpu_float16=all(c.gpu_float16 for c in configs))
    batch_size = batch_size or min(resolve.global_batch(c.segment.data, replicas=device.replicas) for c in configs)
    distribute.per_replica_batch_size(device, batch_size)
    return device, batch_size


def _dataset(chunks, *, image_size, batch_size):
    """One stream over the chunks' inputs (JPEG paths, or shard paths), in chunk order; None if nothing to read."""
    inputs = [p for c in chunks for p in c.inputs]
    return pipeline.predict_dataset(source=inputs, image_size=image_size, batch_size=batch_size) if inputs else None


class _Assembler:
    """Collects scored rows in stream order and commits each chunk once all its images are in."""

    def __init__(self, chunks, *, writer, after_chunk):
        self.pending = collections.deque(chunks)
        self.rows, self.writer, self.after_chunk, self.committed = [], writer, after_chunk, 0
        self._commit_ready()

    def add(self, image_ids, rles):
        for image_id, classes in zip(image_ids, rles):
            if not self.pending:
                raise RuntimeError(f"input pipeline yielded image {image_id} after the last planned image")
            if self.expected is not None and image_id != self.expected[len(self.rows)]:
                raise RuntimeError(f"input pipeline order: got image {image_id}, "
                                   f"expected {self.expected[len(self.rows)]}")
            self.rows.append((image_id, classes))
            if len(self.rows) == self.pending[0].size:
                self._commit_ready()

    def _commit_ready(self):
        while self.pending and len(self.rows) == self.pending[0].size:
            chunk = self.pending.popleft()
            rows = self.rows
            if chunk.image_ids is not None:
                scored = dict(rows)
                rows = [(i, scored.get(i, EMPTY)) for i in chunk.image_ids]
            self.writer.commit(chunk.index, rows)
            self.rows, self.committed = [], self.committed + 1
            if self.after_chunk:
                self.after_chunk(self.committed)
        # The good images of the chunk now filling, in the order the pipeline must deliver them.
        chunk = self.pending[0] if self.pending else None
        bad = {i for i, _ in chunk.bad} if chunk else set()
        self.expected = [i for i in chunk.image_ids if i not in bad] if chunk and chunk.image_ids else None

    def close(self):
        if self.pending:
            raise RuntimeError(f"input pipeline ended with chunk {self.pending[0].index} incomplete "
                               f"({len(self.rows)} of {self.pending[0].size} images)")


def submitted_rles(masks, areas, class_probs, *, pp):
    """One list of RLE strings per image: the device's thresholded masks, '' where min area or gate drop one."""
    kept = pp.keep(areas, class_probs)
    return [[r if k else "" for r, k in zip(row, keep)] for row, keep in zip(rle.encode_batch(masks), kept)]


def scored_rows(batch, outputs, *, pp):
    """(image ids, masks, areas, gating probabilities or None) of a device batch's valid rows, components filtered."""
    valid = slice(None) if batch["valid"].all() else batch["valid"]  # no copy of full batches' masks
    probs = outputs["probs"][valid] if "probs" in outputs else None
    ids = [i.decode() for i in batch["image_id"][valid]]
    masks, areas = outputs["masks"][valid], outputs["areas"][valid]
    if pp.filters_components:
        masks, areas = pp.filter(masks)
    return ids, masks, areas, probs


def _host_work(batch, outputs, *, pp, assembler):
    """Component filtering, min areas, gate, RLE encoding and assembly of one device batch; returns its images."""
    ids, masks, areas, probs = scored_rows(batch, outputs, pp=pp)
    assembler.add(ids, submitted_rles(masks, areas, probs, pp=pp))
    return len(ids)


def _batches(dataset, pending):
    """The dataset's numpy batches; a decoding failure names the chunk being read (`pending()`: chunks not done)."""
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


def run_batches(dataset, *, predict_step, host_work, pending, total, progress, desc="predict"):
    """Device batches in the main thread, `host_work(batch, outputs) -> images done` in one worker, at most
    _IN_FLIGHT batches apart: the one scoring loop of predict and pseudo-labelling."""
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


def _run(dataset, *, predict_step, pp, assembler, total, progress):
    run_batches(dataset, predict_step=predict_step, pending=lambda: assembler.pending, total=total,
                progress=progress, host_work=lambda batch, outputs: _host_work(batch, outputs, pp=pp,
                                                                                assembler=assembler))
    assembler.close()


def write_errors(out, bad):
    """OUT.errors.csv listing `bad` (image id, reason), or no such file when nothing was bad; returns its path."""
    path = errors_path(out)
    if not bad:
        storage.remove(path)
        return None
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(("image_id", "reason"))
    writer.writerows(bad)
    storage.write_text(path, buffer.getvalue())
    return path


def predict(*, workdir, images, out, batch_size=None, tta=False, skip_bad=False, chunk_size=CHUNK_SIZE,
            thresholds=None, folds=None, device=None, jit_compile=None, progress=True, _after_chunk=None):
    """Write the Kaggle submission of every image in `images` to `out` (local or gs://); returns a summary dict.

    `workdir`: a training workdir or exported kit, or several (a list: one workdir per encoder, say), whose fold
    models are all averaged (ensemble.make_forward); `thresholds`: a PostProcess or a thresholds.json path
    (default: the workdir's, else defaults; several workdirs need one tuned for them); `folds`: only these fold
    models (of every member); `jit_compile`: None = XLA except on CPU. `_after_chunk(n)` is a test hook run after
    each committed chunk.
    """
    start = time.perf_counter()
    members.require_thresholds(workdir, thresholds)  # before claim(out) deletes a previous submission
    claim(out)  # an unusable --out fails here, not after the scoring; the previous OUT goes
    pp, pp_from, planned = scoring_plan(workdir, thresholds=thresholds, folds=folds)
    chunks = plan_chunks(images, chunk_size=chunk_size, skip_bad=skip_bad)  # bad input fails before model builds
    device, batch_size = device_and_batch([m.config for m in members.segmenting(planned)], device=device,
                                          batch_size=batch_size)
    # The traced ensemble dies with this call: its custom gradients must not keep it alive (~100 MB a model) in a
    # notebook that predicts again and again.
    with custom_gradients.forgotten_after():
        ens = ensemble.build(planned, strategy=device.strategy)
        writer = ChunkedSubmission(out, plan={
            "chunks": [[list(c.inputs), c.image_ids, c.size] for c in chunks], "models": ens.identity,
            "postprocess": pp.to_dict(), "tta": tta, "segment_size": list(ens.segment_size)})
        done = writer.committed()
        pending = [c for c in chunks if c.index not in done]
        forward = ensemble.make_forward(ens, pp=pp, tta=tta)
        predict_step = step.make_predict_step(forward=forward, strategy=device.strategy,
                                              jit_compile=distribute.use_xla(device, jit_compile))
        _run(_dataset(pending, image_size=ens.segment_size, batch_size=batch_size), predict_step=predict_step,
             pp=pp, assembler=_Assembler(pending, writer=writer, after_chunk=_after_chunk),
             total=sum(c.size for c in pending), progress=progress)
    bad = [b for c in chunks for b in c.bad]
    errors = write_errors(out, bad)
    n_images = writer.finish(len(chunks))
    return _summary(out=out, images=n_images, bad=bad, errors=errors, resumed=len(done),
                    scored=sum(c.size for c in pending), seconds=time.perf_counter() - start,
                    thresholds=pp_from, folds=ens.folds, tta=tta)


def _summary(*, out, images, bad, errors, resumed, scored, seconds, **extra):
    summary = {"out": str(out), "images": images, "skipped": len(bad), "errors": errors, "resumed_chunks": resumed,
               "scored_now": scored, "seconds": round(seconds, 2), "images_per_s": round(scored / seconds, 2),
               **extra}
    listed = f", listed in {errors}" if errors else ""
    print(f"predict: {images} images ({len(bad)} skipped as bad{listed}; {resumed} chunk(s) resumed), "
          f"{scored} scored in {seconds:.1f}s ({summary['images_per_s']} images/s) -> {out}")
    return summary
