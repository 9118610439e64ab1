"""TFRecord framing in plain Python: shards stream through any file object (local or gs://), hashed as written."""

import hashlib
import re
import struct

import google_crc32c

_LENGTH = struct.Struct("<Q")
_CRC = struct.Struct("<I")


class TFRecordError(ValueError):
    """A truncated or corrupt record; callers add the file name."""


def _masked_crc(data):
    # The TFRecord format stores CRC32C rotated and offset ("masked") so that CRCs of data holding CRCs stay robust.
    crc = google_crc32c.value(data)
    return ((crc >> 15 | crc << 17) + 0xA282EAD8) & 0xFFFFFFFF


def frame(record):
    """The bytes of one record as a TFRecord file stores them: length, its CRC, the data, its CRC."""
    length = _LENGTH.pack(len(record))
    return b"".join((length, _CRC.pack(_masked_crc(length)), record, _CRC.pack(_masked_crc(record))))


def framed_size(length):
    """Bytes a record of `length` data bytes takes in a TFRecord file (length, CRC, data, CRC)."""
    return _LENGTH.size + 2 * _CRC.size + length


class HashingReader:
    """A read-only view of a binary file that hashes and counts every byte read through it."""

    def __init__(self, f):
        self._f, self.sha256, self.bytes = f, hashlib.sha256(), 0

    def read(self, n):
        block = self._f.read(n)
        self.sha256.update(block)
        self.bytes += len(block)
        return block

    def drain(self, *, chunk=1 << 20):
        """Read (and hash) the rest of the file: after a broken record the checksum still covers every byte."""
        while self.read(chunk):
            pass


def read_records(f):
    """Yield each record of an open binary TFRecord file, checking both CRCs of every record."""
    index = 0
    while header := f.read(_LENGTH.size + _CRC.size):
        if len(header) < _LENGTH.size + _CRC.size:
            raise TFRecordError(f"record {index}: truncated header")
        (length,), (crc,) = _LENGTH.unpack(header[:8]), _CRC.unpack(header[8:])
        if crc != _masked_crc(header[:8]):
            raise TFRecordError(f"record {index}: length CRC mismatch")
        body = f.read(length + _CRC.size)
        if len(body) < length + _CRC.size:
            raise TFRecordError(f"record {index}: truncated data")
        if _CRC.unpack(body[length:])[0] != _masked_crc(body[:length]):
            raise TFRecordError(f"record {index}: data CRC mismatch")
        yield body[:length]
        index += 1


def first_damaged(paths, *, offset=None):
    """(path, problem) of the first file in `paths` whose records do not all read back intact, or None.

    `offset`: the byte offset TensorFlow's error reported, so files no longer than it are not read at all.
    """
    from steel_tpu import storage  # host-side reads, only on this error path

    for path in paths:
        if offset is not None and storage.size(path) <= offset:
            continue
        try:
            with storage.open(path, "rb") as f:
                for _ in read_records(f):
                    pass
        except TFRecordError as error:
            return str(path), str(error)
    return None


def name_damaged(error, paths):
    """The error to raise for TensorFlow's DataLossError `error`, which names no file: a TFRecordError naming the
    damaged file among `paths` (re-read on this error path only), or `error` itself when none of them is."""
    first = (error.message or str(error)).strip().splitlines()[0]
    match = re.search(r"record at (\d+)", first)
    found = first_damaged(paths, offset=int(match[1]) if match else None)
    if found is None:
        return error
    path, problem = found
    return TFRecordError(f"{path}: damaged shard ({problem}; TensorFlow: {first}); rebuild the shard folder "
                         "(`steel-tpu verify --shards FOLDER` checks every shard)")
