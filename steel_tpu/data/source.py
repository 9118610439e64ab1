"""Scan and validate a shard source (train.csv + train_images/, or a folder of test JPEGs), local or gs://."""

import hashlib
import posixpath
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from steel_tpu import kaggle, storage
from steel_tpu.constants import HEIGHT, WIDTH

TRAIN_CSV = "train.csv"
TRAIN_IMAGES = "train_images"
TEST_IMAGES = "test_images"
_JPEG_END = b"\xff\xd9"
# Some writers pad after the end-of-image marker; in entropy-coded data 0xFF is always stuffed, so the
# marker cannot occur there by chance and finding it in the tail is a sound truncation check.
_TAIL = 64


class SourceError(ValueError):
    """A source that cannot be sharded as it is; the message names the file or every bad image."""


@dataclass(frozen=True)
class Source:
    """The images to shard: id -> path and byte size, their labels (train only), and what was skipped."""

    split: str
    images_dir: str
    paths: dict[str, str]
    sizes: dict[str, int]
    labels: kaggle.Labels | None  # train: every image in `paths`, clean ones with empty RLEs
    csv_sha256: str | None
    skipped: tuple[tuple[str, str], ...]  # (image id, reason), sorted by id


def scan(data, *, split, workers, skip_bad):
    """Find and validate every image of the source; raise one SourceError naming all problems unless skip_bad."""
    images_dir, csv_path, found, labels = locate(data, split=split)
    listed = labels.image_ids if labels is not None else ()
    if not found and not listed:
        raise SourceError(f"{data}: empty source, no .jpg files in {images_dir}" + (f" and no rows in {csv_path}"
                                                                                     if csv_path else ""))
    problems = {i: f"listed in {csv_path} but missing from {images_dir}" for i in listed if i not in found}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        checks = dict(zip(found, pool.map(check_jpeg, found.values())))
    problems.update((i, problem) for i, (problem, _) in checks.items() if problem)
    if problems and not skip_bad:
        raise SourceError(describe_bad(problems, data))
    good = sorted(i for i in found if i not in problems)
    return Source(
        split=split,
        images_dir=images_dir,
        paths={i: found[i] for i in good},
        sizes={i: checks[i][1] for i in good},
        labels=labels.subset(good) if labels is not None else None,
        csv_sha256=hashlib.sha256(storage.read_bytes(csv_path)).hexdigest() if csv_path else None,
        skipped=tuple(sorted(problems.items())),
    )


def locate(data, *, split):
    """(images folder, CSV path or None, {image id: path} of its .jpg files, labels or None) of a source."""
    if split not in ("train", "test"):
        raise SourceError(f"split must be 'train' or 'test', got {split!r}")
    if split == "train":
        images_dir, csv_path = storage.join(data, TRAIN_IMAGES), storage.join(data, TRAIN_CSV)
        if not storage.exists(csv_path):
            raise SourceError(f"{csv_path}: not found (a train source holds {TRAIN_CSV} and {TRAIN_IMAGES}/)")
        labels = kaggle.read_labels(csv_path, height=HEIGHT, width=WIDTH)
    else:
        images_dir, csv_path, labels = _test_images_dir(data), None, None
    found = _list_jpegs(images_dir) if storage.isdir(images_dir) else {}
    return images_dir, csv_path, found, labels


def _test_images_dir(data):
    # A test source is a folder of JPEGs; a Kaggle-layout folder holding test_images/ is accepted too.
    nested = storage.join(data, TEST_IMAGES)
    return nested if storage.isdir(data) and not _list_jpegs(data) and storage.isdir(nested) else data


def _list_jpegs(folder):
    """{image id: path} of the .jpg files directly under `folder`."""
    return {posixpath.basename(p): p for p in storage.listdir(folder) if p.endswith(".jpg")}


def check_jpeg(path):
    """(problem or None, byte size): reads only the JPEG header and its tail, never decodes."""
    try:
        with storage.open(path, "rb") as f:
            image = Image.open(f)
            kind, (width, height) = image.format, image.size
            size = f.seek(0, 2)
            f.seek(max(size - _TAIL, 0))
            tail = f.read(_TAIL)
    except UnidentifiedImageError:
        return "not a JPEG (not an image format PIL knows)", 0
    except (OSError, SyntaxError) as e:  # PIL raises SyntaxError for some malformed headers
        return f"unreadable image ({type(e).__name__}: {e})", 0
    if kind != "JPEG":
        return f"not a JPEG ({kind})", size
    if (width, height) != (WIDTH, HEIGHT):
        return f"{width}x{height}, expected {WIDTH}x{HEIGHT}", size
    if _JPEG_END not in tail:
        return "truncated JPEG (no end-of-image marker)", size
    return None, size


def describe_bad(problems, data):
    lines = "; ".join(f"{i}: {reason}" for i, reason in sorted(problems.items()))
    return f"{len(problems)} bad image(s) in {data} (use --skip-bad to leave them out): {lines}"
