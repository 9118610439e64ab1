"""Property tests of the RLE codec: the numpy decoder, single and batched encoders, validation."""

import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from steel_tpu.formats import rle

SHAPES = [(256, 1600), (32, 64), (7, 5)]

# Full-size 256x1600 masks on a shared machine outlast hypothesis' per-example deadline; sizes are kept modest instead.
PROPERTY = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- Oracles: the straightforward seed code ---------------------------------------------------------------


def seed_encode(mask):
    pixels = np.asarray(mask).T.flatten()
    pixels = np.concatenate([[0], pixels, [0]])
    runs = np.where(pixels[1:] != pixels[:-1])[0] + 1
    runs[1::2] -= runs[::2]
    return " ".join(str(x) for x in runs)


def seed_decode(text, height, width):
    tokens = text.split()
    flat = np.zeros(height * width, dtype=np.uint8)
    for start, length in zip(map(int, tokens[0::2]), map(int, tokens[1::2])):
        flat[start - 1 : start - 1 + length] = 1
    return flat.reshape(width, height).T


def naive_is_valid(text, height, width):
    tokens = text.split()
    if not all(re.fullmatch(r"-?[0-9]+", t) for t in tokens) or len(tokens) % 2:
        return False
    values = [int(t) for t in tokens]
    previous_last = 0
    for start, length in zip(values[0::2], values[1::2]):
        if start < 1 or length < 1 or start + length - 1 > height * width or start <= previous_last:
            return False
        previous_last = start + length - 1
    return True


# --- Strategies -------------------------------------------------------------------------------------------


def _coordinate(size):
    # Edges (first/last row or column) are where off-by-one bugs live: draw them often.
    return st.one_of(st.sampled_from([0, size - 1]), st.integers(0, size - 1))


@st.composite
def _component(draw, shape):
    h, w = shape
    kind = draw(st.sampled_from(["pixel", "rect", "row", "column", "noise"]))
    mask = np.zeros(shape, dtype=bool)
    if kind == "pixel":
        mask[draw(_coordinate(h)), draw(_coordinate(w))] = True
    elif kind == "rect":
        r0, r1 = sorted([draw(_coordinate(h)), draw(_coordinate(h))])
        c0, c1 = sorted([draw(_coordinate(w)), draw(_coordinate(w))])
        mask[r0 : r1 + 1, c0 : c1 + 1] = True
    elif kind == "row":
        mask[draw(_coordinate(h)), :] = True
    elif kind == "column":
        mask[:, draw(_coordinate(w))] = True
    else:
        # Many runs: random blocks, from checkerboard-like (1x1) to coarse.
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        bh, bw = draw(st.integers(1, 8)), draw(st.integers(1, 8))
        density = draw(st.floats(0.05, 0.95))
        blocks = rng.random((-(-h // bh), -(-w // bw))) < density
        mask = np.kron(blocks, np.ones((bh, bw), dtype=bool))[:h, :w]
    return mask


@st.composite
def masks(draw, shape):
    if draw(st.integers(0, 9)) == 0:
        return np.ones(shape, dtype=np.uint8)
    mask = np.zeros(shape, dtype=bool)
    for part in draw(st.lists(_component(shape), max_size=4)):
        mask |= part
    dtype = draw(st.sampled_from([np.uint8, bool, np.float32]))
    return mask.astype(dtype)


@st.composite
def canonical_rles(draw, shape, max_runs=200):
    # Strictly increasing boundaries start0 < end0 < start1 < ... give sorted, non-touching runs: the only
    # form encode produces.
    pixels = shape[0] * shape[1]
    bounds = sorted(draw(st.sets(st.integers(0, pixels), max_size=2 * max_runs)))
    bounds = bounds[: len(bounds) // 2 * 2]
    return " ".join(f"{s + 1} {e - s}" for s, e in zip(bounds[0::2], bounds[1::2]))


@st.composite
def valid_rles(draw, shape, max_runs=50):
    """Valid but not canonical: runs may touch, separators vary."""
    pixels = shape[0] * shape[1]
    parts, last = [], 0
    for _ in range(draw(st.integers(0, max_runs))):
        start = last + 1 + draw(st.integers(0, 3 * pixels // (max_runs + 1)))
        length = draw(st.integers(1, max(1, pixels // (max_runs + 1))))
        if start + length - 1 > pixels:
            break
        parts += [str(start), str(length)]
        last = start + length - 1
    count = len(parts) + 1
    separators = draw(st.lists(st.sampled_from([" ", "  ", "\t", "\n"]), min_size=count, max_size=count))
    return separators[0] + "".join(p + s for p, s in zip(parts, separators[1:]))


# --- Round trips and oracles ------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@PROPERTY
@given(data=st.data())
def test_encode_matches_seed_and_decodes_back(shape, data):
    mask = data.draw(masks(shape))
    text = rle.encode(mask)
    assert text == seed_encode(mask != 0)
    decoded = rle.decode(text, height=shape[0], width=shape[1])
    assert decoded.dtype == np.uint8 and decoded.shape == shape
    np.testing.assert_array_equal(decoded, mask != 0)
    assert rle.area(text, height=shape[0], width=shape[1]) == np.count_nonzero(mask)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@PROPERTY
@given(data=st.data())
def test_decode_then_encode_is_identity(shape, data):
    h, w = shape
    text = data.draw(canonical_rles(shape))
    decoded = rle.decode(text, height=h, width=w)
    np.testing.assert_array_equal(decoded, seed_decode(text, h, w))
    assert rle.encode(decoded) == text


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@PROPERTY
@given(data=st.data())
def test_touching_runs_and_odd_whitespace_decode_like_the_seed(shape, data):
    h, w = shape
    text = data.draw(valid_rles(shape))
    decoded = rle.decode(text, height=h, width=w)
    np.testing.assert_array_equal(decoded, seed_decode(text, h, w))
    # encode merges touching runs, so one more round is stable.
    assert rle.encode(rle.decode(rle.encode(decoded), height=h, width=w)) == rle.encode(decoded)


# --- Batched encode ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@PROPERTY
@given(data=st.data())
def test_encode_batch_equals_per_mask_encode(shape, data):
    n = data.draw(st.integers(0, 3))
    stack = np.stack([data.draw(masks(shape)).astype(np.uint8) for _ in range(n)]) if n else np.zeros((0, *shape))
    assert rle.encode_batch(stack) == [rle.encode(m) for m in stack]
    channels = data.draw(st.integers(1, 4))
    per_class = np.stack([np.roll(stack, k, axis=0) for k in range(channels)], axis=-1)
    expected = [[rle.encode(per_class[i, :, :, k]) for k in range(channels)] for i in range(n)]
    assert rle.encode_batch(per_class) == expected


@PROPERTY
@given(
    shape=st.tuples(st.integers(0, 3), st.integers(1, 9), st.integers(1, 9), st.integers(1, 3)),
    dtype=st.sampled_from([np.uint8, bool, np.float32]),
    data=st.data(),
)
def test_encode_batch_equals_single_encode_any_size_and_values(shape, dtype, data):
    # Odd sizes exercise the edge buffer's padding to whole 8-byte words; values other than 0/1 must count as on.
    values = data.draw(st.lists(st.sampled_from([0, 0, 1, 7, 255]), min_size=int(np.prod(shape)),
                                max_size=int(np.prod(shape))))
    batch = np.array(values).reshape(shape).astype(dtype)
    n, _, _, c = shape
    expected = [[seed_encode(batch[i, :, :, k] != 0) for k in range(c)] for i in range(n)]
    assert rle.encode_batch(batch) == expected
    assert [[rle.encode(batch[i, :, :, k]) for k in range(c)] for i in range(n)] == expected
    assert rle.encode_batch(batch[..., 0]) == [row[0] for row in expected]


def test_encode_batch_runs_cross_columns_and_masks_stay_apart():
    # A run down the last column of mask 0 must not join a run at the top of mask 1's first column.
    a = np.zeros((4, 3), np.uint8)
    a[2:, 2] = 1
    a[:2, 1] = 1
    a[2:, 0] = 1
    b = np.zeros((4, 3), np.uint8)
    b[0, 0] = 1
    assert rle.encode_batch(np.stack([a, b])) == ["3 4 11 2", "1 1"]


@pytest.mark.parametrize("shape", [(5,), (2, 3, 4, 5, 6)])
def test_encode_batch_rejects_wrong_rank(shape):
    with pytest.raises(ValueError, match="encode_batch expects"):
        rle.encode_batch(np.zeros(shape))


def test_encode_rejects_non_2d():
    with pytest.raises(ValueError, match="2-D"):
        rle.encode(np.zeros((1, 2, 3)))


# --- Validation -------------------------------------------------------------------------------------------

PIXELS = 256 * 1600


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1 2 3", r"odd number of tokens \(3\)"),
        ("1 x", r"token 2 \('x'\) is not an integer"),
        ("1.5 2", r"token 1 \('1.5'\) is not an integer"),
        ("+1 2", r"token 1 \('\+1'\) is not an integer"),
        ("1_0 2", r"token 1 \('1_0'\) is not an integer"),
        ("1 2 \uff13 4", r"token 3 .* is not an integer"),
        ("0 5", r"run 1: start 0 < 1"),
        ("3 1 -4 5", r"run 2: start -4 < 1"),
        ("5 0", r"run 1: length 0 < 1"),
        ("5 -1", r"run 1: length -1 < 1"),
        (f"{PIXELS} 2", rf"run 1 \(start {PIXELS}, length 2\) ends at pixel {PIXELS + 1}, past the 256x1600"),
        ("1 2 5 99999999999999999999999", r"run 2 \(start 5, length 99999999999999999999999\) ends at pixel"),
        ("10 5 14 3", r"run 2 \(start 14\) is unsorted or overlaps the run before it \(which ends at pixel 14\)"),
        ("20 5 10 2", r"run 2 \(start 10\) is unsorted or overlaps"),
    ],
)
def test_malformed_rle_raises_precise_error(text, message):
    for call in (rle.parse_runs, rle.decode, rle.area):
        with pytest.raises(rle.RleError, match=message):
            call(text)


@pytest.mark.parametrize("value", [None, float("nan"), 12])
def test_non_string_raises(value):
    with pytest.raises(rle.RleError, match="expected an RLE string"):
        rle.parse_runs(value)


def test_touching_runs_bytes_and_blank_strings_are_valid():
    starts, lengths = rle.parse_runs(b"10 5 15 1")
    assert starts.tolist() == [10, 15] and lengths.tolist() == [5, 1]
    for blank in ["", " ", "\t\n"]:
        assert rle.parse_runs(blank)[0].size == 0
        assert not rle.decode(blank).any()


@settings(max_examples=300, deadline=None)
@given(text=st.text(alphabet="0123456789 \t\n\r\x0b\x0c\x1f-x.\u00b2", max_size=30))
def test_parse_agrees_with_naive_validator(text):
    # Tiny image: random digit strings are valid often enough to exercise both answers of the fast path.
    h, w = 7, 5
    if naive_is_valid(text, h, w):
        starts, lengths = rle.parse_runs(text, height=h, width=w)
        values = [int(t) for t in text.split()]
        assert starts.tolist() == values[0::2] and lengths.tolist() == values[1::2]
    else:
        with pytest.raises(rle.RleError):
            rle.parse_runs(text, height=h, width=w)
