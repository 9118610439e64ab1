"""Kaggle CSV layouts: validation errors name file, line and image; both layouts round-trip through write/read."""

import csv

import numpy as np
import pytest

from steel_tpu.formats import rle, submission
from steel_tpu.formats.kaggle import (
    EMPTY,
    CsvError,
    Labels,
    read_labels,
    write_submission,
    write_train_csv,
)

H, W = 32, 64
CURRENT = "ImageId,ClassId,EncodedPixels\n"
LEGACY = "ImageId_ClassId,EncodedPixels\n"


def random_labels(seed, n_images=8, *, height=H, width=W):
    """Labels with rectangle masks on some classes, some clean images, ids shaped like Kaggle's."""
    rng = np.random.default_rng(seed)
    mapping = {}
    for k in range(n_images):
        rles = []
        for _ in range(4):
            mask = np.zeros((height, width), np.uint8)
            if rng.random() < 0.4:
                for _ in range(rng.integers(1, 4)):
                    y, x = rng.integers(0, height), rng.integers(0, width)
                    mask[y : y + rng.integers(1, 12), x : x + rng.integers(1, 20)] = 1
            rles.append(rle.encode(mask))
        mapping[f"{rng.integers(16**9):09x}_{k}.jpg"] = tuple(rles)
    return Labels.from_mapping(mapping)


def write(tmp_path, text, name="labels.csv"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def rle_error(bad_rle, *, height=256, width=1600):
    with pytest.raises(rle.RleError) as info:
        rle.parse_runs(bad_rle, height=height, width=width)
    return str(info.value)


@pytest.mark.parametrize("layout", ["current", "legacy"])
def test_submission_round_trips(tmp_path, layout):
    labels = random_labels(seed=1)
    assert any(any(r) for r in labels.rles.values()) and any(not any(r) for r in labels.rles.values())
    path = str(tmp_path / "sub.csv")
    write_submission(path, labels, layout=layout)
    assert read_labels(path, height=H, width=W) == labels


def test_submission_file_has_every_image_x_class_in_order(tmp_path):
    labels = Labels.from_mapping({"b.jpg": ("", "1 3", "", ""), "a.jpg": EMPTY})
    current, legacy = str(tmp_path / "current.csv"), str(tmp_path / "legacy.csv")
    write_submission(current, labels)
    write_submission(legacy, labels, layout="legacy")
    assert open(current).read().splitlines() == [
        "ImageId,EncodedPixels,ClassId",
        "b.jpg,,1", "b.jpg,1 3,2", "b.jpg,,3", "b.jpg,,4",
        "a.jpg,,1", "a.jpg,,2", "a.jpg,,3", "a.jpg,,4",
    ]  # fmt: skip
    assert open(legacy).read().splitlines()[:3] == ["ImageId_ClassId,EncodedPixels", "b.jpg_1,", "b.jpg_2,1 3"]


def test_write_submission_rejects_unknown_layout(tmp_path):
    with pytest.raises(ValueError, match="'kaggle'"):
        write_submission(str(tmp_path / "s.csv"), random_labels(seed=0), layout="kaggle")
    assert not (tmp_path / "s.csv").exists()


def test_train_csv_keeps_defect_rows_only(tmp_path):
    labels = random_labels(seed=2, n_images=12)
    path = str(tmp_path / "train.csv")
    write_train_csv(path, labels)
    lines = open(path).read().splitlines()
    assert lines[0] == "ImageId,ClassId,EncodedPixels"
    assert len(lines) - 1 == sum(bool(r) for rles in labels.rles.values() for r in rles)
    back = read_labels(path, height=H, width=W)
    defective = [i for i in labels.image_ids if any(labels.rles[i])]
    assert back.image_ids == tuple(defective)
    assert back.subset(labels.image_ids) == labels


def test_any_column_order_blank_lines_bom_crlf_and_quotes(tmp_path):
    text = '\ufeffEncodedPixels,ImageId,ClassId\r\n"1 2 5 3",x.jpg,3\r\n\r\n,y.jpg,1\r\n 9 2 ,x.jpg,1\r\n'
    labels = read_labels(write(tmp_path, text), height=H, width=W)
    assert labels.image_ids == ("x.jpg", "y.jpg")
    assert labels.rles == {"x.jpg": ("9 2", "", "1 2 5 3", ""), "y.jpg": EMPTY}


def test_ids_stay_strings(tmp_path):
    labels = read_labels(write(tmp_path, CURRENT + "0001,1,1 2\n1e5,2,3 1\n"))
    assert labels.image_ids == ("0001", "1e5")


def test_legacy_layout_reads_four_rows_an_image(tmp_path):
    text = LEGACY + "a.jpg_1,\na.jpg_2,\na.jpg_3,1 4\na.jpg_4,\nb.jpg_1,\nb.jpg_2,\nb.jpg_3,\nb.jpg_4,\n"
    labels = read_labels(write(tmp_path, text))
    assert labels.image_ids == ("a.jpg", "b.jpg")
    assert labels.present("a.jpg") == (3,) and labels.present("b.jpg") == ()


ERRORS = [
    ("ImageId,EncodedPixels\na.jpg,1 2\n", ["line 1", "missing: ['ClassId']", "ImageId,ClassId,EncodedPixels"]),
    ("ImageId,ClassId,EncodedPixels,X\n", ["line 1", "unexpected: ['X']", "ImageId_ClassId,EncodedPixels"]),
    ("", ["empty file", "ImageId,ClassId,EncodedPixels"]),
    (CURRENT + "a.jpg,1,1 2\n0002cc93b.jpg,5,1 2\n", ["line 3 (image 0002cc93b.jpg): class 5 outside 1..4"]),
    (CURRENT + "a.jpg,0,1 2\n", ["line 2 (image a.jpg): class 0 outside 1..4"]),
    (CURRENT + "a.jpg,x,1 2\n", ["line 2 (image a.jpg): class 'x' is not an integer"]),
    (CURRENT + "a.jpg,1.0,1 2\n", ["line 2 (image a.jpg): class '1.0' is not an integer"]),
    (CURRENT + "a.jpg,2,\nb.jpg,1,\na.jpg,2,5 1\n", ["line 4 (image a.jpg): class 2 listed twice (first on line 2)"]),
    (CURRENT + "a.jpg,2,\na.jpg,2,\n", ["line 3 (image a.jpg): class 2 listed twice"]),
    (CURRENT + "imgs/a.jpg,1,1 2\n", ["line 2 (image imgs/a.jpg)", "path separator"]),
    (CURRENT + "imgs\\a.jpg,1,1 2\n", ["line 2 (image imgs\\a.jpg)", "path separator"]),
    (CURRENT + "..,1,1 2\n", ["line 2 (image ..)", "contains '..'"]),
    (CURRENT + " ,1,1 2\n", ["line 2: empty image id"]),
    (CURRENT + "a.jpg,1,1 2\na.jpg,2\n", ["line 3: 2 fields, expected 3"]),
    (CURRENT + "a.jpg,1,1 2\n\n\nb.jpg,9,1 2\n", ["line 5 (image b.jpg): class 9"]),
    (LEGACY + "a.jpg_1,\nabc.jpg,1 2\n", ["line 3: ImageId_ClassId 'abc.jpg' is not IMAGE_CLASS"]),
    (LEGACY + "abc.jpg_7,1 2\n", ["line 2 (image abc.jpg): class 7 outside 1..4"]),
    (LEGACY + "abc.jpg_1,1 2\nabc.jpg_1,\n", ["line 3 (image abc.jpg): class 1 listed twice (first on line 2)"]),
]


@pytest.mark.parametrize("text,expected", ERRORS)
def test_validation_errors_name_file_line_and_image(tmp_path, text, expected):
    path = write(tmp_path, text, name="train.csv")
    with pytest.raises(CsvError) as info:
        read_labels(path)
    message = str(info.value)
    assert message.startswith(path)
    for part in expected:
        assert part in message


@pytest.mark.parametrize("bad_rle", ["1 2 3", "1 x", "10 2 5 2", "5 3 7 1", "0 2", "3 0", "409600 2"])
def test_malformed_rle_carries_the_rle_error(tmp_path, bad_rle):
    path = write(tmp_path, CURRENT + "ok.jpg,1,1 2\n0002cc93b.jpg,4," + bad_rle + "\n", name="train.csv")
    with pytest.raises(CsvError) as info:
        read_labels(path)
    assert str(info.value) == f"{path} line 3 (image 0002cc93b.jpg): class 4: bad EncodedPixels: {rle_error(bad_rle)}"


def test_run_past_the_end_depends_on_the_image_size(tmp_path):
    path = write(tmp_path, CURRENT + "a.jpg,1,2039 10\n")
    assert read_labels(path, height=H, width=W).areas("a.jpg", height=H, width=W) == (10, 0, 0, 0)
    with pytest.raises(CsvError, match=r"line 2 \(image a.jpg\).*bad EncodedPixels"):
        read_labels(path, height=H, width=W // 2)


def test_non_utf8_file_is_a_csv_error(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_bytes(CURRENT.encode() + b"a.jpg,1,1 2\n\xff\xfe,1,1 2\n")
    with pytest.raises(CsvError, match="not UTF-8"):
        read_labels(str(path))


def test_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.csv: no such labels CSV"):
        read_labels(str(tmp_path / "nope.csv"))


def test_labels_helpers():
    labels = Labels.from_mapping({"a.jpg": ("1 4", "", "10 2 20 3", ""), "b.jpg": EMPTY})
    assert labels.present("a.jpg") == (1, 3)
    assert labels.areas("a.jpg") == (4, 0, 5, 0)
    sub = labels.subset(["c.jpg", "a.jpg"])
    assert sub.image_ids == ("c.jpg", "a.jpg")
    assert sub.rles == {"c.jpg": EMPTY, "a.jpg": labels.rles["a.jpg"]}


def test_masks_decode_every_class_in_kaggle_pixel_order():
    # Kaggle numbers pixels down the columns: "2 3" on a 4-row image is rows 1-3 of column 0.
    labels = Labels.from_mapping({"a.jpg": ("2 3", "", "5 4", "1 1 8 1")})
    masks = labels.masks("a.jpg", height=4, width=2)
    assert masks.dtype == bool and masks.shape == (4, 2, 4)
    expected = np.zeros((4, 2, 4), bool)
    expected[1:4, 0, 0] = True
    expected[:, 1, 2] = True
    expected[0, 0, 3] = expected[3, 1, 3] = True
    np.testing.assert_array_equal(masks, expected)


def test_masks_round_trip_random_labels():
    rng = np.random.default_rng(5)
    truth = rng.random((H, W, 4)) < 0.3
    truth[..., 1] = False  # an absent class decodes to an all-False plane
    labels = Labels.from_mapping({"a.jpg": tuple(rle.encode(truth[..., c]) for c in range(4))})
    np.testing.assert_array_equal(labels.masks("a.jpg", height=H, width=W), truth)
    assert labels.masks("a.jpg").shape == (256, 1600, 4)


def test_first_of_each_class_then_a_clean_image():
    labels = Labels.from_mapping({"clean1": EMPTY, "c3": ("", "", "1 2", ""), "c13": ("1 1", "", "5 1", ""),
                                  "c1": ("3 1", "", "", ""), "clean2": EMPTY})
    assert labels.first_of_each_class() == ("c13", "c3", "clean1")
    assert Labels.from_mapping({"x": EMPTY}).first_of_each_class() == ("x",)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"image_ids": ("a", "a"), "rles": {"a": EMPTY}}, "duplicates"),
        ({"image_ids": ("a",), "rles": {"b": EMPTY}}, "differ"),
        ({"image_ids": ("a",), "rles": {"a": ("", "")}}, "has 2 RLEs"),
        ({"image_ids": ("x/a",), "rles": {"x/a": EMPTY}}, "path separator"),
    ],
)
def test_labels_rejects_inconsistent_fields(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Labels(**kwargs)


@pytest.mark.parametrize("layout", ["current", "legacy"])
def test_gcs_round_trip_and_errors(gcs_bucket, layout):
    labels = random_labels(seed=3, n_images=4)
    path = f"{gcs_bucket}/out/sub.csv"
    write_submission(path, labels, layout=layout)
    assert read_labels(path, height=H, width=W) == labels
    bad = f"{gcs_bucket}/bad.csv"
    write_train_csv(bad, Labels.from_mapping({"a.jpg": ("1 4000", "", "", "")}))
    with pytest.raises(CsvError, match=f"^{bad} line 2 \\(image a.jpg\\): class 1: bad EncodedPixels"):
        read_labels(bad, height=H, width=W)
    with pytest.raises(FileNotFoundError, match=f"^{gcs_bucket}/nope.csv: no such labels CSV"):
        read_labels(f"{gcs_bucket}/nope.csv")


def noisy_full_size_rles():
    """A checkerboard on a 1600x256 image (204,800 runs, ~1.8 MB of RLE: what an untrained model can draw) on
    class 2, a small mask on class 3."""
    checker = (np.add.outer(np.arange(256), np.arange(1600)) % 2).astype(np.uint8)
    small = np.zeros((256, 1600), np.uint8)
    small[3:9, 10:40] = 1
    return ("", rle.encode(checker), rle.encode(small), "")


@pytest.fixture
def default_csv_field_limit():
    # The limit is process-wide: start from the csv module's default so an earlier test cannot hide the bug.
    old = csv.field_size_limit(128 * 1024)
    yield
    csv.field_size_limit(old)


@pytest.mark.parametrize("layout", ["current", "legacy"])
def test_an_rle_longer_than_the_csv_modules_field_limit_round_trips(tmp_path, layout, default_csv_field_limit):
    labels = Labels.from_mapping({"noisy.jpg": noisy_full_size_rles(), "clean.jpg": EMPTY})
    assert len(labels.rles["noisy.jpg"][1]) > 1_000_000
    path = str(tmp_path / "sub.csv")
    write_submission(path, labels, layout=layout)
    assert read_labels(path) == labels


def test_chunked_submission_publishes_an_rle_longer_than_the_field_limit(tmp_path, default_csv_field_limit):
    out = str(tmp_path / "submission.csv")
    submission.claim(out)
    chunks = submission.ChunkedSubmission(out, plan={"images": 2})
    chunks.commit(0, [("noisy.jpg", noisy_full_size_rles())])
    chunks.commit(1, [("clean.jpg", EMPTY)])
    assert chunks.finish(2) == 2
    assert read_labels(out) == Labels.from_mapping({"noisy.jpg": noisy_full_size_rles(), "clean.jpg": EMPTY})
