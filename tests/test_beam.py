"""Beam pipelines on the DirectRunner: shard folders and submissions identical to the single-machine commands,
local and on the loopback GCS server; bad images and bad pipeline options refused as the CLI refuses input."""

import hashlib
import os
import re
import shutil
import subprocess
import sys

import pytest
from PIL import Image

from steel_tpu import cli, postprocess, storage
from steel_tpu import config as config_lib
from steel_tpu.beam import predict as beam_predict
from steel_tpu.beam.options import pipeline_options
from steel_tpu.constants import HEIGHT, WIDTH
from steel_tpu.data import pipeline
from steel_tpu.data.shard_folder import ShardFolder
from steel_tpu.data.shards import build_shards
from steel_tpu.data.source import SourceError
from steel_tpu.data.synth import synthesize
from steel_tpu.data.verify import verify
from steel_tpu.scoring import predict
# The random-init fold workdir, its images, and the builder of another such workdir.
from test_predict import N_TEST, data, images, random_workdir, upload_inputs, work  # noqa: F401

RUNNER = ["--runner", "DirectRunner", "--direct_num_workers=1"]
K = 3
# Every post-processing option at once: per-class thresholds, a min area, a classifier gate, a soft gate, the
# double threshold (lower mask thresholds) and flip TTA.
PP = postprocess.PostProcess(pixel_threshold=(0.5, 0.45, 0.5, 0.55), min_area=(0, 300, 0, 0),
                             gate=(0.3, 0.5, 0.3, 0.4), soft_gate=(0.0, 0.1, 0.0, 0.05),
                             mask_threshold=(0.45, 0.45, 0.4, 0.5))


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("beam_synth"))
    synthesize(folder, n_train=18, n_test=0, seed=5)
    return folder


@pytest.fixture(scope="module")
def single(source, tmp_path_factory):
    """The single-machine shard folder every Beam build must reproduce."""
    out = str(tmp_path_factory.mktemp("single"))
    build_shards(data=source, out=out, folds=K, seed=1, shard_mb=0.3, progress=False)
    return out


def _files(folder):
    """{file name: sha256} of a shard folder (local or gs://), the manifest included."""
    return {n: hashlib.sha256(storage.read_bytes(storage.join(folder, n))).hexdigest()
            for n in storage.list_files(folder)}


def test_beam_shards_are_the_single_machine_shards(source, single, tmp_path):
    out = str(tmp_path / "beam")
    args = ["shards", "--data", source, "--out", out, "--folds", str(K), "--seed", "1", "--shard-mb", "0.3"]
    assert cli.main(args + RUNNER) == 0
    assert _files(out) == _files(single)  # every shard byte and the manifest (folds, counts, digests)
    assert len(ShardFolder.open(out).files()) > K  # more than one shard per fold: a real fan-out
    verify(out, data=source)
    # Same files, so the same training batches: the first ones of folds 1-2, as training reads them.
    batches = [[b for b in pipeline.train_dataset(files=ShardFolder.open(f).files(folds=(1, 2)), image_size=(64, 320),
                                                  batch_size=4, seed=0, steps=2).as_numpy_iterator()]
               for f in (out, single)]
    assert all((a == b).all() for x, y in zip(*batches) for a, b in zip(x, y))


def test_beam_shards_on_gcs(source, single, gcs_bucket):
    out = f"{gcs_bucket}/shards"
    summary = _beam_shards(source, out)
    assert summary.images == ShardFolder.open(single).records
    assert _files(out) == _files(single)


def _beam_shards(source_dir, out):
    from steel_tpu.beam.shards import build_shards as beam_build

    return beam_build(data=source_dir, out=out, runner="DirectRunner", pipeline_flags=["--direct_num_workers=1"],
                      folds=K, seed=1, shard_mb=0.3)


def test_beam_shards_refuse_a_folder_of_foreign_files_before_writing(source, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(SourceError, match="notes.txt"):
        _beam_shards(source, str(tmp_path))
    assert os.listdir(tmp_path) == ["notes.txt"]


def test_unknown_pipeline_option_and_flags_without_runner_are_refused(capsys):
    with pytest.raises(ValueError, match="--temp_locaton"):
        pipeline_options("DirectRunner", ["--temp_locaton=gs://b/tmp"])
    pipeline_options("DirectRunner", ["--temp_location=gs://b/tmp"])  # the real spelling passes
    with pytest.raises(SystemExit):
        cli.parse(["shards", "--data", "d", "--out", "o", "--region=europe-west1"])
    assert "unrecognized arguments: --region=europe-west1" in capsys.readouterr().err


def _predict_both(work, images, tmp_path, **options):
    """(single-machine CSV bytes, Beam CSV bytes, their summaries) for the same images and settings."""
    a, b = tmp_path / "single.csv", tmp_path / "beam.csv"
    sa = predict.predict(workdir=work, images=images, out=str(a), batch_size=4, chunk_size=5, progress=False,
                         **options)
    sb = beam_predict.predict(workdir=work, images=images, out=str(b), runner="DirectRunner",
                              pipeline_flags=["--direct_num_workers=1"], batch_size=4, **options)
    return a, b, sa, sb


def test_beam_predict_is_byte_identical_to_predict(work, images, tmp_path):  # noqa: F811
    a, b, sa, sb = _predict_both(work, images, tmp_path, thresholds=PP, tta=True)
    assert a.read_bytes() == b.read_bytes()
    assert sa["images"] == sb["images"] == N_TEST and sb["skipped"] == 0
    assert len({line.split(b",")[1] for line in a.read_bytes().splitlines()}) > 2  # some masks survive post-processing


@pytest.fixture(scope="module")
def other_member(tmp_path_factory, images):  # noqa: F811
    """A second random-init workdir with another decoder (U-Net) and other seeds: seed 004's one workdir per model."""
    cfg = config_lib.apply_overrides(config_lib.preset("tiny"), ["segment.model.arch=unet"])
    return random_workdir(str(tmp_path_factory.mktemp("other")), images, cfg=cfg, seed=7)


@pytest.mark.slow  # two ensembles of two workdirs built, a third single-machine run
def test_beam_predict_of_several_workdirs_is_byte_identical(work, other_member, images, tmp_path,  # noqa: F811
                                                            capsys):
    a, b, sa, sb = _predict_both([work, other_member], images, tmp_path, thresholds=PP)
    assert a.read_bytes() == b.read_bytes() and sb["images"] == N_TEST
    alone = tmp_path / "alone.csv"
    predict.predict(workdir=work, images=images, out=str(alone), batch_size=4, thresholds=PP, progress=False)
    assert alone.read_bytes() != a.read_bytes()  # the second workdir's models were averaged in
    # Several workdirs without their ensemble's thresholds: refused in one line before anything is written.
    out = tmp_path / "none.csv"
    code = cli.main(["predict", "--workdir", work, "--workdir", other_member, "--images", images, "--out", str(out),
                     *RUNNER])
    assert code == 2 and not out.exists()
    assert "several --workdir need --thresholds" in capsys.readouterr().err.strip().splitlines()[-1]


@pytest.mark.slow  # three single-machine and two Beam runs
def test_beam_predict_bad_images_follow_the_same_rules(work, images, tmp_path, capsys):  # noqa: F811
    folder = tmp_path / "images"
    shutil.copytree(images, folder)
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8 this is not a JPEG")
    Image.new("RGB", (WIDTH // 2, HEIGHT)).save(folder / "small.jpg", format="JPEG")
    with pytest.raises(SourceError) as error:
        predict.predict(workdir=work, images=str(folder), out=str(tmp_path / "x.csv"), progress=False)
    out = tmp_path / "y.csv"
    code = cli.main(["predict", "--workdir", work, "--images", str(folder), "--out", str(out), *RUNNER])
    assert code == 2 and not out.exists()
    line = capsys.readouterr().err.strip().splitlines()[-1]  # one line, the single-machine run's message
    assert line.startswith(f"steel-tpu predict: error: {error.value}")
    a, b, _, sb = _predict_both(work, str(folder), tmp_path, skip_bad=True)
    assert sb["skipped"] == 2 and sb["images"] == N_TEST + 2
    assert a.read_bytes() == b.read_bytes()
    assert open(f"{a}.errors.csv", "rb").read() == open(f"{b}.errors.csv", "rb").read()
    assert str(error.value).startswith("2 bad image(s)")


@pytest.mark.slow
def test_beam_predict_on_gcs(work, images, gcs_bucket, tmp_path):  # noqa: F811
    remote_images, remote_work = upload_inputs(images=images, work=work, bucket=gcs_bucket)
    local = tmp_path / "single.csv"
    predict.predict(workdir=work, images=images, out=str(local), batch_size=4, progress=False)
    remote = f"{gcs_bucket}/out/sub.csv"
    beam_predict.predict(workdir=remote_work, images=remote_images, out=remote, runner="DirectRunner",
                         pipeline_flags=["--direct_num_workers=1"], batch_size=4)
    assert storage.read_bytes(remote) == local.read_bytes()


@pytest.mark.slow  # two B0 UNet++ folds built twice in a subprocess
def test_bench_beam_smoke():
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": repo, "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run([sys.executable, os.path.join(repo, "benchmarks", "bench_beam.py"), "--smoke"],
                          capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "submissions byte-identical: True" in done.stdout
    ratio = float(re.search(r"ratio Beam local / single machine: ([0-9.]+)x", done.stdout)[1])
    workers = int(re.search(r"-> ~(\d+) workers", done.stdout)[1])
    assert ratio > 0 and workers >= 1
