"""Several workdirs as one ensemble: tune on their averaged OOF data, predict with every member's fold models, and
the refusals that keep either from mixing what cannot be averaged."""

import json
import os
import pathlib
import shutil
import types

import numpy as np
import pytest
import tensorflow as tf
from fakes import finish_fold, oof_workdir

from steel_tpu import cli, config, postprocess, storage, tasks
from steel_tpu.constants import CLASS_IDS
from steel_tpu.data import pipeline
from steel_tpu.formats import kaggle
from steel_tpu.formats import thresholds as thresholds_format
from steel_tpu.formats.submission import parts_dir
from steel_tpu.formats.workdir import Workdir
from steel_tpu.scoring import ensemble, members, predict
from steel_tpu.scoring.source import Member, ModelSource, unseen_models
from steel_tpu.tuning import oof_stats, plot_data, tune

# The second member: cheaper than conftest's trained_workdir (no XLA, one step) and different in what members may
# differ in: the segmenter's decoder and the classifier's input size.
MEMBER_OVERRIDES = [
    "segment.model.decoder_filters=[32,16,16,8,8]", "classify.data.image_height=32", "classify.data.image_width=160",
    "classify.train.steps_per_epoch=1", "segment.train.steps_per_epoch=1",
    "classify.train.jit_compile=False", "segment.train.jit_compile=False",
]


def _bind(work, fingerprint="shards-a", weights_bytes=100):
    """What train writes beside a synthetic workdir's OOF files: shards.json (Workdir.bind_shards; only its record
    matters) and a weights file per fold (tune records their sizes; it never loads them)."""
    wd = Workdir(work)
    wd.bind_shards(types.SimpleNamespace(path=f"/data/{fingerprint}", fingerprint=fingerprint))
    for task in ("segment", "classify"):
        for fold in wd.completed_folds(task):
            storage.write_text(wd.weights_path(task, fold), "x" * weights_bytes)


def _with_config(work, overrides):
    wd = Workdir(work)
    storage.write_text(os.path.join(work, "config.json"), config.to_json(config.apply_overrides(wd.config(),
                                                                                               overrides)))


def _perturbed_copy(src, dst, *, seed, fingerprint="shards-a"):
    """`src` copied, its segment and classify OOF probabilities moved: another model's OOF on the same images."""
    shutil.copytree(src, dst)
    storage.remove(os.path.join(dst, "shards.json"))
    rng, wd = np.random.default_rng(seed), Workdir(dst)
    for fold in wd.completed_folds("segment"):
        oof = wd.oof("segment", fold)
        noise = rng.integers(-60, 61, oof["probs"].shape)
        wd.save_oof("segment", fold, **{**oof, "probs": np.clip(oof["probs"] + noise, 0, 255).astype(np.uint8)})
    for fold in wd.completed_folds("classify"):
        oof = wd.oof("classify", fold)
        wd.save_oof("classify", fold, **{**oof, "probs": rng.uniform(0, 1, oof["probs"].shape).astype(np.float32)})
    _bind(dst, fingerprint)
    return dst


def _hand_averaged(works, out):
    """A workdir whose OOF files hold the members' OOF data averaged by hand with numpy (float64 mean, rounded
    half to even): what tune over the members must score exactly like."""
    wds, target = [Workdir(w) for w in works], Workdir(out)
    target.save_config(wds[0].config())
    for task in ("segment", "classify"):
        for fold in sorted(set.intersection(*(set(wd.completed_folds(task)) for wd in wds))):
            oofs = [wd.oof(task, fold) for wd in wds]
            mean = np.mean([o["probs"].astype(np.float64) for o in oofs], axis=0)
            probs = np.rint(mean).astype(np.uint8) if task == "segment" else mean.astype(np.float32)
            target.save_oof(task, fold, **{**oofs[0], "probs": probs})
            finish_fold(target, task, fold)
    return out


def _same_tuning(ens, reference):
    """The thresholds, Dice and plot data of two tunes agree; the ensemble's record its members, and no
    full-resolution Dice (its averaged maps have none)."""
    got, want = (json.loads(storage.read_text(Workdir(w).thresholds_path())) for w in (ens, reference))
    assert "dice_before_full_resolution" not in got and "dice_before_full_resolution" in want
    for key in set(want) - {"dice_before_full_resolution"}:
        assert got[key] == want[key], key
    plots = [plot_data.load(Workdir(w).tune_dir()) for w in (ens, reference)]
    for key in plots[1]:
        np.testing.assert_array_equal(plots[0][key], plots[1][key], err_msg=key)
    return got


@pytest.fixture(scope="module")
def two_members(tmp_path_factory):
    """Two synthetic workdirs with the same images and truth, different OOF probabilities, one shard record."""
    root = tmp_path_factory.mktemp("members")
    a = str(root / "a")
    oof_workdir(a, n=30, classifier="multilabel")
    _bind(a)
    return a, _perturbed_copy(a, str(root / "b"), seed=1)


@pytest.mark.parametrize("stages", [{}, {"component_grid": (0, 150, 500)}, {"soft_grid": (0.0, 0.2), "double": True}])
def test_tune_over_members_is_tune_over_their_hand_averaged_oof(two_members, tmp_path, stages, capsys):
    ens = str(tmp_path / "ens")
    tune.tune(workdir=list(two_members), out=ens, plots=False, **stages)
    assert "ensemble of 2 workdirs" in capsys.readouterr().out
    reference = _hand_averaged(two_members, str(tmp_path / "ref"))
    tune.tune(workdir=reference, plots=False, **stages)
    got = _same_tuning(ens, reference)
    recorded = got["members"]
    assert [m["workdir"] for m in recorded] == [os.path.abspath(w) for w in two_members]
    for member in recorded:
        assert sorted(member["models"]) == ["classify", "segment"] and len(member["models"]["segment"]) == 2
    assert not os.path.exists(Workdir(two_members[0]).thresholds_path())  # no member's workdir is written


def test_only_folds_complete_in_every_member_are_averaged(two_members, tmp_path, capsys):
    a, b = two_members
    extra = _perturbed_copy(b, str(tmp_path / "c"), seed=2)
    storage.remove(Workdir(extra).done_path("segment", 1))
    wd = members.open_oof([a, extra])
    assert wd.completed_folds("segment") == [0] and wd.left_out("segment") == {a: [1]}
    stats = oof_stats.collect([a, extra])
    assert stats.folds == (0,) and stats.dice_full is None
    assert f"{a} also has fold(s) [1], not used" in capsys.readouterr().out


def _cli_error(argv, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    return err


def test_tune_refuses_members_that_cannot_be_averaged(two_members, tmp_path, capsys):
    a, b = two_members
    out = str(tmp_path / "ens")
    assert "need --out DIR" in _cli_error(["tune", "--workdir", a, "--workdir", b], capsys)
    assert "is one of the --workdir's" in _cli_error(["tune", "--workdir", a, "--workdir", b, "--out", b], capsys)
    other = _perturbed_copy(a, str(tmp_path / "other_shards"), seed=3, fingerprint="shards-b")
    err = _cli_error(["tune", "--workdir", a, "--workdir", other, "--out", out], capsys)
    assert "different shard folders" in err and a in err and other in err

    shuffled = _perturbed_copy(a, str(tmp_path / "shuffled"), seed=4)
    oof = Workdir(shuffled).oof("segment", 0)
    Workdir(shuffled).save_oof("segment", 0, **{k: v[::-1] for k, v in oof.items()})
    err = _cli_error(["tune", "--workdir", a, "--workdir", shuffled, "--out", out], capsys)
    assert "fold 0's out-of-fold images differ (row 0:" in err

    binary = _perturbed_copy(a, str(tmp_path / "binary"), seed=5)
    oof = Workdir(binary).oof("classify", 0)
    Workdir(binary).save_oof("classify", 0, **{**oof, "probs": oof["probs"][:, :1]})
    err = _cli_error(["tune", "--workdir", a, "--workdir", binary, "--out", out], capsys)
    assert "cannot average gate heads" in err and "(30, 4) vs (30, 1)" in err

    wide = _perturbed_copy(a, str(tmp_path / "wide"), seed=6)
    _with_config(wide, ["segment.data.image_height=128"])
    err = _cli_error(["tune", "--workdir", a, "--workdir", wide, "--out", out], capsys)
    assert "segmenter input size (h, w) (64, 320) vs (128, 320)" in err and a in err and wide in err
    assert "given twice" in _cli_error(["tune", "--workdir", a, "--workdir", a + "/", "--out", out], capsys)
    assert not os.path.exists(os.path.join(out, "thresholds.json"))


def test_thresholds_record_is_checked_against_the_members(two_members, tmp_path):
    a, b = (_perturbed_copy(w, str(tmp_path / name), seed=7) for w, name in zip(two_members, "ab"))
    ens = str(tmp_path / "ens")
    tune.tune(workdir=[a, b], out=ens, plots=False)
    where = os.path.join(ens, "thresholds.json")
    found = thresholds_format.read(where)
    ModelSource.resolve([b, os.path.relpath(a)]).check_tuned(found)  # order and spelling do not matter
    with pytest.raises(members.MembersError, match="tuned for the ensemble of .*, not of"):
        ModelSource.resolve(a).check_tuned(found)
    with pytest.raises(members.MembersError, match="tuned for the ensemble of"):
        ModelSource.resolve([a, str(tmp_path / "c")]).check_tuned(found)
    single = tune.tune(workdir=a, out=str(tmp_path / "single"), plots=False)
    assert "members" not in single
    single = thresholds_format.read(os.path.join(tmp_path, "single", "thresholds.json"))
    with pytest.raises(members.MembersError, match="tuned for one workdir, not for the ensemble"):
        ModelSource.resolve([a, b]).check_tuned(single)
    # Predict's members: the fold models tune averaged, and one it did not (a fold finished after tuning).
    storage.write_text(Workdir(b).weights_path("segment", 2), "x" * 100)
    planned = [_planned(a, {"segment": [0, 1]}), _planned(b, {"segment": [0, 1, 2], "classify": [0]})]
    assert unseen_models(found, planned) == [Workdir(b).weights_path("segment", 2)]
    storage.write_text(Workdir(b).weights_path("segment", 1), "x" * 101)  # retrained into another model since
    with pytest.raises(members.MembersError, match="is 101 bytes, 100 when these thresholds were tuned"):
        unseen_models(found, [_planned(b, {"segment": [1]})])


def _planned(work, folds):
    """The Member predict would plan for `folds` of `work` (its identity is what unseen_models reads)."""
    return Member(path=work, models=Workdir(work), config=Workdir(work).config(), folds=folds,
                  identity=Workdir(work).identity(folds))


def test_predict_needs_thresholds_for_several_workdirs(two_members, tmp_path, capsys):
    a, b = two_members
    out = tmp_path / "sub.csv"
    out.write_text("previous")
    err = _cli_error(["predict", "--workdir", a, "--workdir", b, "--images", str(tmp_path), "--out", str(out)], capsys)
    assert "several --workdir need --thresholds" in err
    assert out.read_text() == "previous"  # refused before the previous submission is claimed
    # On Beam too (it scores several workdirs as predict does: tests/test_beam.py).
    err = _cli_error(["predict", "--workdir", a, "--workdir", b, "--images", str(tmp_path), "--out", str(out),
                      "--runner", "DirectRunner"], capsys)
    assert "several --workdir need --thresholds" in err
    assert out.read_text() == "previous"


# --- trained members: the real models, on conftest's tiny shards ---


@pytest.fixture(scope="session")
def second_member(tiny_data, tiny_config, tmp_path_factory):
    """Another workdir trained on the same shards as trained_workdir, cheaply: fold 0 only (so trained_workdir's
    fold 1 is left out of tuning, and weighs in at predict as one more fold model), another decoder and classifier
    size."""
    from steel_tpu.training import train

    work = str(tmp_path_factory.mktemp("member") / "work")
    train.run(shards=tiny_data["shards"], workdir=work, cfg=config.apply_overrides(tiny_config, MEMBER_OVERRIDES),
              folds=(0,))
    return work


@pytest.fixture(scope="module")
def tuned_pair(trained_workdir, second_member, tmp_path_factory):
    ens = str(tmp_path_factory.mktemp("ens") / "ens")
    assert cli.main(["tune", "--workdir", trained_workdir, "--workdir", second_member, "--out", ens]) == 0
    return ens


@pytest.mark.slow
def test_tune_over_trained_members_is_tune_over_their_hand_averaged_oof(trained_workdir, second_member, tuned_pair,
                                                                         tmp_path):
    reference = _hand_averaged([trained_workdir, second_member], str(tmp_path / "ref"))
    tune.tune(workdir=reference, plots=False)
    got = _same_tuning(tuned_pair, reference)
    assert got["folds"] == [0] and Workdir(trained_workdir).completed_folds("segment") == [0, 1]
    for member, work in zip(got["members"], (trained_workdir, second_member)):
        assert member["workdir"] == os.path.abspath(work)
        identity = Workdir(work).identity({"segment": [0], "classify": [0]})
        assert member["models"] == {t: [[p, n] for p, n in ident] for t, ident in identity.items()}


def _decoded(paths, size):
    ds = pipeline.predict_dataset(source=paths, image_size=size, batch_size=len(paths))
    return next(ds.as_numpy_iterator())["image"]


def _member_maps(work, x):
    """(segment probabilities of each fold model, gating probabilities of each classifier) of one member, eagerly
    model by model with its own task objects, at its own classifier size."""
    wd = Workdir(work)
    cfg = wd.config()
    seg, cls = [], []
    x = tf.cast(x, tf.float32)
    for name, out in (("segment", seg), ("classify", cls)):
        task = tasks.make(name, cfg)
        size = (cfg.classify.data.image_height, cfg.classify.data.image_width)
        inputs = x if name == "segment" or tuple(x.shape[1:3]) == size else tf.round(
            tf.image.resize(x, size, method="area"))
        for fold in wd.completed_folds(name):
            model = task.build_model(pretrained=False)
            wd.load_weights(model, name, fold)
            out.append(np.asarray(task.probs(model, inputs)))
    return seg, cls


@pytest.mark.slow
def test_predict_over_members_averages_every_fold_model_of_each(trained_workdir, second_member, tuned_pair,
                                                                 tiny_data, tmp_path):
    images = os.path.join(tiny_data["data"], "test_images")
    ids = sorted(os.listdir(images))
    x = _decoded([os.path.join(images, i) for i in ids], (64, 320))
    maps = [_member_maps(w, x) for w in (trained_workdir, second_member)]
    assert [len(s) for s, _ in maps] == [2, 1] and maps[1][1][0].shape == maps[0][1][0].shape  # both multilabel
    seg = np.mean([p for s, _ in maps for p in s], axis=0)  # every fold model once: 2/3 for trained_workdir
    probs = np.mean([p for _, c in maps for p in c], axis=0)
    q = postprocess.to_full_resolution(seg).numpy()
    # Thresholds that draw some masks and gate some out: the test cannot pass vacuously. Graph and eager Keras differ
    # in the last float bits, so each pixel threshold sits at its class's 0.9 quantile but below its top level, a
    # pixel may differ only where its eager level is next to that threshold level, and a gate sits in a gap of at
    # least 1e-4 between two images' averaged probabilities. The tiny classifiers often give every image the same
    # probability to 1e-6 (a gate between two of them flipped a whole mask in CI): then the class is kept whole,
    # but for one class that is dropped whole.
    level = [max(min(int(np.quantile(q[..., c], 0.9)), int(q[..., c].max()) - 1), 0) for c in range(4)]
    pixel = [(lv + 0.5) / 255 for lv in level]
    masks = postprocess.threshold_maps(q, postprocess.PostProcess(pixel_threshold=pixel))[0]
    ordered = np.sort(probs, axis=0)
    gaps = np.diff(ordered, axis=0)
    split = np.argmax(gaps, axis=0)
    gate = [float(ordered[split[c], c] + ordered[split[c] + 1, c]) / 2 if gaps[split[c], c] > 1e-4 else 0.0
            for c in range(4)]
    if not any(gate):
        drawn = masks.any(axis=(0, 1, 2))
        dropped = max(c for c in range(4) if c != int(np.argmax(drawn)))
        gate[dropped] = (float(ordered[-1, dropped]) + 1) / 2
    pp = postprocess.PostProcess(pixel_threshold=pixel, gate=gate)
    masks, areas = postprocess.threshold_maps(q, pp, probs)
    want = masks & pp.keep(areas, probs)[:, None, None, :]
    assert want.any() and not want.all() and not want.any(axis=(1, 2)).all()
    at_threshold = (q == np.array(level, np.uint8)) | (q == np.array(level, np.uint8) + 1)

    out = tmp_path / "sub.csv"
    summary = predict.predict(workdir=[trained_workdir, second_member], images=images, out=str(out), thresholds=pp,
                              batch_size=8, progress=False)
    assert summary["folds"] == {trained_workdir: {"classify": [0, 1], "segment": [0, 1]},
                                second_member: {"classify": [0], "segment": [0]}}
    labels = kaggle.read_labels(str(out))
    got = np.stack([labels.masks(i) for i in ids])
    differ = got != want
    assert not (differ & ~at_threshold).any() and differ.mean() < 1e-3


@pytest.mark.slow
def test_predict_cli_with_the_ensembles_thresholds_and_its_refusals(trained_workdir, second_member, tuned_pair,
                                                                    tiny_data, tmp_path, capsys):
    images = os.path.join(tiny_data["data"], "test_images")
    thresholds = os.path.join(tuned_pair, "thresholds.json")
    out = tmp_path / "sub.csv"
    both = ["--workdir", trained_workdir, "--workdir", second_member]
    assert cli.main(["predict", *both, "--images", images, "--out", str(out), "--thresholds", thresholds,
                     "--device", "cpu"]) == 0
    # trained_workdir's fold 1 scores too, though tune averaged fold 0 only: said, not refused.
    printed = capsys.readouterr().out
    assert "fold model(s) tune did not average (e.g. " + os.path.join(trained_workdir, "") in printed
    lines = out.read_text().splitlines()
    assert lines[0] == "ImageId,EncodedPixels,ClassId" and len(lines) == 1 + len(os.listdir(images)) * len(CLASS_IDS)

    base = ["--images", images, "--out", str(tmp_path / "x.csv"), "--thresholds", thresholds]
    err = _cli_error(["predict", "--workdir", trained_workdir, *base], capsys)
    assert "tuned for the ensemble of" in err
    copy = shutil.copytree(second_member, tmp_path / "copy")
    err = _cli_error(["predict", "--workdir", trained_workdir, "--workdir", str(copy), *base], capsys)
    assert "tuned for the ensemble of" in err and str(copy) in err

    # Members whose segmenters take another size are refused before any model is built.
    _with_config(str(copy), ["segment.data.image_width=352"])
    with pytest.raises(members.MembersError, match=r"segmenter input size \(h, w\) \(64, 320\) vs \(64, 352\)"):
        _plan([trained_workdir, str(copy)], tasks=("segment",))
    # Classifiers gating with different heads cannot be averaged: refused naming both, before loading weights.
    _with_config(str(copy), ["segment.data.image_width=320", "classify.model.heads=binary"])
    with pytest.raises(members.MembersError, match=r"classifier gate heads multilabel vs binary") as refused:
        ensemble.build(_plan([trained_workdir, str(copy)], tasks=("classify", "segment")),
                       strategy=tf.distribute.get_strategy())
    assert trained_workdir in str(refused.value) and str(copy) in str(refused.value)


@pytest.mark.slow
def test_a_resume_with_other_members_starts_over(trained_workdir, second_member, tiny_data, tmp_path):
    images = os.path.join(tiny_data["data"], "test_images")
    out = tmp_path / "sub.csv"
    both = [trained_workdir, second_member]

    def crash_after(n):
        def crash(committed):
            if committed == n:
                raise KeyboardInterrupt(f"simulated crash after chunk {n}")
        return crash

    def run(works, **options):  # fold 0 of each member only: half the models to build, the same plan logic
        return predict.predict(workdir=works, images=images, out=str(out), thresholds=postprocess.PostProcess(),
                               folds=(0,), batch_size=4, chunk_size=4, progress=False, **options)

    with pytest.raises(KeyboardInterrupt):
        run(both, _after_chunk=crash_after(1))
    first = (pathlib.Path(parts_dir(out)) / "part-00000.csv").stat().st_mtime_ns
    with pytest.raises(KeyboardInterrupt):  # the same members resume: chunk 0 is kept, chunk 1 is scored
        run(both, _after_chunk=crash_after(1))
    assert sorted(os.listdir(parts_dir(out))) == ["part-00000.csv", "part-00001.csv", "plan.json"]
    assert (pathlib.Path(parts_dir(out)) / "part-00000.csv").stat().st_mtime_ns == first
    assert run([trained_workdir])["resumed_chunks"] == 0  # one member alone does not reuse the ensemble's chunks


def _member(src, dst, *, overrides, seed):
    """A copy of the synthetic workdir `src` as one of seed 000's member workdirs: its config (`overrides`, e.g.
    tasks=["segment"] and one class), the other task's files gone, a one-class segmenter's maps of the other
    classes zeros (as Segment.probs writes them) and a classifier's probabilities drawn anew."""
    shutil.copytree(src, dst)
    storage.remove(os.path.join(dst, "shards.json"))
    _with_config(dst, overrides)
    wd, rng = Workdir(dst), np.random.default_rng(seed)
    cfg = wd.config()
    for task in ("classify", "segment"):
        if task not in cfg.tasks:
            shutil.rmtree(os.path.join(dst, task))
    for fold in wd.completed_folds("segment"):
        oof = wd.oof("segment", fold)
        others = [i for i, c in enumerate(CLASS_IDS) if c not in cfg.segment.model.classes]
        oof["probs"][..., others] = 0
        wd.save_oof("segment", fold, **oof)
    for fold in wd.completed_folds("classify"):
        oof = wd.oof("classify", fold)
        width = 1 if cfg.classify.model.heads == "binary" else 4
        probs = rng.uniform(0, 1, (len(oof["probs"]), width)).astype(np.float32)
        wd.save_oof("classify", fold, **{**oof, "probs": probs})
    _bind(dst)
    return dst


@pytest.fixture(scope="module")
def seed000_members(two_members, tmp_path_factory):
    """Seed 000's six member workdirs, synthetic: binary and defect-images-only multilabel classifiers, and one
    segmenter per class whose maps are `two_members[0]`'s maps of that class."""
    root, a = tmp_path_factory.mktemp("seed000"), two_members[0]
    found = {"binary": _member(a, str(root / "binary"), seed=1, overrides=[
                 'tasks=["classify"]', "classify.model.heads=binary"]),
             "multilabel": _member(a, str(root / "multilabel"), seed=2, overrides=[
                 'tasks=["classify"]', "classify.model.heads=multilabel", "classify.data.clean_keep=0"])}
    for c in CLASS_IDS:
        found[f"class{c}"] = _member(a, str(root / f"class{c}"), seed=3, overrides=[
            'tasks=["segment"]', f"segment.model.classes=[{c}]"])
    return found


def test_per_class_segmenters_and_a_pair_of_classifiers_ensemble_as_seed_000(seed000_members, two_members, tmp_path):
    work = list(seed000_members.values())
    averaged, a = members.open_oof(work), Workdir(two_members[0])
    assert averaged.completed_folds("segment") == averaged.completed_folds("classify") == [0, 1]
    binary, given = Workdir(seed000_members["binary"]), Workdir(seed000_members["multilabel"])
    for fold in (0, 1):
        # Each class's maps come from the one segmenter predicting it, unchanged (not averaged with zeros).
        np.testing.assert_array_equal(averaged.oof("segment", fold)["probs"], a.oof("segment", fold)["probs"])
        # The gate: P(defect) x P(class | defect).
        want = binary.oof("classify", fold)["probs"].astype(np.float64) * given.oof("classify", fold)["probs"]
        got = averaged.oof("classify", fold)["probs"]
        assert got.shape == (30, 4) and got.dtype == np.float32
        np.testing.assert_array_equal(got, want.astype(np.float32))
    # Tune over the six is tune over one workdir holding those arrays.
    reference = str(tmp_path / "ref")
    shutil.copytree(two_members[0], reference)
    for fold in (0, 1):
        Workdir(reference).save_oof("classify", fold, **averaged.oof("classify", fold))
    ens = str(tmp_path / "ens")
    tune.tune(workdir=work, out=ens, plots=False)
    tune.tune(workdir=reference, plots=False)
    recorded = _same_tuning(ens, reference)["members"]
    assert [sorted(m["models"]) for m in recorded] == [["classify"]] * 2 + [["segment"]] * 4


def test_gates_that_cannot_combine_and_members_that_draw_nothing_are_refused(seed000_members, two_members):
    binary, given, class1 = (seed000_members[k] for k in ("binary", "multilabel", "class1"))
    # An ordinary multilabel classifier (all images) beside a binary one, or beside a defect-images-only one.
    for other in (two_members[0], given):
        pair = [binary if other == two_members[0] else two_members[0], other]
        with pytest.raises(members.MembersError, match="classifier gate heads"):
            members.open_oof([*pair, class1]).oof("classify", 0)
        with pytest.raises(members.MembersError, match="classifier gate heads"):
            _plan([*pair, class1], tasks=("classify", "segment"))
    with pytest.raises(members.MembersError, match="no workdir trains a segmenter"):
        _plan([binary, given], tasks=("classify", "segment"))
    # Scoring without a gate loads no classifier: a classifier-only member is left out of the plan.
    assert [m.path for m in _plan([binary, class1], tasks=("segment",)).members] == [class1]


def _plan(paths, *, tasks):
    """What scoring plans for the workdirs `paths` with untuned thresholds (the checks before any model loads)."""
    return ModelSource.resolve(paths).plan(thresholds=postprocess.PostProcess(), tasks=tasks)


def _constant_model(value, *, units, per_pixel):
    """A Keras model whose every output is `value`: a segmenter's maps (per_pixel) or a classifier's probabilities."""
    from steel_tpu.keras_api import keras

    inputs = keras.Input((None, None, 3))
    x = inputs if per_pixel else keras.layers.GlobalAveragePooling2D()(inputs)
    layer = (keras.layers.Conv2D(units, 1) if per_pixel else keras.layers.Dense(units))
    out = layer(x)
    kernel, bias = layer.get_weights()
    layer.set_weights([np.zeros_like(kernel), np.full_like(bias, value)])
    return keras.Model(inputs, out)


def test_the_device_forward_averages_each_class_over_its_models_and_combines_the_gates():
    # Seed 000's ensemble on the device: class 3 has two one-class segmenters (0.2 and 0.6: mean 0.4), the others
    # one each; a binary classifier (0.5) and a defect-images-only multilabel one gate on their product.
    def loaded(path, overrides, *, segmenters=(), classifiers=()):
        cfg = config.apply_overrides(config.preset("tiny"), overrides)
        return ensemble.Loaded(path=path, segmenters=tuple(segmenters), classifiers=tuple(classifiers),
                               tasks={t: tasks.make(t, cfg) for t in cfg.tasks}, classify_size=(64, 96), folds={},
                               identity={}, coverage=tuple(members.coverage(cfg).tolist()),
                               gate_kind=members.gate_kind(cfg))

    seg = {1: [0.7], 2: [0.2], 3: [0.2, 0.6], 4: [0.9]}
    found = [loaded(f"class{c}", ['tasks=["segment"]', f"segment.model.classes=[{c}]"],
                    segmenters=[_constant_model(v, units=1, per_pixel=True) for v in values])
             for c, values in seg.items()]
    found += [loaded("binary", ['tasks=["classify"]', "classify.model.heads=binary"],
                     classifiers=[_constant_model(0.5, units=1, per_pixel=False)]),
              loaded("multilabel", ['tasks=["classify"]', "classify.model.heads=multilabel",
                                    "classify.data.clean_keep=0"],
                     classifiers=[_constant_model(v, units=4, per_pixel=False) for v in (0.2, 0.6)])]
    ens = ensemble.Ensemble(members=tuple(found), segment_size=(64, 96))
    pp = postprocess.PostProcess(pixel_threshold=(0.5, 0.1, 0.3, 0.85))
    out = ensemble.make_forward(ens, pp=pp)(tf.zeros((2, 64, 96, 3), tf.uint8))
    np.testing.assert_allclose(out["probs"].numpy(), np.full((2, 4), 0.5 * 0.4), rtol=1e-6)
    # Class 3 at 0.4 passes 0.3 (averaged with the other classes' zero maps it would be 0.8 / 6); class 2's 0.2
    # passes 0.1; class 4's 0.9 passes 0.85; class 1's 0.7 passes 0.5.
    np.testing.assert_array_equal(out["areas"].numpy(), np.full((2, 4), 256 * 1600))
    out = ensemble.make_forward(ens, pp=postprocess.PostProcess(pixel_threshold=(0.75, 0.25, 0.45, 0.95)))(
        tf.zeros((1, 64, 96, 3), tf.uint8))
    np.testing.assert_array_equal(out["areas"].numpy(), 0)
