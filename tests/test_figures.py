"""Label figures: each returns a decodable PNG of a sensible size; the grid draws masks in the class colours."""

import io

import numpy as np
import pytest
from PIL import Image

from steel_tpu.formats import rle
from steel_tpu.formats.kaggle import EMPTY, Labels
from steel_tpu.reports import figures

H, W = 64, 320


def decode_png(data):
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    assert image.width >= 400 and image.height >= 150
    return np.asarray(image.convert("RGB")).astype(np.int32)


def reddish(pixels):
    """Pixels where class 1's colour dominates (gray steel and black text never do)."""
    r, g, b = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    return int(((r - g > 60) & (r - b > 60)).sum())


@pytest.fixture(scope="module")
def labels():
    block = np.zeros((H, W), np.uint8)
    block[10:50, 40:200] = 1
    return Labels.from_mapping({
        "a.jpg": (rle.encode(block), "", "", ""),
        "b.jpg": ("", rle.encode(block[:, ::-1].copy()), rle.encode(block), ""),
        "c.jpg": EMPTY,
    })


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory, labels):
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for image_id in labels.image_ids:
        gray = rng.integers(60, 140, (H, W), dtype=np.uint8)
        Image.fromarray(np.stack([gray] * 3, axis=-1)).save(folder / image_id, quality=90)
    return str(folder)


def test_class_distribution(labels):
    decode_png(figures.class_distribution(labels))


def test_class_distribution_of_clean_images_only():
    decode_png(figures.class_distribution(Labels.from_mapping({"a.jpg": EMPTY, "b.jpg": EMPTY})))


def test_area_histograms_with_absent_classes(labels):
    decode_png(figures.area_histograms(labels, height=H, width=W))


def test_label_grid_outlines_truth_and_fills_predictions(image_dir, labels):
    outlined = decode_png(figures.label_grid(image_dir, labels.image_ids, labels=labels))
    predicted = Labels.from_mapping({i: labels.rles["a.jpg"] for i in labels.image_ids})
    filled = decode_png(figures.label_grid(image_dir, labels.image_ids, labels=labels, predicted=predicted))
    assert outlined.shape == filled.shape
    # A filled class-1 block on all three rows colours far more pixels red than one outline does.
    assert reddish(filled) > 3 * reddish(outlined) > 0


def test_label_grid_names_a_missing_image(image_dir, labels):
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        figures.label_grid(image_dir, ["nope.jpg"], labels=Labels.from_mapping({"nope.jpg": EMPTY}))
