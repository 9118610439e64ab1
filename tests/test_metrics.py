"""Dice from masks and from RLE CSVs agree; evaluate's image-set semantics; ROC AUC; OOF pixel and image summaries."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from steel_tpu import cli, storage
from steel_tpu.constants import NUM_CLASSES
from steel_tpu.formats import rle
from steel_tpu.formats.kaggle import EMPTY, CsvError, Labels, read_labels, write_submission, write_train_csv
from steel_tpu.metrics import (OofSummary, Scores, class_confusion, class_labels, confusion_rates, dice_matrix, evaluate,
                               pick_examples, pixel_confusion, predicted_labels, read_image_set, roc_auc, score_labels)

H, W = 32, 64


def labels_of(masks, ids):
    """Labels from [N, H, W, C] masks."""
    return Labels.from_mapping({i: tuple(rle.encode(m[..., c]) for c in range(4)) for i, m in zip(ids, masks)})


def test_dice_matrix_hand_computed():
    pred = np.zeros((2, 2, 4, 4), bool)
    truth = np.zeros((2, 2, 4, 4), np.uint8)
    pred[0, 0, 0:3, 0] = True  # class 1: 3 predicted pixels ...
    truth[0, 0, 2, 0] = truth[0, 1, 2, 0] = 1  # ... 2 true ones, 1 shared: 2*1/(3+2)
    truth[0, 1, 1, 2] = 1  # class 3: missed
    pred[0, :, 3, 3] = truth[0, :, 3, 3] = 1  # class 4: exact
    pred[1, 1, 1, 1] = True  # image 2 class 2: false positive
    expected = [[0.4, 1.0, 0.0, 1.0], [1.0, 0.0, 1.0, 1.0]]
    np.testing.assert_array_equal(dice_matrix(pred, truth), expected)
    assert dice_matrix(pred, truth).dtype == np.float64


def test_dice_matrix_rejects_probabilities_and_shape_mismatch():
    with pytest.raises(ValueError, match="0/1.*found 0.7"):
        dice_matrix(np.full((1, 2, 2, 4), 0.7), np.zeros((1, 2, 2, 4)))
    with pytest.raises(ValueError, match=r"\[N, H, W, C\]"):
        dice_matrix(np.zeros((1, 2, 2, 4)), np.zeros((1, 2, 3, 4)))


masks = hnp.arrays(bool, (3, 8, 16, 4), elements=st.booleans())


@settings(max_examples=60, deadline=None)
@given(pred=masks, truth=masks, sparsity=st.integers(0, 3))
def test_score_labels_equals_dice_matrix_on_decoded_masks(pred, truth, sparsity):
    # Thinning with a fixed pattern gives empty masks, tiny runs and coarse ones in the same draw.
    keep = np.arange(pred.size).reshape(pred.shape) % (sparsity + 1) == 0
    pred, truth = pred & keep, truth & ~np.roll(keep, sparsity)
    ids = [f"{k}.jpg" for k in range(len(pred))]
    scores = score_labels(labels_of(pred, ids), labels_of(truth, ids), image_ids=ids, height=8, width=16)
    expected = dice_matrix(pred, truth)
    # One image at a time checks every (image, class) cell, not only the means.
    for k, image_id in enumerate(ids):
        one = score_labels(labels_of(pred, ids), labels_of(truth, ids), image_ids=[image_id], height=8, width=16)
        np.testing.assert_allclose(one.per_class, expected[k], rtol=0, atol=1e-12)
    np.testing.assert_allclose(scores.per_class, expected.mean(axis=0), rtol=0, atol=1e-12)
    assert scores.mean == pytest.approx(expected.mean(), abs=1e-12) and scores.n_images == 3


def test_score_labels_at_full_size_with_adjacent_runs():
    truth = np.zeros((1, 256, 1600, 4), bool)
    pred = np.zeros_like(truth)
    truth[0, :, 100:400, 2] = True  # one long run across columns
    truth[0, 255, 0:50, 0] = truth[0, 0, 0:50, 0] = True  # last pixel of a column touches the next column's first
    pred[0, 128:, 300:900, 2] = True
    pred[0, 255, 25:50, 0] = True
    pred[0, 10, 10, 1] = True
    ids = ["a.jpg"]
    got = score_labels(labels_of(pred, ids), labels_of(truth, ids), image_ids=ids)
    np.testing.assert_allclose(got.per_class, dice_matrix(pred, truth)[0], rtol=0, atol=1e-12)


def test_scores_format_and_from_dice():
    scores = Scores.from_dice([[1.0, 1.0, 0.5, 1.0], [1.0, 0.0, 1.0, 0.75]])
    assert scores == Scores(mean=0.78125, per_class=(1.0, 0.5, 0.75, 0.875), n_images=2)
    assert scores.format() == "dice 0.7812  class1 1.0000  class2 0.5000  class3 0.7500  class4 0.8750  (n=2 images)"
    with pytest.raises(ValueError, match="non-empty"):
        Scores.from_dice(np.zeros((0, 4)))


def test_score_labels_needs_images():
    with pytest.raises(ValueError, match="no images"):
        score_labels(Labels.from_mapping({}), Labels.from_mapping({}), image_ids=[])


@pytest.fixture
def files(tmp_path):
    """truth: a, b, e with defects (train.csv layout); pred: a exact, b missed, c a false positive, no e."""
    block = np.zeros((H, W), np.uint8)
    block[4:20, 10:30] = 1
    shifted = np.roll(block, 8, axis=1)
    b = rle.encode(block)
    truth = Labels.from_mapping({"a.jpg": (b, "", "", ""), "b.jpg": ("", "", b, ""), "e.jpg": ("", "", "", b)})
    pred = Labels.from_mapping({"a.jpg": (b, "", "", ""), "b.jpg": EMPTY, "c.jpg": ("", rle.encode(shifted), "", "")})
    paths = {"truth": tmp_path / "train.csv", "legacy": tmp_path / "legacy.csv", "pred": tmp_path / "sub.csv"}
    write_train_csv(str(paths["truth"]), truth)
    write_submission(str(paths["legacy"]), truth, layout="legacy")
    write_submission(str(paths["pred"]), pred)
    return {k: str(v) for k, v in paths.items()} | {"dir": tmp_path}


def test_evaluate_refuses_a_prediction_that_does_not_cover_the_truth(files):
    # pred names c (not in the truth) and misses e (a defect image of the truth).
    with pytest.raises(CsvError) as error:
        evaluate(pred_path=files["pred"], truth_path=files["truth"], height=H, width=W)
    message = str(error.value)
    assert message.startswith(f"{files['pred']}: does not cover the evaluated set (3 images of {files['truth']})")
    assert "1 predicted image(s) not in" in message and "(e.g. c.jpg)" in message
    assert "1 image(s) of" in message and "(e.g. e.jpg)" in message and "--intersection" in message


def test_evaluate_intersection_scores_the_shared_images_and_says_what_it_left_out(files, capsys):
    scores = evaluate(pred_path=files["pred"], truth_path=files["truth"], intersection=True, height=H, width=W)
    assert scores == Scores.from_dice([[1, 1, 1, 1], [1, 1, 0, 1]])  # a exact, b's class 3 missed
    assert "left out 1 image(s) of" in capsys.readouterr().out
    legacy = evaluate(pred_path=files["pred"], truth_path=files["legacy"], intersection=True, height=H, width=W)
    assert legacy == scores


def test_a_prediction_with_no_image_of_the_truth_is_refused_even_as_intersection(files, tmp_path):
    other = tmp_path / "other.csv"
    write_submission(str(other), Labels.from_mapping({f"x{i}.jpg": EMPTY for i in range(7)}))
    with pytest.raises(CsvError, match=r"7 predicted image\(s\) not in .*\(e\.g\. x0\.jpg, x1\.jpg, x2\.jpg, "
                                       r"x3\.jpg, x4\.jpg\); 3 image\(s\) of"):
        evaluate(pred_path=str(other), truth_path=files["truth"], height=H, width=W)
    with pytest.raises(CsvError, match="no image in common"):
        evaluate(pred_path=str(other), truth_path=files["truth"], intersection=True, height=H, width=W)


def test_evaluate_cli_exit_codes(files, capsys):
    assert cli.main(["evaluate", "--pred", files["pred"], "--truth", files["truth"]]) == 2
    assert "e.jpg" in capsys.readouterr().err
    assert cli.main(["evaluate", "--pred", files["truth"], "--truth", files["truth"]]) == 0


def test_evaluate_with_an_image_folder_counts_unlisted_images_as_clean(files):
    folder = files["dir"] / "images"
    folder.mkdir()
    for name in ["a.jpg", "b.jpg", "c.jpg", "d.jpg", "e.jpg"]:
        (folder / name).write_bytes(b"")
    (folder / "notes.txt").write_text("not an image")
    with pytest.raises(CsvError, match=r"1 image\(s\) of .* not predicted \(e\.g\. e\.jpg\)"):
        evaluate(pred_path=files["pred"], truth_path=files["truth"], images=str(folder), height=H, width=W)
    scores = evaluate(pred_path=files["pred"], truth_path=files["truth"], images=str(folder), intersection=True,
                      height=H, width=W)
    assert scores == Scores.from_dice([[1, 1, 1, 1], [1, 1, 0, 1], [1, 0, 1, 1]])
    pred = files["dir"] / "full.csv"  # every image of the folder predicted: d and e empty (clean d scores 1)
    labels = read_labels(files["pred"])
    write_submission(str(pred), Labels.from_mapping({**labels.rles, "d.jpg": EMPTY, "e.jpg": EMPTY}))
    scores = evaluate(pred_path=str(pred), truth_path=files["truth"], images=str(folder), height=H, width=W)
    assert scores == Scores.from_dice([[1, 1, 1, 1], [1, 1, 0, 1], [1, 0, 1, 1], [1, 1, 1, 1], [1, 1, 1, 0]])


def test_evaluate_with_an_id_list_rejects_predictions_outside_it(files):
    ids = files["dir"] / "ids.txt"
    ids.write_text("a.jpg\nb.jpg\n")
    with pytest.raises(CsvError, match=r"1 predicted image\(s\) not in .*ids.txt \(e\.g\. c\.jpg\)"):
        evaluate(pred_path=files["pred"], truth_path=files["truth"], images=str(ids), height=H, width=W)
    ids.write_text("a.jpg\n\nb.jpg\nc.jpg\n")  # e's defect is outside the set: not scored
    scores = evaluate(pred_path=files["pred"], truth_path=files["truth"], images=str(ids), height=H, width=W)
    assert scores == Scores.from_dice([[1, 1, 1, 1], [1, 1, 0, 1], [1, 0, 1, 1]])


def test_truth_against_itself_is_one(files):
    for truth in (files["truth"], files["legacy"]):
        scores = evaluate(pred_path=truth, truth_path=files["truth"], height=H, width=W)
        assert scores.mean == 1.0 and scores.per_class == (1.0,) * 4 and scores.n_images == 3


def test_read_image_set_errors(tmp_path):
    ids = tmp_path / "ids.txt"
    ids.write_text("a.jpg\nb.jpg\na.jpg\n")
    with pytest.raises(ValueError, match=r"ids.txt line 3: image a.jpg listed twice \(first on line 1\)"):
        read_image_set(str(ids))
    ids.write_text("a.jpg\ntest_images/b.jpg\n")
    with pytest.raises(ValueError, match="ids.txt line 2: .*path separator"):
        read_image_set(str(ids))
    ids.write_text("\n\n")
    with pytest.raises(ValueError, match="no image ids"):
        read_image_set(str(ids))
    with pytest.raises(ValueError, match=r"no JPEG images \(.jpg, .jpeg\)"):
        read_image_set(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="missing.txt: no such image folder or id list"):
        read_image_set(str(tmp_path / "missing.txt"))


def brute_force_auc(labels, scores):
    pos, neg = scores[labels == 1], scores[labels == 0]
    wins = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    return wins.mean()


@settings(max_examples=100, deadline=None)
@given(
    data=st.lists(st.tuples(st.integers(0, 1), st.integers(0, 6)), min_size=2, max_size=60).filter(
        lambda d: len({label for label, _ in d}) == 2
    )
)
def test_roc_auc_equals_pairwise_count_with_ties(data):
    labels, scores = (np.array(x) for x in zip(*data))
    assert roc_auc(labels, scores / 7.0) == pytest.approx(brute_force_auc(labels, scores), abs=1e-12)


def test_roc_auc_extremes_and_errors():
    assert roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert roc_auc([True, True, False], [0.1, 0.2, 0.8]) == 0.0
    assert roc_auc([0, 1, 0, 1], [0.5] * 4) == 0.5
    with pytest.raises(ValueError, match="both classes"):
        roc_auc([1, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match="0/1"):
        roc_auc([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="NaN"):
        roc_auc([0, 1], [0.1, np.nan])
    with pytest.raises(ValueError, match="1-D"):
        roc_auc([[0, 1]], [[0.1, 0.2]])


def test_evaluate_on_gcs(gcs_bucket, files):
    for name in ("pred", "truth"):
        storage.write_bytes(f"{gcs_bucket}/{name}.csv", open(files[name], "rb").read())
    for image_id in ["a.jpg", "b.jpg", "c.jpg", "d.jpg"]:
        storage.write_bytes(f"{gcs_bucket}/test_images/{image_id}", b"")
    storage.write_text(f"{gcs_bucket}/ids.txt", "a.jpg\nb.jpg\nc.jpg\nd.jpg\ne.jpg\n")
    pred, truth = f"{gcs_bucket}/pred.csv", f"{gcs_bucket}/truth.csv"
    by_folder = evaluate(pred_path=pred, truth_path=truth, images=f"{gcs_bucket}/test_images", height=H, width=W)
    assert by_folder == Scores.from_dice([[1, 1, 1, 1], [1, 1, 0, 1], [1, 0, 1, 1], [1, 1, 1, 1]])
    with pytest.raises(CsvError, match=r"e\.jpg"):  # e is in the list and has a defect: the prediction misses it
        evaluate(pred_path=pred, truth_path=truth, images=f"{gcs_bucket}/ids.txt", height=H, width=W)
    by_list = evaluate(pred_path=pred, truth_path=truth, images=f"{gcs_bucket}/ids.txt", intersection=True,
                       height=H, width=W)
    assert by_list == Scores.from_dice([[1, 1, 1, 1], [1, 1, 0, 1], [1, 0, 1, 1]])


def test_pixel_confusion_matches_direct_counting():
    rng = np.random.default_rng(1)
    q = rng.integers(0, 256, (70, 4, 6, NUM_CLASSES), dtype=np.uint8)  # 70 images: crosses a batch boundary
    truth = rng.random(q.shape) < 0.3
    thresholds = (0.3, 0.55, 0.5, 0.7)
    counts = pixel_confusion(q, truth, thresholds)
    for c, t in enumerate(thresholds):
        pred = q[..., c].astype(np.float64) > t * 255
        y = truth[..., c]
        assert counts[c].tolist() == [[np.sum(~y & ~pred), np.sum(~y & pred)], [np.sum(y & ~pred), np.sum(y & pred)]]


def test_confusion_rates_by_hand():
    counts = np.zeros((NUM_CLASSES, 2, 2), np.int64)
    counts[0] = counts[2] = counts[3] = [[5, 1], [2, 2]]  # [truth, predicted]: tn 5, fp 1, fn 2, tp 2
    counts[1] = [[10, 0], [0, 0]]  # nothing predicted, nothing true: precision and recall 0, not NaN
    rates = confusion_rates(counts)
    np.testing.assert_allclose(rates[0], [0.2, 0.1, 0.2, 0.5, 2 / 3, 0.5])
    np.testing.assert_allclose(rates[1], [0, 0, 0, 1, 0, 0])


def test_pick_examples_worst_overall_best_among_defects():
    dice = np.array([[1, 1, 1, 1], [0.2, 1, 1, 1], [0.9, 1, 1, 1], [0, 0, 1, 1], [0.5, 1, 1, 1]], np.float32)
    has_defect = np.array([False, True, True, True, True])
    best, worst = pick_examples(dice, has_defect, k=2)
    assert worst.tolist() == [3, 1]
    assert best.tolist() == [2, 4]  # image 0 scores higher but is clean
    best, worst = pick_examples(dice, has_defect, k=3)
    assert worst.tolist() == [3, 1, 4] and best.tolist() == [2, 0]  # defects run out; no image in both


def _oof_fold(rng, fold, n):
    truth = rng.random((n, 4, 8, NUM_CLASSES)) < 0.2
    truth[: n // 3] = False  # some clean images
    return {"image_ids": np.array([f"f{fold}_{i}.jpg" for i in range(n)]),
            "probs": rng.integers(0, 256, truth.shape, dtype=np.uint8), "truth": truth,
            "truth_area": truth.sum(axis=(1, 2)) * 64, "dice": rng.random((n, NUM_CLASSES)).astype(np.float32)}


def test_oof_summary_one_fold_at_a_time_equals_all_folds_at_once():
    rng = np.random.default_rng(4)
    folds = {0: _oof_fold(rng, 0, 30), 3: _oof_fold(rng, 3, 17)}
    thresholds = (0.4, 0.5, 0.6, 0.7)
    summary = OofSummary(thresholds=thresholds, k=3, eval_threshold=0.3)
    for fold, oof in folds.items():
        summary.add_fold(fold, oof)
    joined = {key: np.concatenate([oof[key] for oof in folds.values()]) for key in folds[0]}
    assert summary.folds == [0, 3]
    np.testing.assert_array_equal(summary.counts, pixel_confusion(joined["probs"], joined["truth"], thresholds))
    np.testing.assert_array_equal(summary.class_counts, class_confusion(joined["probs"], joined["truth"], 0.3))
    # Keeping each fold's best and worst k is enough to find the best and worst k over all folds.
    best, worst = pick_examples(joined["dice"], joined["truth_area"].sum(axis=1) > 0, k=3)
    chosen = summary.examples()
    assert [(kind, c["image_id"]) for kind, c in chosen] == (
        [("best", joined["image_ids"][i]) for i in best] + [("worst", joined["image_ids"][i]) for i in worst])
    for _, c in chosen:
        i = joined["image_ids"].tolist().index(c["image_id"])
        np.testing.assert_array_equal(c["probs"], joined["probs"][i])
        assert c["fold"] == int(c["image_id"][1])
    labels, values = zip(*summary.per_class_dice())
    assert labels == ("fold 0 (30 images)", "fold 3 (17 images)", "all (47 images)")
    np.testing.assert_allclose(values[-1], joined["dice"].mean(axis=0), rtol=1e-6)


def _brute_force_class_confusion(probs, truth, threshold):
    """Pixel by pixel, as the report describes it: truth is the highest class id claiming the pixel (0: none),
    prediction the class of the highest map over the threshold (ties: the higher id), else background."""
    counts = np.zeros((NUM_CLASSES + 1, NUM_CLASSES + 1), np.int64)
    for index in np.ndindex(*truth.shape[:-1]):
        t = max([c + 1 for c in range(NUM_CLASSES) if truth[index][c]], default=0)
        over = [(int(probs[index][c]), c + 1) for c in range(NUM_CLASSES) if probs[index][c] / 255.0 > threshold]
        counts[t, max(over)[1] if over else 0] += 1
    return counts


def test_class_confusion_against_a_pixel_by_pixel_count():
    # A hand-made 1 x 2 x 4 OOF: background kept, a class won over another, a tie, an overlap in the truth.
    truth = np.zeros((1, 2, 4, NUM_CLASSES), bool)
    probs = np.zeros((1, 2, 4, NUM_CLASSES), np.uint8)
    truth[0, 0, 1, 2] = True                      # class 3 found by class 3
    probs[0, 0, 1] = (200, 0, 230, 0)
    truth[0, 0, 2, 0] = True                      # class 1 missed: its map is under the threshold
    probs[0, 0, 2, 0] = 100
    probs[0, 0, 3] = (0, 180, 0, 180)             # clean pixel, tie between 2 and 4 -> 4
    truth[0, 1, 0, [0, 3]] = True                 # truth overlap 1 + 4 -> 4, predicted 2
    probs[0, 1, 0, 1] = 255
    truth[0, 1, 1, 1] = True                      # class 2 predicted as 1
    probs[0, 1, 1] = (250, 240, 0, 0)
    counts = class_confusion(probs, truth, 0.5)
    expected = np.zeros((5, 5), np.int64)
    expected[0, 0] = 3  # (0,0), (1,2), (1,3)
    expected[3, 3] = expected[1, 0] = expected[0, 4] = expected[4, 2] = expected[2, 1] = 1
    np.testing.assert_array_equal(counts, expected)
    np.testing.assert_array_equal(class_labels(truth)[0], [[0, 3, 1, 0], [4, 2, 0, 0]])
    np.testing.assert_array_equal(predicted_labels(probs, 0.5)[0], [[0, 3, 0, 4], [2, 1, 0, 0]])
    rng = np.random.default_rng(11)
    truth = rng.random((3, 4, 6, NUM_CLASSES)) > 0.8
    probs = rng.integers(0, 256, truth.shape, dtype=np.uint8)
    for threshold in (0.0, 0.5, 0.9):
        counts = class_confusion(probs, truth, threshold)
        np.testing.assert_array_equal(counts, _brute_force_class_confusion(probs, truth, threshold))
        assert counts.sum() == 3 * 4 * 6
