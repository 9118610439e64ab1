"""The install decision on simulated hosts, and pip's own resolver on what it decides for a TPU host."""

import json
import tempfile
from pathlib import Path
import subprocess
import sys

import pytest

from steel_tpu import install

PKG = "/src/steel_tpu"


def fake_dev(tmp_path, *names):
    dev = Path(tempfile.mkdtemp(dir=tmp_path, prefix="dev"))
    for name in names:
        (dev / name).parent.mkdir(parents=True, exist_ok=True)
        (dev / name).touch()
    return dev


def plan_for(tmp_path, *, environ=(), devices=(), dists=None, legacy=False, tensorflow_tpu=False):
    host = install.probe(environ=dict(environ), dev=fake_dev(tmp_path, *devices), distributions=dists or {})
    return host, install.decide(host, package=PKG, legacy=legacy, tensorflow_tpu=tensorflow_tpu)


@pytest.mark.parametrize("environ,devices", [
    ({"COLAB_TPU_ADDR": "10.0.0.2:8470"}, ()),
    ({"TPU_ACCELERATOR_TYPE": "v5litepod-1"}, ()),
    ({"TPU_WORKER_ID": "0"}, ()),
    ({}, ("accel0",)),
    ({}, ("vfio/0",)),
])
def test_tpu_host_without_tensorflow_gets_tensorflow_tpu_and_its_libtpu(tmp_path, environ, devices):
    host, plan = plan_for(tmp_path, environ=environ, devices=devices)
    assert host.tpu and not host.tensorflow
    assert plan.commands == ((f"tensorflow-tpu=={install.TF_VERSION}", f"libtpu=={install.LIBTPU_VERSION}", PKG),)
    assert "TPU host without TensorFlow" in plan.reason


def test_installed_libtpu_alone_marks_a_tpu_host(tmp_path):
    host, plan = plan_for(tmp_path, dists={"libtpu": "0.0.14"})
    assert host.tpu_signals == ("libtpu 0.0.14 is installed",)
    assert plan.commands[0][0] == "tensorflow-tpu==2.20.0"


@pytest.mark.parametrize("dists", [
    {"tensorflow-tpu": "2.19.1", "libtpu": "0.0.10"},
    {"tensorflow": "2.18.0"},
    {"tf_nightly": "2.21.0.dev1"},
])
def test_a_host_with_tensorflow_never_gets_another(tmp_path, dists):
    host, plan = plan_for(tmp_path, environ={"TPU_NAME": "local"}, devices=("accel0",), dists=dists)
    flat = [arg for command in plan.commands for arg in command]
    assert plan.commands == ((PKG,),)
    assert not any(arg.startswith(("tensorflow", "libtpu", "tf-")) for arg in flat)
    assert "kept as it is" in plan.reason


# The TPU runtimes users open in 2026 (DESIGN.md's platform facts): JAX built against their own libtpu.
COLAB_TPU = {"jax": "0.7.2", "jaxlib": "0.7.2", "libtpu": "0.0.21.1", "keras": "3.13.2", "numpy": "2.1.3"}
KAGGLE_TPU = {"tensorflow-cpu": "2.20.0", "jax": "0.7.2", "jaxlib": "0.7.2", "libtpu": "0.0.17", "keras": "3.13.2"}
JAX_STACK = {"colab": ("jax==0.7.2", "jaxlib==0.7.2", "libtpu==0.0.21.1"),
             "kaggle": ("jax==0.7.2", "jaxlib==0.7.2", "libtpu==0.0.17")}


def test_a_jax_tpu_runtime_keeps_its_jax_stack_and_gets_tensorflow_cpu_for_tf_data(tmp_path):
    host, colab = plan_for(tmp_path, environ={"COLAB_TPU_1VM": "1"}, dists=COLAB_TPU)
    assert host.tpu and host.jax == {"jax": "0.7.2", "jaxlib": "0.7.2"}
    assert colab.commands == ((f"tensorflow-cpu=={install.TF_VERSION}", *JAX_STACK["colab"], PKG),)
    assert "kept exactly" in colab.reason and not colab.warnings
    _, kaggle = plan_for(tmp_path, environ={"TPU_ACCELERATOR_TYPE": "v5litepod-8"}, dists=KAGGLE_TPU)
    # Kaggle's tensorflow-cpu stays, and nothing asks for it to be replaced by tensorflow-tpu.
    assert kaggle.commands == ((*JAX_STACK["kaggle"], PKG),) and not kaggle.warnings
    for plan in (colab, kaggle):
        flat = [arg for command in plan.commands for arg in command]
        assert not any(a.startswith(("tensorflow-tpu", "libtpu==0.0.14")) for a in flat)


def test_tensorflow_tpu_is_chosen_explicitly_and_never_over_a_jax_runtime(tmp_path, capsys, monkeypatch):
    _, bare = plan_for(tmp_path, dists={}, tensorflow_tpu=True)  # a TPU VM without TensorFlow or JAX, by choice
    assert bare.commands[0][:2] == (f"tensorflow-tpu=={install.TF_VERSION}", f"libtpu=={install.LIBTPU_VERSION}")
    with pytest.raises(install.InstallError, match=r"would replace this host's libtpu \(jax==0\.7\.2"):
        plan_for(tmp_path, environ={"COLAB_TPU_1VM": "1"}, dists=COLAB_TPU, tensorflow_tpu=True)
    with pytest.raises(install.InstallError, match="tensorflow-cpu is installed; uninstall it first"):
        plan_for(tmp_path, dists={"tensorflow-cpu": "2.20.0"}, tensorflow_tpu=True)
    monkeypatch.setattr(install, "installed_distributions", lambda: dict(COLAB_TPU))
    assert install.main(["--dry-run", "--package", PKG, "--tensorflow-tpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("steel_tpu.install: error: --tensorflow-tpu would replace") and err.count("\n") == 1


def test_non_tpu_tensorflow_on_a_tpu_host_is_flagged_not_replaced(tmp_path):
    _, plan = plan_for(tmp_path, environ={"TPU_NAME": "x"}, dists={"tensorflow-cpu": "2.20.0"})
    assert plan.commands == ((PKG,),)
    assert any("has no TPU support" in w for w in plan.warnings)


def test_two_tensorflows_are_reported(tmp_path):
    _, plan = plan_for(tmp_path, dists={"tensorflow": "2.20.0", "tensorflow-cpu": "2.20.0"})
    assert any("several TensorFlow distributions" in w for w in plan.warnings)


def test_gpu_and_cpu_hosts_get_their_extras(tmp_path):
    _, gpu = plan_for(tmp_path, devices=("nvidia0", "nvidiactl"))
    assert gpu.commands == ((f"{PKG}[gpu]",),)
    _, cpu = plan_for(tmp_path)
    assert cpu.commands == ((f"{PKG}[cpu]",),)


def test_legacy_keras_is_installed_without_its_tensorflow_dependency(tmp_path):
    _, plan = plan_for(tmp_path, environ={"TPU_NAME": "local"}, legacy=True)
    assert plan.commands[-1] == ("--no-deps", "tf-keras~=2.20.0")
    _, kept = plan_for(tmp_path, dists={"tensorflow-tpu": "2.19.1"}, legacy=True)
    assert kept.commands[-1] == ("--no-deps", "tf-keras~=2.19.0")


def test_package_forms():
    url, wheel = "git+https://github.com/o/steel_tpu", "dist/steel_tpu-0.1-py3-none-any.whl"
    assert install.with_extra(url, "cpu") == f"steel_tpu[cpu] @ {url}"
    assert install.with_extra(url, None) == f"steel_tpu @ {url}"
    assert install.with_extra(wheel, "gpu") == f"{wheel}[gpu]"
    assert install.default_package() == str(install.CHECKOUT)


def test_dry_run_prints_the_commands_and_installs_nothing(capsys, monkeypatch, tmp_path):
    for name in install.TPU_ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TPU_NAME", "local")
    assert install.main(["--dry-run", "--package", PKG, "--legacy"]) == 0
    out = capsys.readouterr().out
    assert "-m pip install --no-deps tf-keras~=" in out
    # This environment has tensorflow-cpu: it is kept, so only the package is installed (beside the installed JAX
    # pinned as it is: the lock holds the JAX the TPU images ship).
    jax = "".join(f"{n}=={v} " for n, v in sorted(install.probe().jax.items()))
    assert f"-m pip install {jax}{PKG}\n" in out and "kept as it is" in out


# --- pip's own resolver (metadata only) -------------------------------------------------------------------------

def _resolve(tmp_path, requirements, *, no_deps=False, python="3.11"):
    report = tmp_path / f"report{len(list(tmp_path.glob('report*')))}.json"
    args = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
            "--only-binary=:all:", "--python-version", python, "--implementation", "cp",
            "--abi", f"cp{python.replace('.', '')}",
            # pip matches only the platform tags it is given: every glibc a TPU VM image may have (jaxlib's wheels
            # are manylinux_2_27, TensorFlow's 2_17).
            *[arg for minor in range(17, 36) for arg in ("--platform", f"manylinux_2_{minor}_x86_64")],
            "--platform", "manylinux2014_x86_64", "--target", str(tmp_path / "target"), "--report", str(report),
            *(["--no-deps"] if no_deps else []), *requirements]
    done = subprocess.run(args, capture_output=True, text=True, timeout=600)
    offline = ("NewConnectionError", "Could not fetch", "ProxyError", "Network is unreachable", "Temporary failure")
    if done.returncode != 0 and any(s in done.stderr for s in offline):
        pytest.skip(f"PyPI is unreachable: {done.stderr.strip().splitlines()[-1]}")
    assert done.returncode == 0, done.stderr
    return {i["metadata"]["name"].lower().replace("_", "-"): i["metadata"]["version"]
            for i in json.loads(report.read_text())["install"]}


@pytest.mark.slow
def test_pip_resolves_one_tensorflow_and_the_pinned_libtpu_for_a_tpu_host(tmp_path):
    """The TPU plan's packages (this package's own dependencies in place of the checkout, which pip would build)."""
    plan = install.decide(install.probe(environ={"TPU_NAME": "local"}, dev=fake_dev(tmp_path), distributions={}),
                          package=PKG, legacy=True)
    tpu_requirements = [r for r in plan.commands[0] if r != PKG]
    resolved = _resolve(tmp_path, tpu_requirements + ["numpy>=1.26", "pillow>=10.0", "gcsfs>=2024.2"])
    flavours = {n: v for n, v in resolved.items() if install._normalise(n) in install.TF_DISTRIBUTIONS}
    assert flavours == {"tensorflow-tpu": install.TF_VERSION}
    assert resolved["libtpu"] == install.LIBTPU_VERSION
    legacy = _resolve(tmp_path, list(plan.commands[1][1:]), no_deps=True)
    assert list(legacy) == ["tf-keras"] and legacy["tf-keras"].startswith("2.20.")


def test_the_lock_installs_one_tensorflow_distribution():
    """What `make test` installs holds one TensorFlow (as `install` promises users): tf-keras, which requires the
    `tensorflow` distribution by name, is installed without its dependencies."""
    root = Path(__file__).resolve().parents[1]
    pinned = {}
    for name in ("cpu-lock.txt", "no-deps.txt"):
        for line in (root / "requirements" / name).read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                package, _, version = line.partition("==")
                pinned[install._normalise(package)] = (name, version)
    flavours = {n: v for n, v in pinned.items() if n in install.TF_DISTRIBUTIONS}
    assert flavours == {"tensorflow-cpu": ("cpu-lock.txt", install.TF_VERSION)}
    assert pinned["tf-keras"][0] == "no-deps.txt"
    makefile = (root / "Makefile").read_text()
    assert "--no-deps -r requirements/no-deps.txt" in makefile


@pytest.mark.slow
@pytest.mark.parametrize("python", ["3.12", "3.13"])
def test_pip_keeps_a_jax_runtimes_stack_and_adds_one_tensorflow(tmp_path, python):
    """Colab's TPU image (Python 3.13, JAX 0.7.2 on libtpu 0.0.21.1, no TensorFlow) and Kaggle's (3.12): what the plan
    asks pip for resolves with exactly one TensorFlow, tensorflow-cpu, and the JAX stack at its own versions."""
    plan = install.decide(install.probe(environ={"COLAB_TPU_1VM": "1"}, dev=fake_dev(tmp_path),
                                        distributions=COLAB_TPU), package=PKG)
    requirements = [r for r in plan.commands[0] if r != PKG] + ["keras==3.13.2", "numpy>=1.26", "pillow>=10.0"]
    resolved = _resolve(tmp_path, requirements, python=python)
    flavours = {n: v for n, v in resolved.items() if install._normalise(n) in install.TF_DISTRIBUTIONS}
    assert flavours == {"tensorflow-cpu": install.TF_VERSION}
    assert (resolved["jax"], resolved["jaxlib"], resolved["libtpu"]) == ("0.7.2", "0.7.2", "0.0.21.1")

