"""One preset on any slice: per-replica batches, the resolved global batch / learning rate / steps per execution,
what a train run records, and `steel-tpu env` (1 replica: the default strategy; 8: the logical CPUs mirrored)."""

import json
import math

import pytest

from steel_tpu import cli, config
from steel_tpu.training import train

from steel_tpu.config import resolve
from steel_tpu.device import distribute
from steel_tpu.formats.workdir import Workdir


@pytest.mark.parametrize("replicas", [1, 8, 64])
def test_colab_tpu_resolves_per_slice(replicas):
    cfg = config.preset("colab-tpu")
    got = resolve.summary(resolve.resolve_for(cfg, replicas=replicas), replicas=replicas)
    for task, per_replica, reference in (("classify", 16, 128), ("segment", 8, 64)):
        batch = per_replica * replicas
        assert got[task]["global_batch"] == batch and got[task]["batch_per_replica"] == per_replica
        # The square-root rule: the preset's 1e-3 holds at its reference batch (8 replicas).
        assert got[task]["learning_rate"] == pytest.approx(1e-3 * math.sqrt(batch / reference))
        # The same images per host call on every slice (8 steps x the reference batch), at least one step.
        assert got[task]["steps_per_execution"] == max(1, round(8 * reference / batch))
    if replicas == 8:
        assert got["segment"] == {"global_batch": 64, "batch_per_replica": 8, "learning_rate": 1e-3,
                                  "steps_per_execution": 8}
    if replicas == 1:
        assert got["segment"]["steps_per_execution"] == 64 and got["segment"]["global_batch"] == 8


def test_a_fixed_global_batch_keeps_its_meaning_and_must_split():
    cfg = config.apply_overrides(config.preset("tiny"), ["segment.data.batch_size=16"])
    assert cfg.segment.data.batch_per_replica is None  # setting one batch key replaces the preset's other one
    for replicas in (1, 8):
        resolved = resolve.resolve_for(cfg, replicas=replicas)
        assert resolved.segment.data.batch_size == 16  # a fixed global batch, split over the replicas
        assert resolved.classify.data.batch_size == 8 * replicas  # the preset's per-replica batch
    with pytest.raises(ValueError, match="segment: batch_size=16 does not split over 32 replicas"):
        resolve.resolve_for(cfg, replicas=32)
    with pytest.raises(ValueError, match="set exactly one"):
        config.apply_overrides(config.preset("tiny"),
                               ["segment.data.batch_size=16", "segment.data.batch_per_replica=4"])


def test_a_workdir_of_an_unreleased_config_format_is_refused_in_one_line(tmp_path):
    work = tmp_path / "old"
    work.mkdir()
    (work / "config.json").write_text(json.dumps(config.to_dict(config.preset("tiny"))))  # no "format" key
    with pytest.raises(ValueError, match=r"config.json: not a valid config file \(config format None"):
        Workdir(str(work)).config()


@pytest.mark.slow
@pytest.mark.parametrize("replicas", [1, 8])
def test_the_step_sees_per_replica_batches_and_the_run_records_them(slice_runs, replicas):
    batch, lr = 8 * replicas, 2e-3 * math.sqrt(replicas)  # tiny: 8 per replica, 2e-3 at a global batch of 8
    shapes = slice_runs["seen"][replicas]
    # Traced once per replica; every replica gets 8 uint8 luma planes at the tiny input size (3 channels made there).
    assert len(shapes) == replicas and set(shapes) == {((8, 64, 320, 1), batch, 1)}
    runs = Workdir(slice_runs["work"]).runs()
    assert len(runs) == 2  # one entry per train invocation, the resumed one on another "host" kept beside the first
    entry = runs[[1, 8].index(replicas)]
    assert entry["replicas"] == replicas and entry["device"] == "cpu" and entry["folds"] == [[1, 8].index(replicas)]
    assert entry["resolved"]["segment"]["global_batch"] == batch
    assert entry["resolved"]["segment"]["batch_per_replica"] == 8
    assert entry["resolved"]["segment"]["learning_rate"] == pytest.approx(lr)
    assert entry["resolved"]["segment"]["steps_per_execution"] == 1
    assert {"tensorflow", "keras", "precision", "strategy", "host", "started"} <= set(entry)
    # The workdir keeps the user's config: per replica, the same on both slices.
    assert Workdir(slice_runs["work"]).config().segment.data.batch_per_replica == 8
    out = slice_runs["out"][replicas]
    assert f"{replicas} replica(s)" in out  # distribute.summary, printed by the run
    changed = "segment: global batch 8 -> 64 (1 -> 8 replicas), learning rate 0.002 -> 0.00566"
    assert (changed in out) == (replicas == 8)


def test_env_prints_the_report_and_fails_only_when_strict(capsys):
    if distribute.tpu_detected():
        pytest.skip("this host looks like a TPU host")
    assert cli.main(["env", "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("strategy: ") and "on cpu, 1 replica(s)" in line for line in lines)
    assert "preset tiny: fits" in lines and any(line.startswith("preset colab-tpu: a TPU preset") for line in lines)
    # Asking for a TPU on a host without one is a problem: informative by default, a failure with --strict.
    assert cli.main(["env", "--device", "tpu"]) == 0
    assert "PROBLEM: a TPU is required but this host shows none" in capsys.readouterr().out
    assert cli.main(["env", "--device", "tpu", "--strict", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["problems"] and report["strategy"] is None


def test_a_tpu_preset_does_not_run_elsewhere_unless_chosen(tiny_data, tmp_path, monkeypatch):
    if distribute.tpu_detected():
        pytest.skip("this host looks like a TPU host")
    monkeypatch.setattr(distribute, "_CHOSEN", {})
    cfg = config.preset("colab-tpu")
    with pytest.raises(distribute.TPUUnavailable, match="device=cpu"):
        train.run(shards=tiny_data["shards"], workdir=str(tmp_path / "w"), cfg=cfg, folds=(0,))
    assert not (tmp_path / "w").exists()  # stopped before anything was written
    explicit = config.apply_overrides(cfg, ["device=cpu"])
    assert distribute.select_strategy(prefer=distribute.prefer_for(explicit.device), verbose=False).kind == "cpu"
