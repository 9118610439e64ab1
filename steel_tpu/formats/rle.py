"""Kaggle run-length encoding: pixels numbered from 1, top to bottom then left to right (column-major)."""

import re

import numpy as np

from steel_tpu.constants import HEIGHT, WIDTH

# Bytes a clean RLE string may hold; anything else takes the careful, token-by-token path.
_DIGITS_AND_SPACE = b"0123456789 \t\n\r\x0b\x0c"
_INTEGER = re.compile(r"-?[0-9]+")


class RleError(ValueError):
    """A malformed run-length string; callers add the file, line and image id."""


def parse_runs(rle, *, height=HEIGHT, width=WIDTH):
    """Validated (starts, lengths) int64 arrays of an RLE string (str or bytes); starts are 1-based.

    Runs must be sorted and must not overlap (touching runs are accepted); any problem raises RleError
    naming the first offending token or run.
    """
    text = _as_text(rle)
    values = _fast_values(text)
    if values is None or not _well_formed(values, height * width):
        values = _careful_values(text, height=height, width=width)
    return values[0::2], values[1::2]


def _as_text(rle):
    if isinstance(rle, bytes):
        return rle.decode("ascii", errors="replace")
    if not isinstance(rle, str):
        raise RleError(f"expected an RLE string, got {type(rle).__name__} {rle!r}")
    return rle


def _fast_values(text):
    """All integers of a string of ASCII digits and whitespace, or None when it holds anything else."""
    if not text.isascii():
        return None
    raw = text.encode("ascii")
    if raw.translate(None, _DIGITS_AND_SPACE):
        return None
    # C-speed text parsing. Its quirks all fail _well_formed and so take the careful path: a token too big for
    # int64 saturates (out of range), a blank string reads as one bogus number (odd count).
    return np.fromstring(raw, dtype=np.int64, sep=" ")


def _well_formed(values, pixels):
    if values.size % 2:
        return False
    if values.size == 0:
        return True
    starts, lengths = values[0::2], values[1::2]
    ends = starts + lengths  # one past each run's last pixel; cannot overflow once values <= pixels
    return bool(
        values.max() <= pixels
        and starts.min() >= 1
        and lengths.min() >= 1
        and ends[-1] <= pixels + 1
        and np.all(starts[1:] >= ends[:-1])
    )


def _careful_values(text, *, height, width):
    """Python-int parse of every token: returns the values, or raises RleError naming the first problem."""
    tokens = text.split()
    for i, token in enumerate(tokens):
        if not _INTEGER.fullmatch(token):
            raise RleError(f"token {i + 1} ({token!r}) is not an integer")
    if len(tokens) % 2:
        raise RleError(f"odd number of tokens ({len(tokens)}): an RLE is start/length pairs")
    values = [int(t) for t in tokens]
    pixels = height * width
    previous_last = 0
    for run, (start, length) in enumerate(zip(values[0::2], values[1::2]), start=1):
        last = start + length - 1
        if start < 1:
            raise RleError(f"run {run}: start {start} < 1 (pixels are numbered from 1)")
        if length < 1:
            raise RleError(f"run {run}: length {length} < 1")
        if last > pixels:
            raise RleError(
                f"run {run} (start {start}, length {length}) ends at pixel {last}, "
                f"past the {height}x{width} image ({pixels} pixels)"
            )
        if start <= previous_last:
            raise RleError(
                f"run {run} (start {start}) is unsorted or overlaps the run before it (which ends at pixel "
                f"{previous_last})"
            )
        previous_last = last
    return np.array(values, dtype=np.int64)


def decode(rle, *, height=HEIGHT, width=WIDTH):
    """A uint8 (height, width) mask of 0/1 from an RLE string ('' is the empty mask).

    The result is a column-major (Fortran-ordered) array, the RLE's own pixel order: no transposing copy.
    """
    starts, lengths = parse_runs(rle, height=height, width=width)
    # Boundaries 0, start, end, start, end, ..., pixels cut the flat mask into alternating 0 and 1 stretches;
    # np.repeat writes them in one C pass (a per-run Python loop or a cumsum both cost more).
    bounds = np.empty(2 * starts.size + 2, dtype=np.int64)
    bounds[0], bounds[-1] = 0, height * width
    bounds[1:-1:2] = starts - 1
    bounds[2:-1:2] = starts - 1 + lengths
    values = (np.arange(bounds.size - 1) & 1).astype(np.uint8)
    return np.repeat(values, np.diff(bounds)).reshape(width, height).T


def area(rle, *, height=HEIGHT, width=WIDTH):
    """Pixel count of an RLE string, without decoding it."""
    return int(parse_runs(rle, height=height, width=width)[1].sum())


def encode(mask):
    """The RLE string of a 2-D mask (nonzero = defect); '' for an empty mask."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"encode expects a 2-D (height, width) mask, got shape {mask.shape}")
    return _encode_groups(mask[None, :, :, None])[0]


def encode_batch(masks):
    """RLE strings of a batch: [N,H,W] masks -> N strings; [N,H,W,C] -> N lists of C strings.

    Vectorised: numpy finds the run edges of each image in one pass over its pixels, then one sort and one
    formatting pass serve the whole batch (no Python loop over runs or numbers).
    """
    masks = np.asarray(masks)
    if masks.ndim == 3:
        return _encode_groups(masks[..., None])
    if masks.ndim == 4:
        strings = _encode_groups(masks)
        channels = masks.shape[3]
        return [strings[i : i + channels] for i in range(0, len(strings), channels)]
    raise ValueError(f"encode_batch expects [N,H,W] or [N,H,W,C] masks, got shape {masks.shape}")


def _encode_groups(masks):
    """One RLE string per (image, channel) of [N,H,W,C] masks, image-major."""
    n, h, w, c = masks.shape
    if h < 1 or w < 1:
        raise ValueError(f"masks need at least one row and column, got shape {masks.shape}")
    span = h * w + 1  # positions 0..h*w of one mask, so keys of different masks never collide
    keys = [_edge_keys(mask, first_group=i * c, span=span) for i, mask in enumerate(masks)]
    key = keys[0] if n == 1 else np.concatenate([np.zeros(0, dtype=np.int64), *keys])
    if key.size == 0:
        return [""] * (n * c)
    key.sort()
    # A run through the bottom of column j and the top of column j+1 is one Kaggle run: its end edge and
    # start edge share a position; dropping both joins the halves. Most masks have none: test before masking.
    repeated = key[1:] == key[:-1]
    if repeated.any():
        keep = np.ones(key.size, dtype=bool)
        keep[1:] &= ~repeated
        keep[:-1] &= ~repeated
        key = key[keep]
    # Per-call numpy overhead is most of the cost of one mask's few hundred runs: a single group skips the split.
    group, position = (None, key) if n * c == 1 else _divmod(key, span)
    values = position.copy()
    values[1::2] -= position[0::2]
    values[0::2] += 1
    if group is None:
        return [_decimal_text(values)[0][:-1]]
    return _join_groups(values, group[0::2], n * c)


def _edge_keys(mask, *, first_group, span):
    """Sort keys (group * span + column-major position) of every run edge of one [H,W,C] mask."""
    h, w, c = mask.shape
    if mask.dtype != bool and not np.issubdtype(mask.dtype, np.integer):
        mask = mask != 0
    # Edges are found in the mask's own row-major layout (a transposing copy costs more than the rest), one image
    # at a time so the temporaries stay in the CPU cache, on rows packed 8 pixels a byte (packbits takes nonzero as
    # 1): the XOR of two packed rows marks changes 8 pixels at a time. Boundary row i in 0..h of a column marks a
    # change between rows i-1 and i, rows -1 and h being off.
    if (w * c) % 8 == 0 and mask.flags.c_contiguous:
        packed = np.packbits(mask.reshape(-1)).reshape(h, -1)  # one flat pass: faster than per row
    else:
        packed = np.packbits(mask.reshape(h, w * c), axis=1)  # rows padded with zero bits: no edges there
    row_bytes = packed.shape[1]
    edges = np.empty((h + 1, row_bytes), dtype=np.uint8)
    edges[0], edges[h] = packed[0], packed[h - 1]
    np.bitwise_xor(packed[1:], packed[:-1], out=edges[1:h])
    flat = edges.reshape(-1)
    # Edges are sparse (hundreds among 50k bytes): only the bytes that hold one are unpacked. `!= 0` first:
    # flatnonzero on a bool array is several times faster than on uint8.
    hit = np.flatnonzero(flat != 0)
    bit = np.flatnonzero(np.unpackbits(flat[hit]))
    byte = hit[bit >> 3]
    row = byte // row_bytes
    position = (byte - row * row_bytes) * 8 + (bit & 7)  # row-major index within the row: col * c + channel
    column, channel = (position, None) if c == 1 else _divmod(position, c)
    key = column * h + row
    if channel is not None:
        key += (channel + first_group) * span
    elif first_group:
        key += first_group * span
    return key


def _divmod(a, b):
    # Integer // by a scalar is fast in numpy (libdivide); % and np.divmod are several times slower.
    quotient = a // b
    return quotient, a - quotient * b


def _join_groups(values, run_group, num_groups):
    """' '.join of the positive `values` (two per run) for each group 0..num_groups-1."""
    if values.size == 0:
        return [""] * num_groups
    text, offsets = _decimal_text(values)
    value_bounds = 2 * np.searchsorted(run_group, np.arange(num_groups + 1))
    char_bounds = offsets[value_bounds].tolist()
    return [text[a : b - 1] if b > a else "" for a, b in zip(char_bounds[:-1], char_bounds[1:])]


def _decimal_text(values):
    """Every value in decimal followed by one space, as one string, and the offset where each value starts.

    Digits are computed column by column in numpy: str() per number is the slow part of encoding long masks.
    """
    digits = len(str(int(values.max())))
    chars = np.empty((values.size, digits + 1), dtype=np.uint8)
    keep = np.empty((values.size, digits + 1), dtype=bool)
    chars[:, digits], keep[:, digits] = ord(" "), True
    rest = values
    for k in range(digits - 1, -1, -1):
        rest, digit = _divmod(rest, 10)
        chars[:, k] = digit + ord("0")
        keep[:, k] = values >= 10 ** (digits - 1 - k)  # no leading zeros
    offsets = np.zeros(values.size + 1, dtype=np.int64)
    np.cumsum(keep.sum(axis=1), out=offsets[1:])
    return chars[keep].tobytes().decode("ascii"), offsets

