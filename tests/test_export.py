"""`steel-tpu export`: a kit from a trained, tuned workdir, pip-installed offline into a fresh environment that
has TensorFlow, scores with no network exactly (byte for byte) like `steel-tpu predict` on the workdir."""

import json
import os
import subprocess
import sys
import sysconfig
import time
import zipfile

import pytest

import steel_tpu
from steel_tpu import cli
from steel_tpu.formats import kit
from steel_tpu.scoring import export
from steel_tpu.tuning import tune

pytestmark = pytest.mark.slow


def _unshare_works():
    """Whether this host lets an unprivileged process enter a new user + network namespace (no interfaces)."""
    try:
        return subprocess.run(["unshare", "-rn", "true"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.fixture(scope="module")
def exported(trained_workdir, tmp_path_factory):
    """The tuned thresholds (tuned beside, so the shared workdir stays untuned) and the kit exported through the CLI."""
    root = tmp_path_factory.mktemp("export")
    tuned = str(root / "tuned")
    tune.tune(workdir=trained_workdir, out=tuned, plots=False)
    thresholds = os.path.join(tuned, "thresholds.json")
    out = str(root / "kit")
    assert cli.main(["export", "--workdir", trained_workdir, "--out", out, "--thresholds", thresholds]) == 0
    return {"kit": out, "thresholds": thresholds, "work": trained_workdir}


@pytest.fixture(scope="module")
def fresh_env(tmp_path_factory):
    """A new virtual environment with no steel_tpu: TensorFlow and the rest of the scoring image come from the
    shared venv's site-packages as a plain path (its .pth files, the editable steel_tpu among them, are not run),
    the way a Kaggle image has TensorFlow and not this package."""
    env = tmp_path_factory.mktemp("fresh") / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
    python = str(env / "bin" / "python")
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    with open(os.path.join(site, "scoring_image.pth"), "w") as f:
        f.write(sysconfig.get_paths()["purelib"] + "\n")
    clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    probe = subprocess.run([python, "-c", "import tensorflow, pip; import steel_tpu"], env=clean, cwd=str(env),
                           capture_output=True, text=True)
    assert "No module named 'steel_tpu'" in probe.stderr, probe.stderr[-2000:]  # TensorFlow yes, this package no
    return {"python": python, "env": clean}


# The Keras of Kaggle's and Colab's images (googlecolab/backend-info pip-freeze.txt, 2026-08-19; Kaggle's CPU/GPU
# image is built on Colab's): older than the lock's, so a kit must not depend on the Keras that wrote it.
IMAGE_KERAS = "3.13.2"


@pytest.fixture(scope="module")
def image_env(fresh_env, tmp_path_factory):
    """fresh_env's twin with the images' Keras in front of the shared site-packages and no simplejpeg (neither image
    has it: a module that raises ImportError stands for its absence)."""
    env = tmp_path_factory.mktemp("image") / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
    python = str(env / "bin" / "python")
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", site,
                    f"keras=={IMAGE_KERAS}"], check=True, capture_output=True)
    with open(os.path.join(site, "simplejpeg.py"), "w") as f:
        f.write("raise ImportError(\"No module named 'simplejpeg' (not in the Kaggle and Colab images)\")\n")
    with open(os.path.join(site, "scoring_image.pth"), "w") as f:
        f.write(sysconfig.get_paths()["purelib"] + "\n")
    probe = subprocess.run([python, "-c", "import keras; print(keras.__version__); import simplejpeg"],
                           env=fresh_env["env"], cwd=str(env), capture_output=True, text=True)
    assert probe.stdout.strip() == IMAGE_KERAS and "not in the Kaggle" in probe.stderr, probe.stderr[-2000:]
    return {"python": python, "env": fresh_env["env"]}


def test_the_kit_holds_what_it_says(exported):
    info = json.loads(open(os.path.join(exported["kit"], kit.KIT_JSON)).read())
    assert info["version"] == steel_tpu.__version__ and info["package"] == export.wheel_name()
    files = sorted(os.listdir(exported["kit"]))
    assert files == sorted([kit.KIT_JSON, kit.CONFIG, kit.THRESHOLDS, kit.SCORE, kit.MODELS, info["package"]])
    models = sorted(os.listdir(os.path.join(exported["kit"], kit.MODELS)))
    assert models == sorted(kit.model_name(t, f) for t, fs in info["models"].items() for f in fs)
    assert info["models"]["segment"] == [0, 1]
    with zipfile.ZipFile(os.path.join(exported["kit"], info["package"])) as z:
        names = set(z.namelist())
    assert "steel_tpu/scoring/predict.py" in names and f"steel_tpu-{steel_tpu.__version__}.dist-info/RECORD" in names
    # The same package bytes give the same wheel bytes (fixed zip times): a re-export rewrites the kit unchanged.
    again = export.build_wheel()[1]
    assert open(os.path.join(exported["kit"], info["package"]), "rb").read() == again


def test_an_out_folder_holding_other_files_is_refused(exported, tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="notes.txt"):
        export.export(workdir=exported["work"], out=str(out), thresholds=exported["thresholds"])
    assert sorted(os.listdir(out)) == ["notes.txt"]


def test_the_kit_scores_offline_in_a_fresh_environment_like_predict(exported, fresh_env, tiny_data, tmp_path):
    images = os.path.join(tiny_data["data"], "test_images")
    reference = str(tmp_path / "predict.csv")
    assert cli.main(["predict", "--workdir", exported["work"], "--images", images, "--out", reference,
                     "--thresholds", exported["thresholds"]]) == 0

    python, env = fresh_env["python"], fresh_env["env"]
    wheel = os.path.join(exported["kit"], export.wheel_name())
    subprocess.run([python, "-m", "pip", "install", "--no-index", "--no-deps", "--quiet", wheel], env=env,
                   check=True, cwd=str(tmp_path))
    offline = ["unshare", "-rn"] if _unshare_works() else []
    if offline:  # the namespace really has no network
        probe = [python, "-c", "import socket; socket.create_connection(('8.8.8.8', 53), timeout=5)"]
        assert "Network is unreachable" in subprocess.run(offline + probe, capture_output=True, text=True).stderr
    out = str(tmp_path / "submission.csv")
    start = time.perf_counter()
    run = subprocess.run(offline + [python, os.path.join(exported["kit"], kit.SCORE), "--images", images,
                                    "--out", out], env=env, cwd=str(tmp_path), capture_output=True, text=True)
    seconds = time.perf_counter() - start
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    assert f"steel_tpu {steel_tpu.__version__} (installed)" in run.stdout
    with open(out, "rb") as a, open(reference, "rb") as b:
        assert a.read() == b.read()
    n = len(os.listdir(images))
    print(f"kit score.py: {n} images in {seconds:.1f}s (process start included) "
          f"{'in a network namespace' if offline else 'WITH network: unshare -rn is not available'}")


@pytest.mark.parametrize("keras_backend", ["tensorflow", "jax"])
def test_the_kit_scores_with_the_images_keras_and_without_simplejpeg_under_both_backends(
        exported, image_env, tiny_data, tmp_path, keras_backend):
    images = os.path.join(tiny_data["data"], "test_images")
    reference = str(tmp_path / "predict.csv")
    assert cli.main(["predict", "--workdir", exported["work"], "--images", images, "--out", reference,
                     "--thresholds", exported["thresholds"]]) == 0
    python, env = image_env["python"], {**image_env["env"], "KERAS_BACKEND": keras_backend}
    out = str(tmp_path / "submission.csv")
    offline = ["unshare", "-rn"] if _unshare_works() else []
    run = subprocess.run(offline + [python, os.path.join(exported["kit"], kit.SCORE), "--images", images,
                                    "--out", out], env=env, cwd=str(tmp_path), capture_output=True, text=True)
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    assert "(wheel)" in run.stdout and f"backend {'jax' if keras_backend == 'jax' else 'tf'}," in run.stdout
    assert f"Keras {IMAGE_KERAS}" in run.stdout
    with open(out, "rb") as a, open(reference, "rb") as b:
        assert a.read() == b.read()


def test_a_kit_of_keras_files_from_before_scores_the_same(exported, tiny_data, tmp_path):
    """Format 1 (the `.keras` models kits held before weights): still read, and scored like the weights kit."""
    import shutil

    from steel_tpu import tasks
    from steel_tpu.device import distribute
    from steel_tpu.formats.kit import Kit

    old = tmp_path / "old_kit"
    shutil.copytree(exported["kit"], old)
    info = json.loads((old / kit.KIT_JSON).read_text())
    (member,) = Kit(str(old)).members()
    strategy = distribute.select_strategy(prefer="cpu", verbose=False).strategy
    for task, folds in info["models"].items():
        for fold in folds:
            model = member.load_model(tasks.make(task, member.config()), fold, strategy=strategy)
            model.save(old / kit.MODELS / kit.model_name(task, fold, files="keras"))
            os.remove(old / kit.MODELS / kit.model_name(task, fold))
    (old / kit.KIT_JSON).write_text(json.dumps({**info, "format": 1}))
    images = os.path.join(tiny_data["data"], "test_images")
    outs = {}
    for name, source in (("new", exported["kit"]), ("old", str(old))):
        outs[name] = str(tmp_path / f"{name}.csv")
        assert cli.main(["predict", "--workdir", source, "--images", images, "--out", outs[name]]) == 0
    assert open(outs["old"], "rb").read() == open(outs["new"], "rb").read()


def test_a_fold_trains_under_the_images_keras_through_jax(image_env, tiny_data, tmp_path):
    """Colab's TPU runtime trains with its own Keras (3.13), not the lock's: the package (from the checkout) trains
    a fold there through JAX."""
    from tests.conftest import TINY_TRAIN_OVERRIDES

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    work = tmp_path / "work"
    sets = [a for o in TINY_TRAIN_OVERRIDES for a in ("--set", o)]
    env = {**image_env["env"], "PYTHONPATH": root, "KERAS_BACKEND": "jax"}
    run = subprocess.run([image_env["python"], "-m", "steel_tpu", "train", "--config", "tiny", "--shards",
                          tiny_data["shards"], "--workdir", str(work), "--folds", "0", "--task", "segment", *sets],
                         env=env, cwd=str(tmp_path), capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    assert "backend jax, DataParallel on cpu, 1 replica(s), float32, TensorFlow" in run.stdout
    assert f"Keras {IMAGE_KERAS}" in run.stdout
    assert (work / "segment" / "fold0" / "done.json").exists()


def test_bench_kit_smoke():
    """benchmarks/bench_kit.py at its smoke size: score.py from the kit's wheel matches predict byte for byte."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    run = subprocess.run([sys.executable, os.path.join(root, "benchmarks", "bench_kit.py"), "--smoke"],
                         capture_output=True, text=True, cwd=root)
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    result = json.loads(run.stdout[run.stdout.rindex("\n{") + 1:])  # the last thing printed
    assert result["same_csv_bytes"] is True and result["score_py_images_per_s"] > 0
