"""Scan and validate a shard source (train.csv + train_images/, or a folder of test JPEGs), local or gs://."""

import hashlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from steel_tpu import storage
from steel_tpu.constants import HEIGHT, WIDTH
from steel_tpu.formats import kaggle

TRAIN_CSV = "train.csv"
TRAIN_IMAGES = "train_images"
TEST_IMAGES = "test_images"
JPEG_SUFFIXES = (".jpg", ".jpeg")  # in any case: what a user calls a JPEG file


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

    def read_image(self, image_id):
        """The image's JPEG bytes as stored (the shard writer's one way in to a source, of any kind)."""
        return storage.read_bytes(self.paths[image_id])

    def manifest_extra(self):
        """Keys this kind of source adds to the manifest and the plan digest: none for a Kaggle layout."""
        return {}


def scan(data, *, split, workers, skip_bad):
    """Find and validate every image of the source; raise one SourceError naming all problems unless skip_bad."""
    images_dir, csv_path, found, labels = locate(data, split=split)
    listed = labels.image_ids if labels is not None else ()
    if not found and not listed:
        raise SourceError(f"{data}: empty source, no JPEG files (.jpg, .jpeg) in {images_dir}"
                          + (f" and no rows in {csv_path}" if csv_path else ""))
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
    """(images folder, CSV path or None, {image id: path} of its JPEG files, labels or None) of a source."""
    if split not in ("train", "test"):
        raise SourceError(f"split must be 'train' or 'test', got {split!r}")
    if split == "train":
        images_dir, csv_path = storage.join(data, TRAIN_IMAGES), storage.join(data, TRAIN_CSV)
        if not storage.exists(csv_path):
            raise SourceError(f"{csv_path}: not found (a train source holds {TRAIN_CSV} and {TRAIN_IMAGES}/)")
        labels = kaggle.read_labels(csv_path, height=HEIGHT, width=WIDTH)
    else:
        images_dir, csv_path, labels = _test_images_dir(data), None, None
    found = list_jpegs(images_dir) if storage.isdir(images_dir) else {}
    return images_dir, csv_path, found, labels


def _test_images_dir(data):
    # A test source is a folder of JPEGs; a Kaggle-layout folder holding test_images/ is accepted too.
    nested = storage.join(data, TEST_IMAGES)
    return nested if storage.isdir(data) and not list_jpegs(data) and storage.isdir(nested) else data


def is_jpeg_name(name):
    """The one rule for which files are images, in every command: .jpg or .jpeg in any case (.JPG, .Jpeg)."""
    return name.lower().endswith(JPEG_SUFFIXES)


def list_jpegs(folder):
    """{image id: path} of the JPEG files directly under `folder` (a literal listing: the path is no pattern);
    an image's id is its file name as it is."""
    return {n: storage.join(folder, n) for n in sorted(storage.list_files(folder)) if is_jpeg_name(n)}


def check_jpeg(path):
    """(problem or None, byte size) of one image file, decoded the way the pipeline decodes it."""
    # Imported here: listing images (evaluate, locate) must not load TensorFlow; checking them does.
    from steel_tpu.data import jpeg_check

    data = storage.read_bytes(path)
    return jpeg_check.problem(data), len(data)




def describe_bad(problems, data):
    lines = "; ".join(f"{i}: {reason}" for i, reason in sorted(problems.items()))
    return f"{len(problems)} bad image(s) in {data} (use --skip-bad to leave them out): {lines}"
