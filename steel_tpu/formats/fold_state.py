"""A fold's resumable training state under the JAX backend (ckpt/state.npz): weights, optimizer slots, the weight
average, the epoch reached and the best score, in one file published whole."""

import io
import zipfile

import numpy as np

from steel_tpu import storage

FILE = "state.npz"
FORMAT = 1
GROUPS = ("model", "optimizer", "average")


class FoldStateError(ValueError):
    """A state file that cannot be resumed from; the message names the file."""


def write(path, *, arrays, epoch, best):
    """Publish `arrays` ({group: [array, ...]} for GROUPS), `epoch` and `best` at `path` in one atomic write."""
    named = {f"{group}/{i:05d}": np.asarray(a) for group in GROUPS for i, a in enumerate(arrays.get(group, ()))}
    buf = io.BytesIO()
    np.savez(buf, format=np.int64(FORMAT), epoch=np.int64(epoch), best=np.float64(best), **named)
    storage.write_bytes(path, buf.getvalue())


def read(path, *, counts):
    """(arrays by group, epoch, best) of the state at `path`, refused unless each group has `counts[group]`
    arrays (the same model and optimizer as the run resuming it)."""
    try:
        with np.load(io.BytesIO(storage.read_bytes(path)), allow_pickle=False) as npz:
            doc = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
        raise FoldStateError(f"{path}: not a readable training state ({type(error).__name__}: {error}); delete it "
                             "to restart the fold from its first epoch") from None
    if doc.get("format") is None or int(doc["format"]) != FORMAT:
        raise FoldStateError(f"{path}: training state format {doc.get('format')}, this steel_tpu reads {FORMAT}")
    arrays = {g: [doc[k] for k in sorted(k for k in doc if k.startswith(g + "/"))] for g in GROUPS}
    for group, want in counts.items():
        if len(arrays[group]) != want:
            raise FoldStateError(f"{path}: {len(arrays[group])} {group} arrays, the run resuming it has {want} "
                                 "(another model or optimizer): train into a new --workdir")
    return arrays, int(doc["epoch"]), float(doc["best"])
