"""Kaggle Severstal CSVs (current and legacy layouts): read and validate labels, write submissions."""

import csv
import io
from dataclasses import dataclass

import numpy as np

from steel_tpu import storage
from steel_tpu.constants import CLASS_IDS, HEIGHT, NUM_CLASSES, WIDTH
from steel_tpu.formats.rle import RleError, area, decode, parse_runs

CURRENT_COLUMNS = ("ImageId", "ClassId", "EncodedPixels")
LEGACY_COLUMNS = ("ImageId_ClassId", "EncodedPixels")
SUBMISSION_COLUMNS = ("ImageId", "EncodedPixels", "ClassId")  # the column order of Kaggle's sample_submission
EMPTY = ("",) * NUM_CLASSES


# The csv module refuses fields over 128 KiB by default, but a valid RLE can be far longer: a noisy mask (an
# untrained model, a low threshold) on a 1600x256 image has up to 204,800 runs, ~1.8 MB of text. The limit is
# process-wide, so it is only ever raised, to the largest value every platform's C long holds.
_FIELD_LIMIT = 2**31 - 1


def csv_reader(text):
    """csv.reader over `text` (an iterable of lines) that accepts an RLE of any length."""
    if csv.field_size_limit() < _FIELD_LIMIT:
        csv.field_size_limit(_FIELD_LIMIT)
    return csv.reader(text)


class CsvError(ValueError):
    """A bad Kaggle CSV; the message names the file, the line (header = line 1) and the image id."""


def image_id_problem(image_id):
    """Why `image_id` is not a usable image file name, or None if it is."""
    if not image_id:
        return "empty image id"
    if "/" in image_id or "\\" in image_id:
        return f"image id {image_id!r} contains a path separator"
    if ".." in image_id:
        return f"image id {image_id!r} contains '..'"
    return None


@dataclass(frozen=True)
class Labels:
    """Every image a CSV mentions, in first-appearance order, with one RLE per class ('' = absent)."""

    image_ids: tuple[str, ...]
    rles: dict[str, tuple[str, str, str, str]]

    def __post_init__(self):
        object.__setattr__(self, "image_ids", tuple(self.image_ids))
        object.__setattr__(self, "rles", {k: tuple(v) for k, v in self.rles.items()})
        if len(set(self.image_ids)) != len(self.image_ids):
            raise ValueError("Labels: image_ids has duplicates")
        if set(self.rles) != set(self.image_ids):
            odd = sorted(set(self.rles) ^ set(self.image_ids))[:3]
            raise ValueError(f"Labels: rles keys and image_ids differ (e.g. {odd})")
        for image_id, rles in self.rles.items():
            problem = image_id_problem(image_id)
            if problem:
                raise ValueError(f"Labels: {problem}")
            if len(rles) != NUM_CLASSES:
                raise ValueError(f"Labels: image {image_id} has {len(rles)} RLEs, expected {NUM_CLASSES}")

    @classmethod
    def from_mapping(cls, mapping):
        """Labels from an ordered mapping image id -> NUM_CLASSES RLE strings."""
        return cls(image_ids=tuple(mapping), rles=dict(mapping))

    def present(self, image_id):
        """Class ids (1-based) with a non-empty mask on this image."""
        return tuple(c for c, rle in zip(CLASS_IDS, self.rles[image_id]) if rle)

    def areas(self, image_id, *, height=HEIGHT, width=WIDTH):
        """Defect pixel count per class on this image."""
        return tuple(area(rle, height=height, width=width) for rle in self.rles[image_id])

    def masks(self, image_id, *, height=HEIGHT, width=WIDTH):
        """The decoded masks of this image as bool [height, width, NUM_CLASSES]."""
        return np.stack([decode(rle, height=height, width=width) for rle in self.rles[image_id]], axis=-1).astype(bool)

    def first_of_each_class(self):
        """The first image carrying each class, then the first clean image (those that exist, each once)."""
        firsts = [next((i for i in self.image_ids if c in self.present(i)), None) for c in CLASS_IDS]
        clean = next((i for i in self.image_ids if not self.present(i)), None)
        return tuple(dict.fromkeys(i for i in (*firsts, clean) if i))

    def subset(self, image_ids):
        """Labels for exactly these images, in this order; an image not listed here is clean
        (train.csv lists defect rows only, so absence means no defect)."""
        return Labels.from_mapping({i: self.rles.get(i, EMPTY) for i in image_ids})


def _where(name, line, image_id=None):
    return f"{name} line {line}" + (f" (image {image_id})" if image_id else "")


def _layout(name, header):
    """CURRENT_COLUMNS or LEGACY_COLUMNS for a header row, else a CsvError saying what was expected."""
    columns = [c.strip() for c in header]
    for layout in (CURRENT_COLUMNS, LEGACY_COLUMNS):
        if sorted(columns) == sorted(layout):
            return layout
    closest = LEGACY_COLUMNS if "ImageId_ClassId" in columns else CURRENT_COLUMNS
    missing = [c for c in closest if c not in columns]
    unexpected = [c for c in columns if c not in closest]
    raise CsvError(
        f"{name} line 1: columns {','.join(columns)} are not a Kaggle layout "
        f"(missing: {missing or 'none'}; unexpected: {unexpected or 'none'}); expected "
        f"{','.join(CURRENT_COLUMNS)} (any order) or {','.join(LEGACY_COLUMNS)}"
    )


def _key(name, line, layout, row):
    """(image id, class text) of one row in either layout."""
    if layout == CURRENT_COLUMNS:
        return row["ImageId"].strip(), row["ClassId"].strip()
    key = row["ImageId_ClassId"].strip()
    image_id, sep, class_text = key.rpartition("_")
    if not sep:
        raise CsvError(f"{_where(name, line)}: ImageId_ClassId {key!r} is not IMAGE_CLASS (like 0002cc93b.jpg_1)")
    return image_id, class_text


def _class_id(where, text):
    try:
        class_id = int(text)
    except ValueError:
        # Cut short: swapped columns put a whole RLE here, and the error must stay one readable line.
        shown = text if len(text) <= 40 else text[:40] + "..."
        raise CsvError(f"{where}: class {shown!r} is not an integer (are the columns swapped?)") from None
    if class_id not in CLASS_IDS:
        raise CsvError(f"{where}: class {class_id} outside {CLASS_IDS[0]}..{CLASS_IDS[-1]}")
    return class_id


def _rows(name, text):
    """(line number, dict row, layout) for every non-blank data row of a CSV text stream."""
    reader = csv_reader(text)
    try:
        header = next(reader, None)
        if header is None:
            raise CsvError(f"{name}: empty file; expected header {','.join(CURRENT_COLUMNS)}")
        layout = _layout(name, header)
        columns = [c.strip() for c in header]
        for fields in reader:
            if not any(f.strip() for f in fields):
                continue
            if len(fields) != len(columns):
                raise CsvError(f"{_where(name, reader.line_num)}: {len(fields)} fields, expected {len(columns)}")
            yield reader.line_num, dict(zip(columns, fields)), layout
    except csv.Error as e:
        raise CsvError(f"{_where(name, reader.line_num)}: {e}") from None
    except UnicodeDecodeError as e:
        raise CsvError(f"{name} after line {reader.line_num}: not UTF-8 text ({e.reason})") from None


def read_labels(path, *, height=HEIGHT, width=WIDTH):
    """Labels from a train.csv or submission CSV in either layout (local or gs://), fully validated."""
    name = str(path)
    rles = {}
    first_line = {}
    try:
        raw = storage.open(path, "rb")
    except FileNotFoundError:
        raise FileNotFoundError(f"{name}: no such labels CSV") from None
    with raw:
        # utf-8-sig: spreadsheet exports often start with a BOM that would otherwise join the first column name.
        text = io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")
        for line, row, layout in _rows(name, text):
            image_id, class_text = _key(name, line, layout, row)
            where = _where(name, line, image_id)
            problem = image_id_problem(image_id)
            if problem:
                raise CsvError(f"{where}: {problem}")
            class_id = _class_id(where, class_text)
            first = first_line.get((image_id, class_id))
            if first:
                raise CsvError(f"{where}: class {class_id} listed twice (first on line {first})")
            first_line[image_id, class_id] = line
            rle = " ".join(row["EncodedPixels"].split())
            try:
                parse_runs(rle, height=height, width=width)
            except RleError as e:
                raise CsvError(f"{where}: class {class_id}: bad EncodedPixels: {e}") from None
            rles.setdefault(image_id, list(EMPTY))[class_id - 1] = rle
    return Labels.from_mapping(rles)


def _write_csv(path, header, rows):
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    storage.write_text(path, buffer.getvalue())


SUBMISSION_HEADER = ",".join(SUBMISSION_COLUMNS) + "\n"


def submission_rows(rows):
    """The submission's CSV lines (no header) of `rows` [(image id, one RLE per class)]: one line per image x class,
    in the current layout. Every submission writer writes its rows with this (predict's chunks, Beam, Python)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    for image_id, rles in rows:
        writer.writerows((image_id, rle, c) for c, rle in zip(CLASS_IDS, rles))
    return buffer.getvalue()


def write_submission(path, labels, *, layout="current"):
    """A Kaggle submission with one row for every image x class, in `labels` order (atomic, local or gs://).

    layout="current": ImageId,EncodedPixels,ClassId; layout="legacy": ImageId_ClassId,EncodedPixels.
    """
    if layout == "current":
        rows = [(i, labels.rles[i]) for i in labels.image_ids]
        storage.write_text(path, SUBMISSION_HEADER + submission_rows(rows))
    elif layout == "legacy":
        pairs = [(i, c, rle) for i in labels.image_ids for c, rle in zip(CLASS_IDS, labels.rles[i])]
        _write_csv(path, LEGACY_COLUMNS, [(f"{i}_{c}", rle) for i, c, rle in pairs])
    else:
        raise ValueError(f"layout {layout!r}: expected 'current' or 'legacy'")


def write_train_csv(path, labels):
    """Kaggle's train.csv: ImageId,ClassId,EncodedPixels, defect rows only (atomic, local or gs://)."""
    rows = [(i, c, rle) for i in labels.image_ids for c, rle in zip(CLASS_IDS, labels.rles[i]) if rle]
    _write_csv(path, CURRENT_COLUMNS, rows)
