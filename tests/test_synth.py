"""Tests for steel_tpu.data.synth: file layout, determinism, label statistics and visibly different defects."""

import os
import re

import numpy as np
import pytest
from PIL import Image

from steel_tpu.constants import CLASS_IDS, HEIGHT, WIDTH
from steel_tpu.data import synth
from steel_tpu.formats import kaggle, rle
from steel_tpu.formats.outputs import OutputError

N_TRAIN, N_TEST = 250, 10
ID_PATTERN = re.compile(r"[0-9a-f]{9}\.jpg")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """One few-hundred-image data set shared by the layout, statistics and visibility tests."""
    out = tmp_path_factory.mktemp("synth")
    summary = synth.synthesize(out, n_train=N_TRAIN, n_test=N_TEST, seed=7)
    labels = {"train": kaggle.read_labels(out / "train.csv"), "test": kaggle.read_labels(out / "test_truth.csv")}
    return out, summary, labels


def _files(root):
    """Relative path -> bytes of every file under `root`."""
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _gray_half(path):
    """The image at 128x800, the resolution a small model trains at (JPEG DCT scaling decodes it directly)."""
    with Image.open(path) as image:
        image.draft("L", (WIDTH // 2, HEIGHT // 2))
        return np.asarray(image.convert("L"), dtype=np.float32)


def test_layout_ids_and_jpegs(dataset):
    out, _, _ = dataset
    train, test = sorted(os.listdir(out / "train_images")), sorted(os.listdir(out / "test_images"))
    assert sorted(os.listdir(out)) == ["test_images", "test_truth.csv", "train.csv", "train_images"]
    assert (len(train), len(test)) == (N_TRAIN, N_TEST)
    assert all(ID_PATTERN.fullmatch(i) for i in train + test)
    assert len(set(train) | set(test)) == N_TRAIN + N_TEST
    for split, names in (("train", train[:3]), ("test", test[:2])):
        for name in names:
            with Image.open(out / f"{split}_images" / name) as image:
                assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (WIDTH, HEIGHT))
                pixels = np.asarray(image, dtype=np.int16)
            # Grayscale stored as three channels, equal up to JPEG rounding.
            assert np.abs(pixels - pixels[..., :1]).max() <= 2


def test_csvs_match_images_masks_and_summary(dataset):
    out, summary, labels = dataset
    counts = dict.fromkeys(CLASS_IDS, 0)
    areas = {c: [] for c in CLASS_IDS}
    for split in ("train", "test"):
        assert set(labels[split].image_ids) <= set(os.listdir(out / f"{split}_images"))
        for image_id in labels[split].image_ids:
            present = labels[split].present(image_id)
            assert present, f"{image_id} is listed without a defect"
            for class_id in present:
                mask = rle.decode(labels[split].rles[image_id][class_id - 1])
                assert mask.shape == (HEIGHT, WIDTH)
                counts[class_id] += 1
                areas[class_id].append(int(mask.sum()))
    n_defective = len(labels["train"].image_ids) + len(labels["test"].image_ids)
    assert summary["images_per_class"] == counts
    assert summary["clean_fraction"] == pytest.approx(1 - n_defective / (N_TRAIN + N_TEST))
    assert summary["area_range"] == {c: (min(a), max(a)) for c, a in areas.items()}


def test_class_frequencies_look_like_severstal(dataset):
    _, summary, _ = dataset
    per_class = summary["images_per_class"]
    assert 0.35 <= summary["clean_fraction"] <= 0.6
    assert max(per_class, key=per_class.get) == 3
    assert min(per_class, key=per_class.get) == 2
    assert 0 < summary["multi_class_fraction"] < 0.25
    # Class 3 and 4 masks are large, class 1 and 2 small, as in Severstal.
    median = summary["median_area"]
    assert max(median[1], median[2]) < min(median[3], median[4])


def _defect_features(image, masks):
    """Per present class: (mean inside - mean clean, |d/dx| ratio, |d/dy| ratio, high-pass ratio), inside vs clean."""
    gx = np.abs(np.diff(image, axis=1))[:-1]
    gy = np.abs(np.diff(image, axis=0))[:, :-1]
    # High-pass: each pixel against its 5x5 neighbourhood mean (box blur by cumulative sums).
    padded = np.pad(image, 2, mode="edge").cumsum(0).cumsum(1)
    padded = np.pad(padded, ((1, 0), (1, 0)))
    blur = (padded[5:, 5:] - padded[:-5, 5:] - padded[5:, :-5] + padded[:-5, :-5]) / 25
    high = np.abs(image - blur)
    clean = ~np.any(list(masks.values()), axis=0)
    features = {}
    for class_id, mask in masks.items():
        inner = mask[:-1, :-1]
        features[class_id] = (
            image[mask].mean() - image[clean].mean(),
            gx[inner].mean() / gx[clean[:-1, :-1]].mean(),
            gy[inner].mean() / gy[clean[:-1, :-1]].mean(),
            high[mask].mean() / high[clean].mean(),
        )
    return features


def test_defects_are_visible_and_distinct(dataset):
    out, _, labels = dataset
    features = {c: [] for c in CLASS_IDS}
    for image_id in labels["train"].image_ids:
        image = _gray_half(out / "train_images" / image_id)
        rles = labels["train"].rles[image_id]
        masks = {c: rle.decode(rles[c - 1])[::2, ::2].astype(bool) for c in labels["train"].present(image_id)}
        for class_id, values in _defect_features(image, masks).items():
            features[class_id].append(values)
    medians = np.array([np.median(np.array(features[c]), axis=0) for c in CLASS_IDS])
    darker, x_edges, y_edges, texture = medians.T
    # Class 4 is dark blotches: much darker than the clean steel and than every other class.
    assert darker[3] < -15 and darker[3] < min(darker[:3]) - 10
    # Class 1 pits: strongest fine texture, in both directions.
    assert texture[0] > 2 and x_edges[0] > 2 and y_edges[0] > 2
    # Class 2 vertical scratches: edges across x dominate; class 3 horizontal streaks: edges across y dominate.
    assert x_edges[1] > 1.5 * y_edges[1]
    assert y_edges[2] > 2 and y_edges[2] > 1.5 * x_edges[2]


def test_same_seed_same_bytes_and_split_size_independent(tmp_path):
    a = synth.synthesize(tmp_path / "a", n_train=4, n_test=2, seed=3)
    b = synth.synthesize(tmp_path / "b", n_train=4, n_test=2, seed=3)
    files_a, files_b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert a == b and files_a == files_b
    # A smaller request from the same seed is a prefix: same images, same bytes.
    synth.synthesize(tmp_path / "c", n_train=2, n_test=1, seed=3)
    images_c = {k: v for k, v in _files(tmp_path / "c").items() if k.endswith(".jpg")}
    assert len(images_c) == 3 and all(files_a.get(k) == v for k, v in images_c.items())


def test_different_seed_different_data(tmp_path):
    synth.synthesize(tmp_path / "a", n_train=3, n_test=1, seed=3)
    synth.synthesize(tmp_path / "b", n_train=3, n_test=1, seed=4)
    files_a, files_b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert not {k for k in files_a if k.endswith(".jpg")} & {k for k in files_b if k.endswith(".jpg")}
    jpegs_a = {v for k, v in files_a.items() if k.endswith(".jpg")}
    assert jpegs_a.isdisjoint(v for k, v in files_b.items() if k.endswith(".jpg"))


def test_render_gives_coarse_boolean_masks_of_every_class():
    rng = np.random.default_rng(11)
    seen = set()
    while seen != set(CLASS_IDS):
        image, masks = synth.render(rng)
        assert image.shape == (HEIGHT, WIDTH) and image.dtype == np.uint8
        for class_id, mask in masks.items():
            assert mask.dtype == bool and mask.any()
            # Coarse regions: every mask is one or a few blobs, never the whole image.
            assert mask.mean() < 0.5
        seen |= set(masks)


@pytest.mark.parametrize("options", [{"n_train": -1}, {"n_test": 2.5}, {"seed": -3}])
def test_bad_arguments_are_refused_by_name(tmp_path, options):
    with pytest.raises(ValueError, match=next(iter(options))):
        synth.synthesize(tmp_path, **options)
    assert not os.listdir(tmp_path)


def test_refuses_a_directory_holding_earlier_images(tmp_path):
    synth.synthesize(tmp_path, n_train=1, n_test=0, seed=0)
    with pytest.raises(OutputError, match="train_images"):
        synth.synthesize(tmp_path, n_train=1, n_test=0, seed=1)


@pytest.mark.parametrize("class_id", CLASS_IDS)
def test_each_defect_lies_inside_its_mask(class_id):
    rng = np.random.default_rng(class_id)
    for _ in range(10):
        delta, region = synth._SHAPES[class_id](rng)
        assert delta.shape == region.shape and region.any()
        # Coarse labels: the mask surrounds everything the defect changes (by more than a grey level).
        assert np.abs(delta[~region]).max(initial=0) < 1
        assert np.abs(delta[region]).max() > 30
