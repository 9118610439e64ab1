"""Local and gs:// paths behind one small API (fsspec/gcsfs on the Python side)."""

import contextlib
import os
import posixpath
import tempfile

import fsspec

GCS_PREFIX = "gs://"
# Read once: os.umask can only be read by setting it, which would race with other threads' file creation.
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def is_gcs(path):
    return str(path).startswith(GCS_PREFIX)


def _fs(path):
    # No listings cache on GCS: TensorFlow (or another process) writes objects behind gcsfs' back, and every
    # call here must see the bucket as it is now.
    options = {"use_listings_cache": False} if is_gcs(path) else {}
    return fsspec.core.url_to_fs(str(path), **options)


def _with_protocol(path, original):
    # gcsfs drops the scheme in listings; callers always get back the form they passed in.
    return GCS_PREFIX + path.lstrip("/") if is_gcs(original) and not is_gcs(path) else path


def join(base, *parts):
    base = str(base)
    return posixpath.join(base, *parts) if is_gcs(base) else os.path.join(base, *parts)


def parent(path):
    """The folder holding `path` (absolute when local)."""
    path = str(path)
    return posixpath.dirname(path.rstrip("/")) if is_gcs(path) else os.path.dirname(os.path.abspath(path))


def open(path, mode="rb"):  # noqa: A001 - mirrors builtins.open on purpose
    fs, p = _fs(path)
    return fs.open(p, mode)


def exists(path):
    fs, p = _fs(path)
    return fs.exists(p)


def isdir(path):
    fs, p = _fs(path)
    return fs.isdir(p)


def size(path):
    fs, p = _fs(path)
    return fs.size(p)


def makedirs(path):
    fs, p = _fs(path)
    if not is_gcs(path):
        fs.makedirs(p, exist_ok=True)
    elif "/" in p.strip("/") and not fs.isdir(p):
        # GCS has no directories. A zero-byte "name/" object (what TensorFlow, gsutil and the console make)
        # lets exists/isdir see an empty one as they do locally; a bare bucket is never created here.
        fs.pipe_file(p.rstrip("/") + "/", b"")


def listdir(path):
    """Sorted full paths of the entries directly under `path`."""
    fs, p = _fs(path)
    # On GCS the listing also holds the "name/" directory marker of `path` itself.
    entries = (e for e in fs.ls(p, detail=False) if e.rstrip("/") != p.rstrip("/"))
    return sorted(_with_protocol(e, str(path)) for e in entries)


def list_files(folder):
    """{name: byte size} of the plain files directly under `folder` ({} if it does not exist).

    One listing, matched literally: a user's path is never a pattern, so `runs/a*b` can only mean itself.
    """
    fs, p = _fs(folder)
    if not fs.exists(p):
        return {}
    if not fs.isdir(p):
        raise NotADirectoryError(f"{folder}: a file, not a folder")
    entries = fs.ls(p, detail=True)
    return {posixpath.basename(e["name"].rstrip("/")): int(e["size"]) for e in entries
            if e["type"] == "file" and not e["name"].endswith("/")}


def remove(path):
    """Delete one file by its exact name (fsspec's `rm` would expand glob characters in it)."""
    fs, p = _fs(path)
    if fs.exists(p):
        fs.rm_file(p)


def read_bytes(path):
    fs, p = _fs(path)
    return fs.cat_file(p)


def read_range(path, *, start, length):
    """`length` bytes of a file from byte `start`: one ranged read (on GCS one request, not a whole object)."""
    fs, p = _fs(path)
    return fs.cat_file(p, start=start, end=start + length)


def read_text(path):
    return read_bytes(path).decode("utf-8")


@contextlib.contextmanager
def atomic_write(path, mode="wb"):
    """Write to a temporary file and publish it under `path` only if the block succeeds.

    Locally that is a rename in the same directory; on GCS it is one upload of the finished file,
    and a GCS object only becomes visible once its upload completes.
    """
    path = str(path)
    local_dir = None if is_gcs(path) else (os.path.dirname(os.path.abspath(path)))
    if local_dir:
        os.makedirs(local_dir, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=local_dir, prefix=".tmp-", suffix="-" + os.path.basename(path))
    # mkstemp makes 0600 files; a published file gets the mode a plain open() would have given it.
    os.fchmod(fd, 0o666 & ~_UMASK)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        if local_dir:
            os.replace(tmp, path)
        else:
            fs, p = _fs(path)
            fs.put_file(tmp, p)
    except OSError as error:
        if error.filename is not None or error.errno is None:
            raise
        # A full disk or a read-only mount fails a write() or fsync(), whose error names no file: name the one
        # being written, so the user is told where (cli/errors.py prints it in one line).
        raise OSError(error.errno, error.strerror, path) from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_bytes(path, data):
    with atomic_write(path, "wb") as f:
        f.write(data)


def write_text(path, text):
    write_bytes(path, text.encode("utf-8"))
