"""What to pip install on this host so that exactly one TensorFlow, the right one, is present (no TensorFlow import)."""

import argparse
import dataclasses
import importlib.metadata
import os
import re
import subprocess
import sys
from pathlib import Path

TF_VERSION = "2.20.0"
# tensorflow-tpu 2.20.0's own metadata on PyPI declares `Requires-Dist: libtpu~=0.0.14`: 0.0.14 is the libtpu the
# release was built against, and `~=` lets pip take any newer 0.0.x (0.0.52 today), with which `import tensorflow`
# aborts (ConfigureDistributedTpuOp_DoWork not available). So the floor is pinned exactly.
LIBTPU_VERSION = "0.0.14"
TF_MINOR = ".".join(TF_VERSION.split(".")[:2])
# Every distribution that installs the `tensorflow` module: two of them in one environment overwrite each other.
TF_DISTRIBUTIONS = (
    "tensorflow", "tensorflow-cpu", "tensorflow-gpu", "tensorflow-tpu", "tensorflow-intel", "tensorflow-macos",
    "tensorflow-cpu-aws", "tensorflow-aarch64", "intel-tensorflow", "tf-nightly", "tf-nightly-cpu", "tf-nightly-gpu",
    "tf-nightly-tpu",
)
# Set by Colab TPU runtimes, Cloud TPU VMs (and their multi-host workers) and old TPU-node set-ups.
TPU_ENV_VARS = ("COLAB_TPU_ADDR", "COLAB_TPU_1VM", "TPU_NAME", "TPU_ACCELERATOR_TYPE", "TPU_WORKER_ID",
                "TPU_WORKER_HOSTNAMES")
PACKAGE_NAME = "steel_tpu"
CHECKOUT = Path(__file__).resolve().parents[1]


def _normalise(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def installed_distributions():
    """{normalised name: version} of every distribution in this environment."""
    return {_normalise(d.metadata["Name"]): d.version for d in importlib.metadata.distributions() if d.metadata["Name"]}


@dataclasses.dataclass(frozen=True)
class Host:
    """The facts the install decision rests on."""

    tpu_signals: tuple  # why this looks like a TPU host ("TPU_NAME set", "/dev/accel0", ...); empty when not
    gpu_signals: tuple
    tensorflow: dict  # installed TensorFlow distributions: {name: version}
    libtpu: str | None  # installed libtpu version
    jax: dict = dataclasses.field(default_factory=dict)  # installed {jax, jaxlib}: {name: version}

    @property
    def tpu(self):
        return bool(self.tpu_signals)

    @property
    def gpu(self):
        return bool(self.gpu_signals)


def probe(*, environ=None, dev="/dev", distributions=None):
    """Read this host's facts; `environ`, `dev` (a folder standing in for /dev) and `distributions` simulate one."""
    environ = os.environ if environ is None else environ
    distributions = installed_distributions() if distributions is None else {
        _normalise(k): v for k, v in distributions.items()}
    dev = Path(dev)
    tpu = [f"{name} is set" for name in TPU_ENV_VARS if environ.get(name)]
    # v2-v5e chips appear as /dev/accelN, v5p/v6e as numbered VFIO groups.
    tpu += sorted(str(p) for p in dev.glob("accel[0-9]*"))
    tpu += sorted(str(p) for p in dev.glob("vfio/[0-9]*"))
    libtpu = distributions.get("libtpu") or distributions.get("libtpu-nightly")
    if libtpu:
        tpu.append(f"libtpu {libtpu} is installed")
    gpu = sorted(str(p) for p in dev.glob("nvidia[0-9]*"))
    tf = {name: distributions[name] for name in TF_DISTRIBUTIONS if name in distributions}
    jax = {name: distributions[name] for name in ("jax", "jaxlib") if name in distributions}
    return Host(tpu_signals=tuple(tpu), gpu_signals=tuple(gpu), tensorflow=tf, libtpu=libtpu, jax=jax)


def with_extra(package, extra):
    """`package` (a name, folder, wheel or URL) as a requirement with `extra`; None leaves it as it is."""
    if not extra:
        return package if "://" not in package else f"{PACKAGE_NAME} @ {package}"
    if "://" in package:
        return f"{PACKAGE_NAME}[{extra}] @ {package}"
    return f"{package}[{extra}]"


@dataclasses.dataclass(frozen=True)
class Plan:
    """pip invocations (argument lists after `pip install`), in order, and why."""

    commands: tuple
    reason: str
    warnings: tuple = ()


def _kept(host):
    """`name==version` of the host's JAX stack (jax, jaxlib, libtpu): given to pip with what is installed beside them,
    so that it keeps them exactly or refuses, never replaces them (Colab's and Kaggle's TPU runtimes are built on
    them)."""
    stack = {**host.jax, **({"libtpu": host.libtpu} if host.libtpu else {})}
    return [f"{name}=={version}" for name, version in sorted(stack.items())]


class InstallError(ValueError):
    """An install that would harm this host's runtime; the message says what to do instead."""


def decide(host, *, package=None, legacy=False, tensorflow_tpu=False):
    """The pip installs for `host`: never a second TensorFlow, never a replaced one, never a touched JAX stack (jax,
    jaxlib, libtpu: Colab's and Kaggle's TPU runtimes); libtpu pinned with tensorflow-tpu, which is only chosen
    explicitly (`tensorflow_tpu`) or on a TPU host with neither TensorFlow nor JAX."""
    package = package or default_package()
    warnings = []
    if tensorflow_tpu and (host.jax or (host.libtpu and host.libtpu != LIBTPU_VERSION)):
        stack = ", ".join(_kept(host))
        raise InstallError(f"--tensorflow-tpu would replace this host's libtpu ({stack}) with {LIBTPU_VERSION}, "
                           f"which tensorflow-tpu {TF_VERSION} needs: on a JAX TPU runtime (Colab, Kaggle) leave it "
                           "out (tensorflow-cpu feeds tf.data beside JAX); use a TPU VM image with TensorFlow for it")
    if tensorflow_tpu and host.tensorflow and not {"tensorflow-tpu", "tf-nightly-tpu"} & set(host.tensorflow):
        raise InstallError(f"--tensorflow-tpu: {', '.join(sorted(host.tensorflow))} is installed; uninstall it first "
                           "(two TensorFlow distributions overwrite each other)")
    if host.tensorflow:
        # Whatever TensorFlow the runtime has stays: a TPU VM's tensorflow-tpu is paired with its libtpu, a GPU
        # image's build with its CUDA. Only this package (no TensorFlow extra) goes in beside it.
        name, version = sorted(host.tensorflow.items())[0]
        reason = f"TensorFlow is already installed ({name} {version}): kept as it is"
        if len(host.tensorflow) > 1:
            warnings.append("several TensorFlow distributions are installed and overwrite each other: "
                            + ", ".join(f"{n} {v}" for n, v in sorted(host.tensorflow.items())))
        tpu_tf = {"tensorflow-tpu", "tf-nightly-tpu"} & set(host.tensorflow)
        if host.tpu and not tpu_tf and not host.jax:
            warnings.append(f"this is a TPU host but {name} has no TPU support: uninstall it and run "
                            f"`python -m steel_tpu.install --tensorflow-tpu` for tensorflow-tpu {TF_VERSION}")
        requirements = [*_kept(host), with_extra(package, None)] if host.jax else [with_extra(package, None)]
        tf_minor = ".".join(version.split(".")[:2])
    elif host.tpu and host.jax and not tensorflow_tpu:
        reason = (f"TPU host with JAX ({'; '.join(host.tpu_signals)}): {', '.join(_kept(host))} kept exactly; "
                  f"tensorflow-cpu {TF_VERSION} for tf.data beside them")
        requirements = [f"tensorflow-cpu=={TF_VERSION}", *_kept(host), with_extra(package, None)]
        tf_minor = TF_MINOR
    elif host.tpu or tensorflow_tpu:
        reason = (f"TPU host without TensorFlow ({'; '.join(host.tpu_signals)}): tensorflow-tpu {TF_VERSION} "
                  f"with the libtpu it was released with ({LIBTPU_VERSION})")
        requirements = [f"tensorflow-tpu=={TF_VERSION}", f"libtpu=={LIBTPU_VERSION}", with_extra(package, None)]
        tf_minor = TF_MINOR
    elif host.gpu:
        reason = f"GPU host without TensorFlow ({', '.join(host.gpu_signals)}): tensorflow[and-cuda] {TF_MINOR}"
        requirements, tf_minor = [with_extra(package, "gpu")], TF_MINOR
    else:
        reason = f"no TPU, no GPU, no TensorFlow: tensorflow-cpu {TF_MINOR}"
        requirements, tf_minor = [with_extra(package, "cpu")], TF_MINOR
    commands = [tuple(requirements)]
    if legacy:
        # tf-keras requires the `tensorflow` distribution by name; with its dependencies it would install a second
        # TensorFlow over tensorflow-tpu / tensorflow-cpu. Its only dependency is TensorFlow itself, present by now.
        commands.append(("--no-deps", f"tf-keras~={tf_minor}.0"))
    return Plan(commands=tuple(commands), reason=reason, warnings=tuple(warnings))


def default_package():
    """This checkout when run from one (it has setup.cfg), else the installed package's name."""
    return str(CHECKOUT) if (CHECKOUT / "setup.cfg").exists() else PACKAGE_NAME


def pip_command(args, *, python=None):
    return [python or sys.executable, "-m", "pip", "install", *args]


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m steel_tpu.install",
        description="Install steel_tpu with the TensorFlow this host needs, never replacing one that is there.")
    parser.add_argument("--package", default=None,
                        help="what to install: a checkout folder, a wheel or a git+https URL (default: this checkout)")
    parser.add_argument("--legacy", action="store_true", help="also tf-keras (for TF_USE_LEGACY_KERAS=1), --no-deps")
    parser.add_argument("--tensorflow-tpu", action="store_true",
                        help=f"tensorflow-tpu {TF_VERSION} with libtpu {LIBTPU_VERSION}, for a TPU VM that runs "
                             "TensorFlow on its TPU (refused where a JAX runtime's libtpu would be replaced)")
    parser.add_argument("--dry-run", action="store_true", help="print the pip commands instead of running them")
    args = parser.parse_args(argv)
    try:
        plan = decide(probe(), package=args.package, legacy=args.legacy, tensorflow_tpu=args.tensorflow_tpu)
    except InstallError as error:
        print(f"steel_tpu.install: error: {error}", file=sys.stderr)
        return 2
    print(f"steel_tpu.install: {plan.reason}")
    for warning in plan.warnings:
        print(f"steel_tpu.install: WARNING: {warning}")
    for command in plan.commands:
        line = pip_command(command)
        print(" ".join(line))
        if not args.dry_run:
            subprocess.check_call(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
