"""Output locations: the checks every writing command makes before any work (literal paths, foreign files refused)."""

import os
import re

from steel_tpu import storage

# storage.atomic_write's local temp file for NAME, left behind only by a killed writer (mkstemp's 8 characters).
_TEMP = re.compile(r"\.tmp-[a-z0-9_]{8}-(.+)")
_SHOWN = 10


class OutputError(ValueError):
    """An output location that cannot be used as given; the message names the path (and any foreign files)."""


def temp_of(name):
    """The file name a leftover atomic_write temp file `name` was for, or None."""
    m = _TEMP.fullmatch(name)
    return m[1] if m else None


def _check_local_folder_writable(folder, *, flag):
    """The nearest existing ancestor of `folder` must be a writable folder: a file there, or a read-only folder,
    would only fail after the work is done."""
    probe = os.path.abspath(folder)
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise OutputError(f"{flag} {folder}: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise OutputError(f"{flag} {folder}: {probe} is not writable (permission denied)")


def check_folder(folder, *, flag="--out"):
    """Refuse, before any work, an output folder that is a file or cannot be written (local; gs:// fails on write)."""
    folder = str(folder)
    if not storage.is_gcs(folder):
        _check_local_folder_writable(folder, flag=flag)
    elif storage.exists(folder) and not storage.isdir(folder):
        raise OutputError(f"{flag} {folder}: is a file, not a folder")


def check_file(path, *, flag="--out"):
    """Refuse, before any work, an output file path that is a folder or whose folder cannot be written."""
    path = str(path)
    if storage.isdir(path):
        raise OutputError(f"{flag} {path}: is a folder; give the path of a file to write")
    if not storage.is_gcs(path):
        _check_local_folder_writable(storage.parent(path), flag=flag)


def claim_folder(folder, *, ours, command, flag="--out"):
    """{name: size} of the files directly in `folder` after checking it can be written and holds only files
    `command` writes (`ours(name)` is True; leftover temp files of those count as ours). A folder holding any other
    file is refused with their names, before anything is written."""
    folder = str(folder)
    check_folder(folder, flag=flag)
    try:
        found = storage.list_files(folder)  # one literal listing: the user's path is never a pattern
    except NotADirectoryError:
        raise OutputError(f"{flag} {folder}: is a file, not a folder") from None
    foreign = sorted(n for n in found if not ours(n) and not (temp_of(n) and ours(temp_of(n))))
    if foreign:
        shown = ", ".join(foreign[:_SHOWN]) + (f" and {len(foreign) - _SHOWN} more" if len(foreign) > _SHOWN else "")
        raise OutputError(f"{flag} {folder}: holds {len(foreign)} file(s) {command} did not write: {shown}; nothing "
                          "was changed: give an empty or new folder")
    return found


def remove_temps(folder, found, *, ours):
    """Remove, by exact name, temp files a killed writer of ours left in `folder` (`found`: its listing)."""
    for name in found:
        if temp_of(name) and ours(temp_of(name)):
            storage.remove(storage.join(folder, name))
