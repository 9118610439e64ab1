"""Pseudo-labels: the confidence rule, the pseudo shard folder and its provenance, the per-batch cap in training,
validation and OOF on labelled folds only, and the refusals (hostile input, resume with other pseudo-labels)."""

import hashlib
import json
import os

import numpy as np
import pytest

from steel_tpu import cli, config, postprocess, storage
from steel_tpu.data import pipeline, source
from steel_tpu.data.manifest import PSEUDO_KEYS
from steel_tpu.data.shard_folder import ShardFolder, ShardFolderError, read_records
from steel_tpu.data.verify import verify
from steel_tpu.formats import kaggle
from steel_tpu.formats.workdir import Workdir, WorkdirError
from steel_tpu.scoring.pseudo import PseudoError, Selection, pseudo_label, write_pseudo_shards
from steel_tpu.scoring.pseudo_rule import ConfidenceRule
from steel_tpu.training import train

SIZE = (64, 320)  # the tiny preset's input size


# --- the confidence rule, on numpy arrays ---


def test_rule_keeps_only_images_whose_classifier_and_segmenter_agree():
    rule = ConfidenceRule(hi=0.8, lo=0.2, min_area=(100, 100, 100, 100))
    probs = np.array([
        [0.9, 0.1, 0.05, 0.0],   # class 1 present with a big mask, the rest absent with none: kept
        [0.1, 0.1, 0.1, 0.1],    # all absent, no mask: kept
        [0.5, 0.1, 0.1, 0.1],    # class 1 in between: dropped
        [0.9, 0.1, 0.1, 0.1],    # class 1 sure, but its mask is under the minimum area: dropped
        [0.1, 0.1, 0.1, 0.1],    # class 3 sure absent, but the segmenter drew pixels: dropped
        [0.9, 0.1, 0.1, 0.1],    # class 1 sure, no mask at all: dropped
        [0.8, 0.2, 0.2, 1.0],    # boundaries are inclusive: kept
    ])
    areas = np.array([
        [500, 0, 0, 0],
        [0, 0, 0, 0],
        [500, 0, 0, 0],
        [99, 0, 0, 0],
        [0, 0, 7, 0],
        [0, 0, 0, 0],
        [100, 0, 0, 100],
    ])
    kept, reasons = rule.judge(probs, areas)
    assert kept.tolist() == [True, True, False, False, False, False, True]
    assert [r is None for r in reasons] == kept.tolist()
    assert "class 1: probability 0.500 between lo 0.2 and hi 0.8" in reasons[2]
    assert "a mask of 99 px (< 100)" in reasons[3]
    assert "class 3" in reasons[4] and "7 px" in reasons[4]
    assert "a mask of 0 px" in reasons[5]


def test_rule_with_a_binary_head_judges_the_image_as_a_whole():
    rule = ConfidenceRule(hi=0.9, lo=0.1, min_area=(0, 0, 50, 0))  # a min area of 0 still needs one pixel present
    probs = np.array([[0.95], [0.95], [0.05], [0.05], [0.5], [0.95]])
    areas = np.array([[0, 0, 60, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 3, 0, 0], [0, 0, 0, 0], [1, 0, 20, 0]])
    kept, reasons = rule.judge(probs, areas)
    assert kept.tolist() == [True, False, True, False, False, False]
    assert "no mask" in reasons[1] and "masks of [0, 3, 0, 0]" in reasons[3]
    assert "between" in reasons[4] and "class 3: a mask of 20 px under its minimum area 50" in reasons[5]


@pytest.mark.parametrize("kwargs", [dict(hi=0.5, lo=0.5), dict(hi=0.4, lo=0.6), dict(hi=1.1), dict(lo=-0.1),
                                    dict(min_area=(1, 2, 3)), dict(min_area=(0, 0, 0, -1)), dict(hi=True)])
def test_rule_refuses_settings_that_mean_nothing(kwargs):
    with pytest.raises(ValueError, match="confidence rule"):
        ConfidenceRule(**kwargs)


def test_selection_labels_kept_images_with_their_masks(tiny_data):
    truth = kaggle.read_labels(os.path.join(tiny_data["data"], "test_truth.csv"))
    ids = sorted(truth.image_ids)[:4]
    masks = np.stack([truth.masks(i) for i in ids])
    areas = masks.sum(axis=(1, 2))
    # The classifier agrees with the masks on the first two images only.
    probs = np.where(areas > 0, 0.95, 0.05)
    probs[2:] = 0.5
    selection = Selection(ConfidenceRule(hi=0.9, lo=0.1, min_area=(1,) * 4))
    assert selection.add(ids, masks, areas, probs) == 4
    assert selection.labels == {i: truth.rles[i] for i in ids[:2]}  # the masks, as RLE labels
    assert [i for i, _ in selection.dropped] == ids[2:] and [s["image_id"] for s in selection.scores] == ids


def test_rule_refuses_arrays_of_the_wrong_shape():
    with pytest.raises(ValueError, match="must be"):
        ConfidenceRule().judge(np.zeros((3, 2)), np.zeros((3, 4)))


# --- the per-batch cap ---


@pytest.mark.parametrize("batch, share, rows", [(8, 0.0, 0), (8, 0.25, 2), (64, 0.12, 7), (10, 0.3, 3), (8, 0.125, 1)])
def test_pseudo_rows_never_exceed_the_share(batch, share, rows):
    assert pipeline.pseudo_rows(batch, share) == rows
    assert rows <= share * batch


@pytest.mark.parametrize("batch, share, match", [(8, 1.0, r"\[0, 1\)"), (8, -0.1, r"\[0, 1\)"),
                                                 (8, float("nan"), r"\[0, 1\)"), (8, 0.1, "less than one row")])
def test_pseudo_rows_refuses_a_share_outside_the_range_or_below_one_row(batch, share, match):
    with pytest.raises(ValueError, match=match):
        pipeline.pseudo_rows(batch, share)


# --- pseudo shard folders, written by the one writer the command uses ---


def _provenance(**extra):
    return {"workdir": "W", "models": {}, "thresholds": {}, "rule": ConfidenceRule().to_dict(), "images": "I",
            "created": "2026-01-01T00:00:00+00:00", "scored": 0, "kept": 0, "dropped": [], "scores": [], **extra}


def _write_truth_as_pseudo(tiny_data, out, *, n=None):
    """The test images with their true masks as pseudo-labels (a stand-in for a perfect ensemble)."""
    found = source.scan(os.path.join(tiny_data["data"], "test_images"), split="test", workers=2, skip_bad=False)
    truth = kaggle.read_labels(os.path.join(tiny_data["data"], "test_truth.csv"))
    ids = sorted(found.paths)[:n]
    labels = {i: truth.rles[i] if i in truth.rles else kaggle.EMPTY for i in ids}
    write_pseudo_shards(out=str(out), found=found, labels=labels,
                        provenance=_provenance(scored=len(ids), kept=len(ids)), shard_mb=0.3, progress=False)
    return labels


@pytest.fixture(scope="module")
def truth_pseudo(tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("pseudo") / "truth"
    return str(out), _write_truth_as_pseudo(tiny_data, out)


def test_pseudo_folder_is_a_valid_shard_folder_of_its_own_split(truth_pseudo, tiny_data):
    out, labels = truth_pseudo
    folder = ShardFolder.open(out, split="pseudo").check()
    assert folder.provenance["workdir"] == "W" and folder.num_folds is None and folder.records == len(labels)
    assert len(folder.entries) > 1 and all(e["fold"] == -1 and e["name"].startswith("pseudo-") for e in folder.entries)
    assert "OK" in str(verify(out))  # every record re-read: bytes, sha256, counts, RLE vs area
    records = list(read_records(folder.files()))
    assert {r["image_id"]: tuple(r["rle"]) for r in records} == labels
    assert all(r["fold"] == -1 for r in records)
    # One owner of the split: train and test readers refuse it, the pseudo reader refuses labelled shards.
    with pytest.raises(ShardFolderError, match="a folder of pseudo shards, train shards expected"):
        ShardFolder.open(out, split="train")
    with pytest.raises(ShardFolderError, match="a folder of train shards, pseudo shards expected"):
        ShardFolder.open(tiny_data["shards"], split="pseudo")


def test_a_pseudo_manifest_without_its_provenance_is_refused(truth_pseudo, tmp_path):
    out, _ = truth_pseudo
    doc = json.loads(storage.read_text(os.path.join(out, "manifest.json")))
    for name, broken in (("none", {k: v for k, v in doc.items() if k != "pseudo"}),
                         ("partial", {**doc, "pseudo": {k: v for k, v in doc["pseudo"].items() if k != "rule"}})):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "manifest.json").write_text(json.dumps(broken))
        with pytest.raises(ShardFolderError, match="provenance"):
            ShardFolder.open(str(folder))
    assert set(PSEUDO_KEYS) <= set(doc["pseudo"])


def _decoded(files, *, full_res_masks=False):
    """{(image bytes, mask bytes)} of every record of `files`, decoded as the pipelines decode them (the luma plane
    of each image, as training batches carry it)."""
    ds = pipeline.eval_dataset(files=files, image_size=SIZE, batch_size=8, full_res_masks=full_res_masks)
    out = set()
    for b in ds.as_numpy_iterator():
        out |= {(i[..., :1].tobytes(), m.tobytes()) for i, m, v in zip(b["image"], b["mask"], b["valid"]) if v}
    return out


def test_training_batches_hold_exactly_the_capped_pseudo_rows(truth_pseudo, tiny_data):
    pseudo_files = ShardFolder.open(truth_pseudo[0], split="pseudo").files()
    labelled_files = ShardFolder.open(tiny_data["shards"], split="train").files(folds=[1])
    pseudo_rows, labelled_rows = _decoded(pseudo_files), _decoded(labelled_files)

    def batches(epoch):
        return list(pipeline.train_dataset(files=labelled_files, image_size=SIZE, batch_size=8, seed=5, epoch=epoch,
                                           steps=6, pseudo_files=pseudo_files, pseudo_share=0.3).as_numpy_iterator())

    first = batches(0)
    assert len(first) == 6
    for images, masks in first:
        assert images.shape == (8, *SIZE, 1) and masks.shape == (8, *SIZE, 4)
        rows = [(i.tobytes(), m.tobytes()) for i, m in zip(images, masks)]
        # floor(0.3 x 8) = 2: the last two rows are pseudo-labelled images with their pseudo masks, the rest labelled.
        assert all(r in labelled_rows for r in rows[:6]) and all(r in pseudo_rows for r in rows[6:])
    seen = {(i.tobytes(), m.tobytes()) for images, masks in first for i, m in zip(images[6:], masks[6:])}
    assert len(seen) > 2  # the pseudo stream moves on from batch to batch
    # (seed, epoch) decides everything: the same epoch again is the same batches, the next one another order.
    again, other = batches(0), batches(1)
    assert all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) for a, b in zip(first, again))
    assert not all(np.array_equal(a[0], b[0]) for a, b in zip(first, other))


def test_every_replica_gets_its_capped_pseudo_rows(truth_pseudo, tiny_data, mirrored):
    from steel_tpu.device import distribute

    pseudo_files = ShardFolder.open(truth_pseudo[0], split="pseudo").files()
    labelled_files = ShardFolder.open(tiny_data["shards"], split="train").files(folds=[1])
    pseudo_rows = _decoded(pseudo_files)
    dist = distribute.distribute_dataset(mirrored, lambda context: pipeline.train_dataset(
        files=labelled_files, image_size=SIZE, batch_size=64, seed=0, steps=1, input_context=context,
        pseudo_files=pseudo_files, pseudo_share=0.25), global_batch_size=64)
    images, masks = next(iter(dist))
    per_replica = list(zip(mirrored.strategy.experimental_local_results(images),
                           mirrored.strategy.experimental_local_results(masks)))
    assert len(per_replica) == 8
    for i, m in per_replica:  # 2 of each replica's 8 rows, 16 of the global 64: the share holds on every replica
        rows = [(a.tobytes(), b.tobytes()) for a, b in zip(i.numpy(), m.numpy())]
        assert len(rows) == 8 and all(r in pseudo_rows for r in rows[6:]) and not any(r in pseudo_rows
                                                                                         for r in rows[:6])


def test_train_dataset_refuses_a_share_without_pseudo_files_and_the_reverse(truth_pseudo, tiny_data):
    files = ShardFolder.open(tiny_data["shards"]).files()
    with pytest.raises(ValueError, match="give both or neither"):
        pipeline.train_dataset(files=files, image_size=SIZE, batch_size=8, seed=0, pseudo_share=0.25)
    with pytest.raises(ValueError, match="give both or neither"):
        pipeline.train_dataset(files=files, image_size=SIZE, batch_size=8, seed=0,
                               pseudo_files=ShardFolder.open(truth_pseudo[0]).files())


# --- refusals, through the command line: one line, exit status 2, nothing written ---


def _fails(capsys, *argv):
    code = cli.main(list(argv))
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    return err


def test_train_refuses_a_labelled_folder_as_pseudo_labels_and_shares_out_of_range(tiny_data, tmp_path, capsys):
    work = str(tmp_path / "work")
    base = ["train", "--shards", tiny_data["shards"], "--workdir", work, "--config", "tiny"]
    err = _fails(capsys, *base, "--pseudo", tiny_data["shards"], "--set", "segment.data.pseudo_share=0.25")
    assert "a folder of train shards, pseudo shards expected" in err
    for share in ("1", "-0.5", "1.5"):
        assert "pseudo_share" in _fails(capsys, *base, "--set", f"segment.data.pseudo_share={share}")
    assert "no --pseudo" in _fails(capsys, *base, "--set", "segment.data.pseudo_share=0.25")
    assert not os.path.exists(work)


def test_train_refuses_pseudo_labels_without_a_share_or_below_one_row(truth_pseudo, tiny_data, tmp_path, capsys):
    work = str(tmp_path / "work")
    base = ["train", "--shards", tiny_data["shards"], "--workdir", work, "--config", "tiny", "--pseudo",
            truth_pseudo[0], "--set", "device=cpu"]
    assert "pseudo_share is 0" in _fails(capsys, *base)
    assert "less than one row" in _fails(capsys, *base, "--set", "segment.data.pseudo_share=0.1")
    assert not os.path.exists(work)
    # And a pseudo folder is no labelled folder.
    assert "train shards expected" in _fails(capsys, "train", "--shards", truth_pseudo[0], "--workdir", work,
                                             "--config", "tiny")


@pytest.fixture(scope="module")
def untrained_workdir(tiny_config, tmp_path_factory):
    """A workdir holding only its config: enough for the checks made before any model loads."""
    work = tmp_path_factory.mktemp("untrained") / "work"
    Workdir(str(work)).save_config(tiny_config)
    return str(work)


def test_pseudo_refuses_hostile_input_before_any_work(untrained_workdir, tiny_data, tmp_path, capsys):
    images = os.path.join(tiny_data["data"], "test_images")
    base = ["pseudo", "--workdir", untrained_workdir]
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    assert "holds 1 entry (notes.txt)" in _fails(capsys, *base, "--images", images, "--out", str(busy))
    assert (busy / "notes.txt").read_text() == "mine" and len(os.listdir(busy)) == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    out = str(tmp_path / "out")
    assert "no JPEG files" in _fails(capsys, *base, "--images", str(empty), "--out", out)
    assert "a shard folder" in _fails(capsys, *base, "--images", tiny_data["shards"], "--out", out)
    err = _fails(capsys, *base, "--images", images, "--out", out)
    assert "thresholds.json: not found" in err and "steel-tpu tune" in err
    thresholds = tmp_path / "thresholds.json"
    thresholds.write_text(json.dumps(postprocess.PostProcess().to_dict()))
    err = _fails(capsys, *base, "--images", images, "--out", out, "--thresholds", str(thresholds))
    assert "no completed classify folds" in err
    assert "must be > 0.5" in _fails_argparse(capsys, *base, "--images", images, "--out", out,
                                              "--min-confidence", "0.5")
    assert not os.path.exists(out)


def _fails_argparse(capsys, *argv):
    with pytest.raises(SystemExit) as stop:
        cli.main(list(argv))
    assert stop.value.code == 2
    return capsys.readouterr().err


# --- the command on a really trained workdir ---


@pytest.mark.slow
def test_pseudo_command_keeps_exactly_the_confident_images(trained_workdir, tiny_data, tmp_path):
    images = os.path.join(tiny_data["data"], "test_images")
    # Pixel thresholds of 1 draw no mask (q > 255 never holds), whatever this briefly trained model outputs: an
    # image is then confident when every class probability is at most lo.
    thresholds = tmp_path / "thresholds.json"
    thresholds.write_text(json.dumps(postprocess.PostProcess(pixel_threshold=(1.0,) * 4).to_dict()))

    def run(name, **rule):
        out = str(tmp_path / name)
        return out, pseudo_label(workdir=trained_workdir, images=images, out=out, thresholds=str(thresholds),
                                 folds=[0], progress=False, **rule)

    # A lo of 0.999999 keeps every image: the manifest records what the rule saw of each.
    out, manifest = run("all", hi=1.0, lo=0.999999, min_area=(0,) * 4)
    scores = {s["image_id"]: s for s in manifest["pseudo"]["scores"]}
    assert sorted(scores) == sorted(source.list_jpegs(images)) and manifest["records"] == 8
    assert all(s["areas"] == [0] * 4 and len(s["probs"]) == 4 for s in scores.values())  # the multilabel head
    # lo between the images' largest probabilities: the rule must drop the images above it.
    largest = {i: max(s["probs"]) for i, s in scores.items()}
    lo = sorted(largest.values())[3]
    expected = {i for i, p in largest.items() if p <= lo}
    assert 0 < len(expected) < 8
    out, manifest = run("half", hi=1.0, lo=lo, min_area=(0,) * 4)
    folder = ShardFolder.open(out, split="pseudo").check()
    assert "OK" in str(verify(out)) and manifest == folder.manifest
    records = {r["image_id"]: r for r in read_records(folder.files())}
    assert set(records) == expected and all(r["rle"] == [""] * 4 for r in records.values())
    assert all(r["image"] == storage.read_bytes(os.path.join(images, i)) for i, r in records.items())
    p = folder.provenance
    assert {s["image_id"]: s["probs"] for s in p["scores"]} == {i: s["probs"] for i, s in scores.items()}
    assert {d["image_id"] for d in p["dropped"]} == set(scores) - expected
    assert all(f"<= lo {lo:g}" not in d["reason"] and "between lo" in d["reason"] for d in p["dropped"])
    assert p["workdir"] == trained_workdir and p["images"] == images and p["thresholds"]["from"] == str(thresholds)
    assert p["thresholds"]["pixel_threshold"] == [1.0] * 4 and p["tta"] is False
    assert p["rule"] == {"hi": 1.0, "lo": lo, "min_area": [0, 0, 0, 0]}
    assert p["folds"] == {"classify": [0], "segment": [0]} and len(p["models"]["classify"]) == 1
    assert p["scored"] == 8 and p["kept"] == len(expected) == folder.records and p["created"].endswith("+00:00")
    assert p["labels_sha256"] == hashlib.sha256(
        json.dumps(sorted((i, list(r["rle"])) for i, r in records.items())).encode()).hexdigest()
    # A rule nothing passes writes nothing and says so.
    with pytest.raises(PseudoError, match="none of 8 images passed the confidence rule"):
        run("none", hi=1.0, lo=min(largest.values()) / 2, min_area=(0,) * 4)
    assert not os.path.exists(tmp_path / "none")


@pytest.mark.slow
def test_training_with_pseudo_labels_validates_on_labelled_folds_and_records_them(truth_pseudo, tiny_data,
                                                                                  tiny_config, single, tmp_path):
    cfg = config.apply_overrides(tiny_config, ["segment.train.steps_per_epoch=1", "segment.train.jit_compile=False",
                                               "segment.data.pseudo_share=0.25"])
    work, pseudo = str(tmp_path / "work"), truth_pseudo[0]
    train.run(shards=tiny_data["shards"], workdir=work, cfg=cfg, tasks=("segment",), folds=(0,), device=single,
              pseudo=pseudo)
    wd, folder = Workdir(work), ShardFolder.open(pseudo, split="pseudo")
    # OOF (hence tune and the report) holds exactly the held-out labelled fold: no pseudo-labelled image.
    fold0 = {r["image_id"] for r in read_records(ShardFolder.open(tiny_data["shards"]).files(folds=[0]))}
    oof_ids = set(wd.oof("segment", 0)["image_ids"].tolist())
    assert oof_ids == fold0 and not oof_ids & set(truth_pseudo[1])
    used = wd.runs()[-1]["pseudo"]
    assert used == {"path": pseudo, "fingerprint": folder.fingerprint, "manifest_sha256": folder.manifest_sha256,
                    "records": folder.records, "share": {"segment": 0.25}}
    # The same pseudo-labels resume (the fold is done); other ones, or none, are refused like another config.
    train.run(shards=tiny_data["shards"], workdir=work, cfg=cfg, tasks=("segment",), folds=(0,), device=single,
              pseudo=pseudo)
    other = tmp_path / "other"
    _write_truth_as_pseudo(tiny_data, other, n=5)
    with pytest.raises(WorkdirError, match="trained with pseudo-labels .* not pseudo-labels .*other"):
        train.run(shards=tiny_data["shards"], workdir=work, cfg=cfg, tasks=("segment",), folds=(0,), device=single,
                  pseudo=str(other))
    unshared = config.apply_overrides(cfg, ["segment.data.pseudo_share=0"])
    with pytest.raises(ValueError, match="different config"):
        train.run(shards=tiny_data["shards"], workdir=work, cfg=unshared, tasks=("segment",), folds=(0,),
                  device=single)
    assert len(wd.runs()) == 2  # refused runs record nothing
