"""Threshold tuning: the vectorised search against brute force, planted effects, files written, a trained workdir."""

import dataclasses
import itertools
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from steel_tpu import cli, metrics, postprocess
from steel_tpu.constants import NUM_CLASSES
from steel_tpu.formats import thresholds as thresholds_format
from steel_tpu.formats.workdir import Workdir
from steel_tpu.reports import report
from steel_tpu.tuning import checks as tune_checks
from steel_tpu.tuning import oof_stats, plot_data, plots, search, tune
from fakes import SCALE, H, W, oof_workdir

def _load_oof(work):
    """(uint8 maps, truth, classifier probs or None) of every fold, joined on image ids."""
    cls, segs, wd = {}, [], Workdir(work)
    for fold in wd.completed_folds("classify"):
        oof = wd.oof("classify", fold)
        cls.update(zip(oof["image_ids"].tolist(), oof["probs"]))
    for fold in wd.completed_folds("segment"):
        segs.append(wd.oof("segment", fold))
    ids = np.concatenate([s["image_ids"] for s in segs]).tolist()
    return (np.concatenate([s["probs"] for s in segs]), np.concatenate([s["truth"] for s in segs]),
            np.stack([cls[i] for i in ids]) if cls else None)


def _oof_dice_direct(oof, pp):
    """Dice of `pp` on the OOF maps by thresholding pixels directly, without tune's histograms or search."""
    q, truth, probs = oof
    masks = postprocess.binarize(q, pp.pixel_threshold)
    masks &= pp.keep(masks.sum(axis=(1, 2)) * SCALE ** 2, probs)[:, None, None, :]
    return metrics.dice_matrix(masks, truth)


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    work = str(tmp_path_factory.mktemp("tune_work"))
    oof_workdir(work)
    return work, tune.tune(workdir=work)


def test_tune_writes_thresholds_and_plots(tuned):
    work, result = tuned
    assert Workdir(work).thresholds().to_doc() == result
    assert result["n_images"] == 80 and result["folds"] == [0, 1] and result["oof_scale"] == SCALE
    assert result["gate_head"] == "binary" and len(result["gate"]) <= 1  # () when no gate beats none
    assert all(t in search.PIXEL_GRID for t in result["pixel_threshold"])
    assert all(a in search.AREA_GRID for a in result["min_area"])
    assert result["dice_after"]["mean"] >= result["dice_before"]["mean"]
    for name in plot_data.PLOT_FILES:
        with open(os.path.join(Workdir(work).tune_dir(), name), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert Workdir(work).thresholds().postprocess == postprocess.PostProcess.from_dict(result)


@pytest.mark.parametrize("classifier", ["binary", "multilabel", None])
def test_plot_data_holds_the_search_at_the_chosen_settings(tmp_path, classifier):
    work = str(tmp_path)
    oof_workdir(work, n=12, seed=2, classifier=classifier)
    result = tune.tune(workdir=work, plots=False)
    data = plot_data.load(Workdir(work).tune_dir())
    assert str(data["gate_head"]) == (classifier or "none")
    g, k, a = data["chosen"]
    assert [data["pixel_grid"][i] for i in k] == result["pixel_threshold"]
    assert [data["area_grid"][i] for i in a] == result["min_area"]
    # The mean-Dice table at the chosen (gate, threshold, area) of each class is the tuned Dice tune reports.
    at_chosen = [data["dice"][c, g[c], k[c], a[c]] for c in range(NUM_CLASSES)]
    assert at_chosen == pytest.approx(result["dice_after"]["per_class"], abs=1e-12)
    oof = _load_oof(work)
    pp = postprocess.PostProcess.from_dict(result)
    raw = postprocess.binarize(oof[0], pp.pixel_threshold).sum(axis=(1, 2)) * SCALE ** 2
    np.testing.assert_array_equal(data["raw_area"], raw)
    np.testing.assert_array_equal(data["submitted_area"], raw * pp.keep(raw, oof[2]))
    assert set(plots.draw(data)) == set(plot_data.PLOT_FILES)


def test_plot_data_files_are_checked(tmp_path):
    assert plot_data.load(str(tmp_path)) is None  # tuned before tune saved its plot data
    np.savez(tmp_path / plot_data.PLOT_DATA, dice=np.zeros(3))
    with pytest.raises(ValueError, match=r"plot_data\.npz: not tune's plot data \(missing \['pixel_grid'"):
        plot_data.load(str(tmp_path))


def test_reported_dice_is_what_direct_post_processing_scores(tuned):
    work, result = tuned
    oof = _load_oof(work)
    for key, pp in (("dice_before", postprocess.PostProcess()),
                    ("dice_after", postprocess.PostProcess.from_dict(result))):
        direct = _oof_dice_direct(oof, pp)
        assert result[key]["mean"] == pytest.approx(direct.mean(), abs=1e-12)
        assert result[key]["per_class"] == pytest.approx(direct.mean(axis=0).tolist(), abs=1e-12)


def test_planted_specks_are_removed_by_min_area(tuned):
    _, result = tuned
    # Every false speck is 256 px at full resolution and every true rectangle >= 40 * 64 px.
    assert all(256 < a <= 2560 for a in result["min_area"]), result["min_area"]
    assert result["dice_after"]["mean"] > result["dice_before"]["mean"] + 0.05


@pytest.mark.parametrize("classifier", ["binary", "multilabel", None])
def test_search_finds_the_brute_force_optimum(tmp_path, classifier):
    work = str(tmp_path)
    oof_workdir(work, n=12, seed=3, classifier=classifier)
    grids = dict(pixel_grid=(0.4, 0.5, 0.6), area_grid=(0, 300, 3000), gate_grid=(0.0, 0.5, 0.8))
    stats = oof_stats.collect((work,))
    tables, kind, gates = search.search_tables(stats, **grids)
    chosen = search.choose(stats, tables, kind=kind, gates=gates, pixel_grid=grids["pixel_grid"],
                         area_grid=grids["area_grid"])
    oof = _load_oof(work)
    settings = list(itertools.product(grids["gate_grid"] if classifier else [None], grids["pixel_grid"],
                                      grids["area_grid"]))
    # [settings, C]: every class under every (gate, threshold, area) at once; classes are independent given gates.
    scores = np.array([_oof_dice_direct(oof, postprocess.PostProcess(
        pixel_threshold=[t] * 4, min_area=[a] * 4, gate=() if g is None else [g] * (1 if kind == "binary" else 4),
    )).mean(axis=0) for g, t, a in settings])
    if kind == "binary":  # one gate for every class
        gate_of = np.array([s[0] for s in settings])
        best = max(np.max(scores[gate_of == g], axis=0).mean() for g in grids["gate_grid"])
    else:
        best = scores.max(axis=0).mean()
    assert kind == classifier
    assert _oof_dice_direct(oof, chosen).mean() == pytest.approx(best, abs=1e-12)
    assert oof_stats.dice_of(stats, chosen).mean() == pytest.approx(best, abs=1e-12)


def test_gate_is_chosen_when_the_classifier_knows_clean_images(tmp_path):
    work = str(tmp_path)
    oof_workdir(work, n=30, speck_prob=0.9, clean_specks_only=True, seed=5)
    result = tune.tune(workdir=work, out=str(tmp_path / "elsewhere"), area_grid=(0,), plots=False)
    # Specks on clean images, min area disabled: only the gate (clean images score p < 0.4) can remove them.
    assert 0.4 <= result["gate"][0] <= 0.6  # clean images have p < 0.4, defective ones p >= 0.6
    assert result["dice_after"]["mean"] > result["dice_before"]["mean"] + 0.05
    assert Workdir(tmp_path / "elsewhere").thresholds().to_doc() == result
    assert Workdir(work).thresholds() is None


def test_missing_folds_and_bad_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no completed segment folds"):
        tune.tune(workdir=str(tmp_path))
    with pytest.raises(ValueError, match="t.json: not a valid thresholds file"):
        thresholds_format.from_doc({"pixel_threshold": [0.5] * 4, "min_area": [0] * 3, "gate": []}, where="t.json")


def test_post_process_rules():
    areas = np.array([[4, 16, 0, 0], [4, 16, 0, 0]])
    pp = postprocess.PostProcess(min_area=[5, 0, 0, 0], gate=(0.5,))
    np.testing.assert_array_equal(pp.keep(areas, np.array([[0.9], [0.49]])),
                                  [[False, True, True, True], [False, False, False, False]])  # 4 px < 5; 0.49 < 0.5
    with pytest.raises(ValueError, match="no classifier probabilities"):
        pp.keep(areas)
    with pytest.raises(ValueError, match="gate has 1 threshold"):
        pp.keep(areas, np.zeros((2, 4)))
    # binarize keeps the training-time meaning q > t * 255 exactly, and the device's to_masks agrees with it.
    q = np.broadcast_to(np.arange(256, dtype=np.uint8)[None, :, None, None], (1, 256, 2, 4))
    for t in (0.0, 0.3, 0.35, 0.5, 0.55, 0.8, 1.0):
        want = q.astype(np.float32) > np.float32(t) * 255
        np.testing.assert_array_equal(postprocess.binarize(q, t), want)
        masks, areas = postprocess.to_masks(tf.constant(q), postprocess.PostProcess(pixel_threshold=[t] * 4))
        np.testing.assert_array_equal(masks.numpy(), want)
        np.testing.assert_array_equal(areas.numpy(), want.sum(axis=(1, 2)))


@pytest.mark.slow
def test_tune_on_a_trained_workdir(trained_workdir, tmp_path):
    result = tune.tune(workdir=trained_workdir, out=str(tmp_path))  # the shared workdir stays untuned
    assert result["n_images"] == 48 and result["folds"] == [0, 1] and result["gate_head"] == "multilabel"
    # The search's own choice is never worse than the default it also tried; a class then switched off
    # (tune_gain) gave up its gain over empty, under one image here, for not drawing on unseen images.
    after, gains = np.array(result["dice_after"]["per_class"]), np.array(result["gain_over_empty"])
    searched = after + np.array(result["switched_off"]) * gains / result["n_images"]
    assert np.all(searched >= np.array(result["dice_before"]["per_class"]) - 1e-12)
    assert np.all(gains[result["switched_off"]] < result["min_gain"])
    assert Workdir(tmp_path).thresholds().to_doc() == result


def _oof_dice_with_components(oof, pp):
    """Like _oof_dice_direct, with pp's component filter applied to the OOF masks (sizes scaled by SCALE**2)."""
    q, truth, probs = oof
    masks, areas = pp.filter(postprocess.binarize(q, pp.pixel_threshold), scale=SCALE)
    masks &= pp.keep(areas, probs)[:, None, None, :]
    return metrics.dice_matrix(masks, truth)


@pytest.mark.parametrize("classifier", ["binary", "multilabel", None])
def test_component_stage_is_the_brute_force_optimum_and_removes_specks_on_defective_images(tmp_path, classifier):
    from steel_tpu.tuning import components as tune_components

    work = str(tmp_path)
    oof_workdir(work, n=20, seed=4, speck_prob=0.8, classifier=classifier)
    sizes, areas = (0, 128, 320, 1024), (0, 300, 3000)
    result = tune.tune(workdir=work, area_grid=areas, component_grid=sizes, plots=False)
    pp, oof = postprocess.PostProcess.from_dict(result), _load_oof(work)
    assert result["grid"]["min_component"] == list(sizes)
    # Reported Dice == direct post-processing of the OOF maps with the chosen components, areas and gate.
    direct = _oof_dice_with_components(oof, pp)
    assert result["dice_after"]["per_class"] == pytest.approx(direct.mean(axis=0).tolist(), abs=1e-12)
    # Brute force over (component size, area) per class at the chosen thresholds and gate.
    best = np.max([_oof_dice_with_components(oof, dataclasses.replace(pp, min_component=[s] * 4, min_area=[a] * 4))
                   .mean(axis=0) for s in sizes for a in areas], axis=0)
    np.testing.assert_allclose(direct.mean(axis=0), best, atol=1e-12)
    # Specks (256 px) also sit on defective images, where only a component filter removes them.
    assert all(256 < s for s in pp.min_component), pp.min_component
    plain = tune.tune(workdir=work, out=str(tmp_path / "plain"), area_grid=areas, plots=False)
    assert result["dice_after"]["mean"] > plain["dice_after"]["mean"] + 0.005
    assert tune_components.COMPONENT_GRID[0] == 0


def test_edge_choices_extend_the_pixel_grid_or_are_warned_about(tmp_path, capsys):
    work = str(tmp_path)
    oof_workdir(work, n=20, seed=6, classifier=None)
    # Truth pixels sit near 0.45..0.9, background near 0.1: the best threshold is above 0.35, and the 256 px
    # specks survive every area of this grid.
    result = tune.tune(workdir=work, pixel_grid=(0.3, 0.35), area_grid=(0, 100), plots=False)
    assert result["grid"]["pixel_threshold"][-1] == 0.95 and result["grid"]["pixel_threshold"][:2] == [0.3, 0.35]
    assert all(t > 0.35 for t in result["pixel_threshold"]), result["pixel_threshold"]
    expected = [f"class {c + 1}: pixel_threshold 0.95" for c, t in enumerate(result["pixel_threshold"]) if t == 0.95]
    expected += [f"class {c + 1}: min_area 100" for c, a in enumerate(result["min_area"]) if a == 100]
    assert expected and sorted(w.split(" is at")[0] for w in result["warnings"]) == sorted(expected)
    assert Workdir(work).thresholds().record["warnings"] == result["warnings"]
    assert f"WARNING {result['warnings'][0]}" in capsys.readouterr().out


def test_fold_stability_is_each_fold_tuned_alone_and_the_overall_dice_per_fold(tmp_path):
    both, alone = str(tmp_path / "both"), str(tmp_path / "alone")
    oof_workdir(both, n=20, seed=7)
    oof_workdir(alone, n=20, seed=7, folds=(0,))  # the same fold-0 data: it is generated first
    result, fold0 = tune.tune(workdir=both, plots=False), tune.tune(workdir=alone, plots=False)
    stability = result["fold_stability"]
    own = stability["per_fold"]["0"]
    assert own["pixel_threshold"] == fold0["pixel_threshold"] and own["min_area"] == fold0["min_area"]
    direct = _oof_dice_direct(_load_oof(both), postprocess.PostProcess.from_dict(result))
    for k, fold in enumerate(("0", "1")):
        assert stability["per_fold"][fold]["dice"] == pytest.approx(direct[k * 20:(k + 1) * 20].mean(axis=0), abs=1e-12)
    dice = np.array([f["dice"] for f in stability["per_fold"].values()])
    assert stability["spread"]["dice"] == pytest.approx(dice.max(axis=0) - dice.min(axis=0))
    assert Workdir(both).thresholds().record["fold_stability"] == stability


def test_class_diagnosis_beside_the_dice(tuned):
    work, result = tuned
    truth = _load_oof(work)[1]
    has = truth.any(axis=(1, 2))
    assert result["dice_all_empty"]["per_class"] == pytest.approx((~has).mean(axis=0).tolist())
    direct = _oof_dice_direct(_load_oof(work), postprocess.PostProcess.from_dict(result))
    assert result["defect_hit_rate"] == pytest.approx([(direct[has[:, c], c] > 0).mean() for c in range(4)])


def _oof_dice_soft(oof, pp):
    """Dice of `pp` with a soft gate by thresholding every image directly at t + (1 - p) * k, in float64."""
    q, truth, probs = oof
    p = np.broadcast_to(probs, (len(q), NUM_CLASSES)).astype(np.float64)
    effective = np.clip(np.asarray(pp.pixel_threshold) + (1 - p) * np.asarray(pp.soft_gate or [0.0] * 4), 0, 1)
    # 1e-4: tune computes in float32, whose product can land a hair below an integer float64 reaches.
    masks = q > np.floor(effective * 255 + 1e-4)[:, None, None, :]
    masks &= pp.keep(masks.sum(axis=(1, 2)) * SCALE ** 2, probs)[:, None, None, :]
    return metrics.dice_matrix(masks, truth)


@pytest.mark.parametrize("classifier", ["binary", "multilabel"])
def test_soft_gate_stage_is_the_brute_force_optimum_of_direct_thresholding(tmp_path, classifier):
    from steel_tpu.tuning import soft as tune_soft

    work = str(tmp_path)
    oof_workdir(work, n=20, seed=8, speck_prob=0.6, classifier=classifier)
    soft, pixels, areas = (0.0, 0.1, 0.3, 0.6), (0.3, 0.5, 0.7), (0, 300, 3000)
    result = tune.tune(workdir=work, pixel_grid=pixels, area_grid=areas, soft_grid=soft, plots=False)
    pp, oof = postprocess.PostProcess.from_dict(result), _load_oof(work)
    assert result["grid"]["soft_gate"] == list(soft) and len(pp.soft_gate) in (0, 4)
    direct = _oof_dice_soft(oof, pp)
    assert result["dice_after"]["per_class"] == pytest.approx(direct.mean(axis=0).tolist(), abs=1e-12)
    # Every table entry equals direct thresholding: each image's threshold is its own lookup.
    stats = oof_stats.collect((work,))
    tables = tune_soft.tables(stats, pp, soft_grid=soft, pixel_grid=pixels, area_grid=areas)
    for (s, k), (t, thr), (a, area) in itertools.product(enumerate(soft), enumerate(pixels), enumerate(areas)):
        one = dataclasses.replace(pp, soft_gate=[k] * 4, pixel_threshold=[thr] * 4, min_area=[area] * 4)
        np.testing.assert_allclose(tables[:, s, t, a], _oof_dice_soft(oof, one).mean(axis=0), atol=1e-12)
    np.testing.assert_allclose(direct.mean(axis=0), tables.max(axis=(1, 2, 3)), atol=1e-12)
    plain = tune.tune(workdir=work, out=str(tmp_path / "plain"), pixel_grid=pixels, area_grid=areas, plots=False)
    assert result["dice_after"]["mean"] >= plain["dice_after"]["mean"] - 1e-12 and plain["soft_gate"] == []


def test_soft_levels_on_the_device_equal_the_host_rule_and_old_files_load_without_a_soft_gate():
    rng = np.random.default_rng(3)
    probs = rng.uniform(0, 1, (64, 4)).astype(np.float32)
    t, k = (0.3, 0.45, 0.5, 0.75), (0.0, 0.13, 0.5, 1.0)
    q = rng.integers(0, 256, (64, 3, 5, 4)).astype(np.uint8)
    for p in (probs, probs[:, :1]):  # per class (multilabel) and one for all (binary)
        pp = postprocess.PostProcess(pixel_threshold=t, soft_gate=k)
        masks, areas = postprocess.to_masks(tf.constant(q), pp, class_probs=tf.constant(p))
        want = q > postprocess.soft_levels(t, k, p)[:, None, None, :]
        np.testing.assert_array_equal(masks.numpy(), want)
        np.testing.assert_array_equal(areas.numpy(), want.sum(axis=(1, 2)))
    old = {"pixel_threshold": [0.5] * 4, "min_area": [0] * 4, "gate": []}
    assert postprocess.PostProcess.from_dict(old).soft_gate == () and not postprocess.PostProcess().needs_classifier
    assert postprocess.PostProcess(soft_gate=(0,) * 4).soft_gate == ()
    with pytest.raises(ValueError, match="soft_gate"):
        postprocess.PostProcess(soft_gate=(0.1, 0.2))


# --- seed 004's double threshold: an upper threshold + min area decide presence, a lower one draws the mask ---


def _halo_image(rng, **_):
    """One OOF image where only a double threshold does well: a defect is a bright core inside a dim halo (both
    truth), and a clean image may hold a dim blob as large as a halo. Below the dim level a single threshold draws
    the blobs (no min area tells them from halos); above it, only the cores."""
    truth = np.zeros((H, W, NUM_CLASSES), bool)
    p = rng.normal(0.08, 0.04, truth.shape)
    for c in range(NUM_CLASSES):
        y, x, h, w = rng.integers(0, H - 9), rng.integers(0, W - 40), rng.integers(6, 9), rng.integers(24, 40)
        if rng.random() < 0.5:
            truth[y:y + h, x:x + w, c] = True
            p[y:y + h, x:x + w, c] += 0.35
            p[y + 2:y + h - 2, x + 6:x + w - 6, c] = rng.uniform(0.75, 0.95)
        elif rng.random() < 0.7:
            p[y:y + h, x:x + w, c] += 0.35
    return np.round(np.clip(p, 0, 1) * 255).astype(np.uint8), truth


def _oof_dice_rule(oof, pp):
    """Dice of `pp` on the OOF maps by postprocess' own thresholding (threshold_maps, keep): no histograms."""
    q, truth, probs = oof
    masks, presence = postprocess.threshold_maps(q, pp, probs)
    masks &= pp.keep(presence * SCALE ** 2, probs)[:, None, None, :]
    return metrics.dice_matrix(masks, truth)


def test_double_threshold_rule_identity_device_and_refusals():
    rng = np.random.default_rng(5)
    q = rng.integers(0, 256, (32, 3, 5, 4)).astype(np.uint8)
    probs = rng.uniform(0, 1, (32, 4)).astype(np.float32)
    upper, lower = (0.6, 0.5, 0.55, 0.8), (0.3, 0.5, 0.2, 0.79)
    # The identity: a lower threshold equal to the upper one is the single threshold, the same object and masks.
    same = postprocess.PostProcess(pixel_threshold=upper, mask_threshold=upper)
    assert same == postprocess.PostProcess(pixel_threshold=upper) and same.mask_threshold == ()
    masks, presence = postprocess.threshold_maps(q, same)
    np.testing.assert_array_equal(masks, postprocess.binarize(q, upper))
    np.testing.assert_array_equal(presence, masks.sum(axis=(1, 2)))
    # Double: masks above the lower threshold, presence counted above the upper one (q > t * 255, as binarize).
    for soft, p in (((), None), ((0.0, 0.2, 0.1, 0.05), probs), ((0.0, 0.2, 0.1, 0.05), probs[:, :1])):
        pp = postprocess.PostProcess(pixel_threshold=upper, mask_threshold=lower, soft_gate=soft)
        assert pp.mask_threshold == lower and pp.lower == lower
        masks, presence = postprocess.threshold_maps(q, pp, p)
        k = np.asarray(soft or (0.0,) * 4, np.float32)
        shift = (1 - (np.zeros((32, 1), np.float32) if p is None else p)) * k
        want_upper = q > np.floor(np.clip(np.float32(upper) + shift, 0, 1) * 255)[:, None, None, :]
        want_lower = q > np.floor(np.clip(np.float32(lower) + shift, 0, 1) * 255)[:, None, None, :]
        np.testing.assert_array_equal(masks, want_lower)
        np.testing.assert_array_equal(presence, want_upper.sum(axis=(1, 2)))
        assert (masks != postprocess.binarize(q, upper)).any()
        # The device applies the same rule.
        device = postprocess.to_masks(tf.constant(q), pp, class_probs=None if p is None else tf.constant(p))
        np.testing.assert_array_equal(device[0].numpy(), masks)
        np.testing.assert_array_equal(device[1].numpy(), presence)
    for bad, match in ((dict(mask_threshold=(0.7, 0.5, 0.5, 0.5)), "each <= its pixel_threshold"),
                       (dict(mask_threshold=(0.3,)), "4 values"),
                       (dict(mask_threshold=(0.3,) * 4, min_component=(0, 0, 0, 150)), "min_component")):
        with pytest.raises(ValueError, match=match):
            postprocess.PostProcess(pixel_threshold=(0.6,) * 4, **bad)


def test_thresholds_files_from_before_the_double_threshold_load_as_before(tuned, tmp_path):
    work, result = tuned
    old = {k: v for k, v in result.items() if k != "mask_threshold"}  # tune's file as written before this option
    old["grid"] = {k: v for k, v in old["grid"].items() if k != "mask_threshold"}
    path = tmp_path / "thresholds.json"
    path.write_text(json.dumps(old))
    found = thresholds_format.read(str(path))
    pp, where = found.postprocess, found.path
    assert where == str(path) and pp.mask_threshold == () and pp.lower == pp.pixel_threshold
    assert {k: v for k, v in pp.to_dict().items() if k != "mask_threshold"} == {
        k: old.get(k, []) if k == "soft_gate" else old[k] for k in pp.to_dict() if k != "mask_threshold"}
    oof = _load_oof(work)
    np.testing.assert_allclose(_oof_dice_rule(oof, pp), _oof_dice_direct(oof, pp), atol=0)


# A binary head barely gates here (most images have some defect); a multilabel one would separate the halos.
@pytest.mark.parametrize("classifier, soft", [(None, (0.0,)), ("binary", (0.0, 0.1, 0.3))])
def test_double_threshold_stage_is_the_brute_force_optimum_of_postprocess_rule(tmp_path, classifier, soft):
    from steel_tpu.tuning import double as tune_double

    work = str(tmp_path)
    oof_workdir(work, n=16, seed=9, classifier=classifier, make_image=_halo_image)
    pixels, areas = (0.3, 0.4, 0.5, 0.6, 0.7), (0, 300, 3000)
    result = tune.tune(workdir=work, pixel_grid=pixels, area_grid=areas, soft_grid=soft, double=True, plots=False)
    plain = tune.tune(workdir=work, out=str(tmp_path / "plain"), pixel_grid=pixels, area_grid=areas, soft_grid=soft,
                      plots=False)
    pp, oof = postprocess.PostProcess.from_dict(result), _load_oof(work)
    assert Workdir(work).thresholds().to_doc() == result and plain["mask_threshold"] == []
    # Tune's OOF Dice for the chosen values == the Dice of postprocess' own rule applied to the same maps.
    direct = _oof_dice_rule(oof, pp)
    assert result["dice_after"]["per_class"] == pytest.approx(direct.mean(axis=0).tolist(), abs=1e-12)
    # Every table entry == brute force with that (upper, lower, min area); lower > upper is never chosen.
    uppers, lowers = result["grid"]["pixel_threshold"], result["grid"]["mask_threshold"]
    assert lowers[0] < pixels[0] and lowers[-1] == uppers[-1]  # a lower threshold at 0.3 extended its grid down
    stats = oof_stats.collect((work,))
    table = tune_double.tables(stats, pp, upper_grid=uppers, lower_grid=lowers, area_grid=areas)
    for (i, up), (j, low), (a, area) in itertools.product(enumerate(uppers), enumerate(lowers), enumerate(areas)):
        if low > up:
            assert np.all(table[:, i, j, a] == -np.inf)
            continue
        one = dataclasses.replace(pp, pixel_threshold=[up] * 4, mask_threshold=[low] * 4, min_area=[area] * 4)
        np.testing.assert_allclose(table[:, i, j, a], _oof_dice_rule(oof, one).mean(axis=0), atol=1e-12)
    np.testing.assert_allclose(direct.mean(axis=0), table.max(axis=(1, 2, 3)), atol=1e-12)
    # lower == upper is the single threshold: the diagonal is the first stage's table at the chosen gate.
    if classifier is None and len(soft) == 1:
        single, _, _ = search.search_tables(stats, pixel_grid=uppers, area_grid=areas)
        diagonal = np.stack([table[:, i, lowers.index(up)] for i, up in enumerate(uppers)], axis=1)
        np.testing.assert_allclose(diagonal, single[:, 0] / len(stats.image_ids), atol=1e-12)
    # On halos every class is better doubled, and a class is never worse than with the single threshold.
    assert pp.mask_threshold and all(low < up for low, up in zip(pp.mask_threshold, pp.pixel_threshold)), pp
    assert all(d > s + 0.05 for d, s in zip(result["dice_after"]["per_class"], plain["dice_after"]["per_class"]))


def test_double_threshold_stays_single_where_it_is_no_better(tuned, tmp_path):
    work, result = tuned
    double = tune.tune(workdir=work, out=str(tmp_path), double=True, plots=False)
    pp = postprocess.PostProcess.from_dict(double)
    assert double["dice_after"]["mean"] >= result["dice_after"]["mean"] - 1e-12
    for c in range(NUM_CLASSES):
        if pp.lower[c] == pp.pixel_threshold[c]:  # kept single: the first stage's choice, unchanged
            assert (pp.pixel_threshold[c], pp.min_area[c]) == (result["pixel_threshold"][c], result["min_area"][c])
        else:
            assert double["dice_after"]["per_class"][c] > result["dice_after"]["per_class"][c] + 1e-12
    with pytest.raises(ValueError, match="--double and --components"):
        tune.tune(workdir=work, out=str(tmp_path), double=True, component_grid=(0, 100), plots=False)


def test_double_threshold_edges_and_fold_stability(tmp_path):
    both, alone = str(tmp_path / "both"), str(tmp_path / "alone")
    oof_workdir(both, n=16, seed=10, classifier=None, make_image=_halo_image)
    oof_workdir(alone, n=16, seed=10, classifier=None, make_image=_halo_image, folds=(0,))
    grids = dict(pixel_grid=(0.4, 0.5, 0.6, 0.7), area_grid=(0, 300, 3000), plots=False, double=True)
    result, fold0 = tune.tune(workdir=both, **grids), tune.tune(workdir=alone, **grids)
    own = result["fold_stability"]["per_fold"]["0"]
    for key in ("pixel_threshold", "mask_threshold", "min_area"):
        assert own[key] == fold0[key], key
    spread = result["fold_stability"]["spread"]["mask_threshold"]
    lows = np.array([f["mask_threshold"] for f in result["fold_stability"]["per_fold"].values()])
    assert spread == pytest.approx(lows.max(axis=0) - lows.min(axis=0))
    assert any(", lower " in line for line in tune_checks.describe(result["fold_stability"]))
    # A lower threshold on the bottom of its grid is warned about; a single-threshold class has none to warn of.
    pp = postprocess.PostProcess(pixel_threshold=(0.6, 0.5, 0.5, 0.5), mask_threshold=(0.05, 0.5, 0.3, 0.5))
    warnings = tune_checks.edge_warnings(pp, pixel_grid=(0.3, 0.6, 0.9), area_grid=(0, 100), gate_grid=(0.0,),
                                         component_grid=(0,), lower_grid=(0.05, 0.3, 0.6))
    assert warnings == ["class 1: mask_threshold 0.05 is at the bottom of its grid [0.05..0.6]; the best value "
                        "may lie beyond it"]


# --- tune_gain: a class is submitted only where it beats all-empty by at least min_gain images on OOF ---


def _rare_class_images():
    """make_image for _write_workdir: classes 1 and 3 planted and predicted in every other image (counted over
    all folds); class 2 in the first image only, half of it predicted (Dice 2/3: a gain of 2/3 of an image over
    empty); class 4 never present and never predicted, so every setting ties with submitting it empty (the tie
    that once kept the loosest setting)."""
    count = itertools.count()

    def make(rng, **_):
        i = next(count)
        truth = np.zeros((H, W, NUM_CLASSES), bool)
        p = np.full(truth.shape, 0.05)
        for c in (0, 2):
            if i % 2 == 0:
                truth[4:12, 20 + 40 * c:60 + 40 * c, c] = True
        if i == 0:
            truth[14:22, 100:140, 1] = True
        p[truth] = 0.9
        if i == 0:
            p[14:22, 120:140, 1] = 0.05
        return np.round(p * 255).astype(np.uint8), truth

    return make


@pytest.mark.parametrize("classifier", ["multilabel", None])
def test_a_class_gaining_less_than_min_gain_over_empty_is_switched_off(tmp_path, capsys, classifier):
    work = str(tmp_path / "w")
    oof_workdir(work, n=20, folds=(0, 1), classifier=classifier, make_image=_rare_class_images())
    oof = _load_oof(work)
    result = tune.tune(workdir=work, plots=True)
    pp = postprocess.PostProcess.from_dict(result)
    assert result["switched_off"] == [False, True, False, True] == list(pp.off)
    assert result["pixel_threshold"][1] == result["pixel_threshold"][3] == postprocess.OFF
    assert result["gain_over_empty"] == pytest.approx([20, 2 / 3, 20, 0], abs=1e-9) and result["min_gain"] == 1.0
    # What tune reports is what predict's own rule draws: nothing for the off classes, even on maps of 255.
    direct = _oof_dice_rule(oof, pp)
    empty = (~oof[1].any(axis=(1, 2))).astype(np.float64)
    assert result["dice_after"]["per_class"] == pytest.approx(direct.mean(axis=0).tolist(), abs=1e-12)
    np.testing.assert_array_equal(direct[:, [1, 3]], empty[:, [1, 3]])
    full = np.full((2, 4, 6, NUM_CLASSES), 255, np.uint8)
    masks, _ = postprocess.threshold_maps(full, pp, oof[2][:2] if classifier else None)
    assert not masks[..., [1, 3]].any() and masks[..., [0, 2]].all()
    with open(os.path.join(Workdir(work).tune_dir(), plot_data.PLOT_FILES[0]), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"  # the plots circle an off class's best setting, not OFF
    with open(report.report(workdir=work, out=str(tmp_path / "report"))) as f:
        assert f.read().count("<td>off (never submitted)</td>") == 2
    # min_gain 0.5 lets class 2's 2/3 through; 0 keeps a class that ties with empty (the old rule).
    assert cli.main(["tune", "--workdir", work, "--out", str(tmp_path / "half"), "--min-gain", "0.5"]) == 0
    lower = Workdir(str(tmp_path / "half")).thresholds().to_doc()
    assert lower["switched_off"] == [False, False, False, True]
    assert lower["dice_after"]["per_class"][1] > result["dice_after"]["per_class"][1]
    ties = tune.tune(workdir=work, out=str(tmp_path / "ties"), plots=False, min_gain=0)
    assert ties["switched_off"] == [False] * 4
    assert cli.main(["tune", "--workdir", work, "--out", str(tmp_path / "neg"), "--min-gain", "-1"]) != 0
    assert "min_gain must be a number of images >= 0, got -1" in capsys.readouterr().err
    assert not tune_checks.edge_warnings(pp, pixel_grid=search.PIXEL_GRID, area_grid=search.AREA_GRID,
                                         gate_grid=search.GATE_GRID, component_grid=(0,))  # OFF is no grid edge
    per_fold = result["fold_stability"]["per_fold"]
    assert [f["pixel_threshold"][3] for f in per_fold.values()] == [postprocess.OFF] * 2  # each fold alone too


def test_switched_off_clears_an_off_class_settings_and_never_draws_it():
    pp = postprocess.PostProcess(pixel_threshold=(0.5, 0.6, 0.7, 0.4), min_area=(100, 200, 300, 400),
                                 gate=(0.2, 0.3, 0.0, 0.0), soft_gate=(0.1, 0.2, 0.0, 0.0),
                                 mask_threshold=(0.4, 0.5, 0.7, 0.4))
    off = postprocess.switched_off(pp, [1])
    assert off.pixel_threshold == (0.5, 1.0, 0.7, 0.4) and off.min_area == (100, 0, 300, 400)
    assert off.gate == (0.2, 0.0, 0.0, 0.0) and off.soft_gate == (0.1, 0.0, 0.0, 0.0)
    assert off.mask_threshold == (0.4, 1.0, 0.7, 0.4) and off.off == (False, True, False, False)
    assert postprocess.PostProcess.from_dict(off.to_dict()) == off
    # Switching off the only gated / soft-gated classes leaves no classifier to load; a binary gate stays.
    assert not postprocess.switched_off(pp, [0, 1]).needs_classifier
    assert postprocess.switched_off(postprocess.PostProcess(gate=(0.4,)), [0, 1, 2, 3]).gate == (0.4,)
    assert postprocess.switched_off(pp, []) is pp
    q = np.full((3, 4, 5, NUM_CLASSES), 255, np.uint8)
    probs = np.full((3, NUM_CLASSES), 0.01, np.float32)  # the soft gate at its largest raise
    masks, counts = postprocess.to_masks(tf.constant(q), off, class_probs=tf.constant(probs))
    host_masks, host_counts = postprocess.threshold_maps(q, off, probs)
    np.testing.assert_array_equal(masks.numpy(), host_masks)
    np.testing.assert_array_equal(counts.numpy(), host_counts)
    assert not host_masks[..., 1].any() and host_counts[:, 1].tolist() == [0, 0, 0]
