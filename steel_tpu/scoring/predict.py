"""Score a folder of JPEGs (or test shards) with a workdir's fold ensemble into a Kaggle submission CSV.

The scoring is scoring/'s (the model source, its ensemble on the device, the batch loop and rows); this module
plans the images as chunks, assembles the scored rows in order and commits each chunk beside the output
(formats/submission.py): a re-run after a crash resumes after the last committed one.
"""

import collections
import csv
import io
import os
import time
from dataclasses import dataclass

from steel_tpu import storage
from steel_tpu.data import pipeline, source
from steel_tpu.data.shard_folder import ShardFolder, holds_shards
from steel_tpu.formats.kaggle import EMPTY
from steel_tpu.formats.submission import ChunkedSubmission, claim, errors_path
from steel_tpu.scoring.scorer import scorer, submitted_rles
from steel_tpu.scoring.source import ModelSource

CHUNK_SIZE = 1024  # images per committed part file: at most this much work is redone after a crash


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


def _host_work(scored, batch, outputs, *, assembler):
    """Component filtering, min areas, gate, RLE encoding and assembly of one device batch; returns its images."""
    ids, masks, areas, probs = scored.rows(batch, outputs)
    assembler.add(ids, submitted_rles(masks, areas, probs, pp=scored.postprocess))
    return len(ids)


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

    `workdir`: a scoring.source.ModelSource or what resolves into one (a workdir, system folder or kit, or several
    workdirs: one per encoder, say), whose fold models are all averaged; `thresholds`: a thresholds.json path
    (default: the source's own, else defaults; several workdirs need one tuned for them); `folds`: only these fold
    models (of every member); `jit_compile`: None = XLA except on CPU. `_after_chunk(n)` is a test hook run after
    each committed chunk.
    """
    start = time.perf_counter()
    models = ModelSource.resolve(workdir)
    models.check_thresholds_given(thresholds)  # before claim(out) deletes a previous submission
    claim(out)  # an unusable --out fails here, not after the scoring; the previous OUT goes
    plan = models.plan(thresholds=thresholds, folds=folds)
    chunks = plan_chunks(images, chunk_size=chunk_size, skip_bad=skip_bad)  # bad input fails before model builds
    with scorer(plan, device=device, batch_size=batch_size, tta=tta, jit_compile=jit_compile) as scored:
        writer = ChunkedSubmission(out, plan={
            "chunks": [[list(c.inputs), c.image_ids, c.size] for c in chunks], "models": scored.ensemble.identity,
            "postprocess": plan.postprocess.to_dict(), "tta": tta, "segment_size": list(plan.segment_size)})
        done = writer.committed()
        pending = [c for c in chunks if c.index not in done]
        assembler = _Assembler(pending, writer=writer, after_chunk=_after_chunk)
        scored.run(_dataset(pending, image_size=plan.segment_size, batch_size=scored.batch_size),
                   host_work=lambda batch, outputs: _host_work(scored, batch, outputs, assembler=assembler),
                   pending=lambda: assembler.pending, total=sum(c.size for c in pending), progress=progress)
        assembler.close()
    bad = [b for c in chunks for b in c.bad]
    errors = write_errors(out, bad)
    n_images = writer.finish(len(chunks))
    return _summary(out=out, images=n_images, bad=bad, errors=errors, resumed=len(done),
                    scored=sum(c.size for c in pending), seconds=time.perf_counter() - start,
                    thresholds=plan.thresholds_from, folds=scored.ensemble.folds, tta=tta)


def _summary(*, out, images, bad, errors, resumed, scored, seconds, **extra):
    summary = {"out": str(out), "images": images, "skipped": len(bad), "errors": errors, "resumed_chunks": resumed,
               "scored_now": scored, "seconds": round(seconds, 2), "images_per_s": round(scored / seconds, 2),
               **extra}
    listed = f", listed in {errors}" if errors else ""
    print(f"predict: {images} images ({len(bad)} skipped as bad{listed}; {resumed} chunk(s) resumed), "
          f"{scored} scored in {seconds:.1f}s ({summary['images_per_s']} images/s) -> {out}")
    return summary
