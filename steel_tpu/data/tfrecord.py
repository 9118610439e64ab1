"""TFRecord framing in plain Python: shards stream through any file object (local or gs://), hashed as written."""

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
