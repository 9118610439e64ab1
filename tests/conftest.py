"""Shared test set-up: 8 logical CPU devices (an 8-core TPU stand-in) configured before TensorFlow starts."""

import contextlib
import io
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Both are read once, at import, so they must precede the imports below. TF's GCS stat cache would serve
# sizes (and so truncated reads) up to 5 s stale after another client rewrites an object; gcsfs 2026.x
# would ask every bucket's type over gRPC, which the emulator lacks (60 s a bucket).
os.environ.setdefault("GCS_STAT_CACHE_MAX_AGE", "0")
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

import fsspec  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
from gcs_emulator import GcsEmulator  # noqa: E402

NUM_LOGICAL_CPUS = 8

# Logical devices can only be configured before the runtime initialises, so it happens at import,
# once for the whole session; single-device tests simply use the default strategy.
_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(_cpus[0], [tf.config.LogicalDeviceConfiguration()] * NUM_LOGICAL_CPUS)
# Grappler's constant folding infers every tensor's shape over a whole function graph, on one thread, before a
# function first runs: ~50 s of the 8-replica slice run below (609 -> 560 s alone), and a fifth of a one-replica
# fold's first epoch. No test checks what it does (the XLA and TPU compilers do their own), so tests skip it.
# Turning the whole meta-optimizer off saved more time but doubled that run's peak memory (5 -> 10 GB).
tf.config.optimizer.set_experimental_options({"constant_folding": False})


@pytest.fixture(scope="session")
def logical_cpus():
    devices = tf.config.list_logical_devices("CPU")
    assert len(devices) == NUM_LOGICAL_CPUS
    return [d.name for d in devices]


@pytest.fixture(scope="module")
def mirrored(logical_cpus):
    """The 8-replica strategy (tests that need it for other things define their own)."""
    from steel_tpu.device import distribute

    return distribute.select_strategy(prefer="mirrored", verbose=False)


@pytest.fixture(scope="module")
def single():
    """One CPU device, the reference the replicated runs are compared with."""
    from steel_tpu.device import distribute

    return distribute.select_strategy(prefer="cpu", verbose=False)


@pytest.fixture(scope="session")
def _gcs_emulator():
    """The loopback GCS server, started once a session; it changes no environment (gcs_server does, per test)."""
    with GcsEmulator() as server:
        yield server


@pytest.fixture
def gcs_server(_gcs_emulator):
    """The loopback GCS for one test: gcsfs and TensorFlow's gs:// in this process (and in subprocesses given
    `gcs_server.env`) talk to it while the test runs. Its variables (a CONNECT proxy, a CA bundle) are set for the
    test only: set for the session, they reached every later test's subprocesses (pip among them)."""
    with pytest.MonkeyPatch.context() as patch:
        for key, value in _gcs_emulator.env.items():
            patch.setenv(key, value)
        # fsspec read FSSPEC_GCS_TOKEN when it was imported; anonymous, so no real credentials are looked up.
        patch.setitem(fsspec.config.conf, "gcs", {**fsspec.config.conf.get("gcs", {}), "token": "anon"})
        gcs_class = fsspec.get_filesystem_class("gs")
        gcs_class.clear_instance_cache()
        yield _gcs_emulator
        gcs_class.clear_instance_cache()


@pytest.fixture
def gcs_bucket(gcs_server):
    """A fresh, empty bucket for one test, as "gs://<name>"."""
    return gcs_server.create_bucket()


# Training runs share one tiny data set and one trained workdir per session: graph building dominates.
TINY_TRAIN_OVERRIDES = [
    "classify.train.epochs=1", "segment.train.epochs=1",
    "classify.train.steps_per_epoch=2", "segment.train.steps_per_epoch=2",
    # XLA on CPU even though it is slower there: the cheapest proof that the real train step compiles for TPU.
    "classify.train.jit_compile=True", "segment.train.jit_compile=True",
]
# The same without XLA, for runs that prove something else (the notebook, tf-keras): the XLA proof is
# trained_workdir's, and compiling costs minutes on a CPU.
TINY_NO_XLA_OVERRIDES = [o.replace("jit_compile=True", "jit_compile=False") for o in TINY_TRAIN_OVERRIDES]


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """A synthetic data set (48 train, 8 test images) and its shards in 2 folds: {"data", "shards"} paths."""
    from steel_tpu.data.shards import build_shards
    from steel_tpu.data.synth import synthesize

    root = tmp_path_factory.mktemp("tiny_data")
    data, shards = str(root / "data"), str(root / "shards")
    synthesize(data, n_train=48, n_test=8, seed=3)
    build_shards(data=data, out=shards, folds=2, seed=0, shard_mb=1, progress=False)
    return {"data": data, "shards": shards}


@pytest.fixture(scope="session")
def tiny_config():
    from steel_tpu import config

    return config.apply_overrides(config.preset("tiny"), TINY_TRAIN_OVERRIDES)


@pytest.fixture(scope="session")
def trained_workdir(tiny_data, tiny_config, tmp_path_factory):
    """A real workdir: classifier + segmenter trained briefly on both folds of `tiny_data`."""
    from steel_tpu.training import train

    work = str(tmp_path_factory.mktemp("trained") / "work")
    train.run(shards=tiny_data["shards"], workdir=work, cfg=tiny_config, folds=(0, 1))
    return work


@pytest.fixture(scope="session")
def slice_runs(tiny_data, tiny_config, tmp_path_factory, logical_cpus):
    """One segmenter workdir trained on fold 0 with 1 replica, then resumed on fold 1 with 8: what the step saw each
    time (test_slices), and the 8-replica fold's weight average (test_train), one run serving both."""
    from steel_tpu import config
    from steel_tpu.device import distribute, step
    from steel_tpu.training import train

    # A U-Net, not tiny's UNet++: its nested decoder, copied into each of 8 replicas' graphs, cost ~85 s more of
    # graph building (560 -> 475 s alone) and proves nothing more about batches per replica.
    cfg = config.apply_overrides(tiny_config, ["segment.train.jit_compile=False", "segment.train.steps_per_epoch=1",
                                               "segment.train.ema_decay=0.9", "segment.model.arch=unet"])
    work = str(tmp_path_factory.mktemp("slices") / "work")
    seen, real = {}, step.make_train_step
    patch = pytest.MonkeyPatch()

    def spy(**kwargs):
        # Observes, changes nothing: the per-replica batch shape each replica's traced step receives.
        augment, shapes = kwargs["augment_fn"], seen.setdefault(kwargs["strategy"].num_replicas_in_sync, [])

        def observed(images, masks, *, seed):
            shapes.append((tuple(images.shape), kwargs["global_batch_size"], kwargs["steps_per_execution"]))
            return augment(images, masks, seed=seed)

        return real(**{**kwargs, "augment_fn": observed})

    patch.setattr(step, "make_train_step", spy)
    outputs = {}
    try:
        for replicas, fold, prefer in ((1, 0, "cpu"), (8, 1, "mirrored")):
            device = distribute.select_strategy(prefer=prefer, verbose=False)
            assert device.replicas == replicas
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf):
                train.run(shards=tiny_data["shards"], workdir=work, cfg=cfg, tasks=("segment",), folds=(fold,),
                          device=device)
            outputs[replicas] = buf.getvalue()
    finally:
        patch.undo()
    return {"work": work, "seen": seen, "out": outputs, "cfg": cfg}


def compare_args(out, *, configs, task, shards, fold=0):
    """`steel-tpu compare` arguments for two or more presets at config.TINY_SCALE on one fold."""
    from steel_tpu import config

    return ["--shards", shards, "--configs", configs, "--folds", str(fold), "--out", str(out), "--task", task,
            *[arg for item in config.TINY_SCALE for arg in ("--set", item)]]


# Seed 000's per-class segmenters train on the images of their class only: tiny_data's fold 1 lacks class 1, so
# they are validated on fold 1 (trained on fold 0). Seeds 001 and 002 train only a segmenter whatever --task says.
@pytest.fixture(scope="session", params=[("seed000,seed001,seed002", "both", 1), ("seed003,seed004", "both", 0)],
                ids=["seed000-seed001-seed002", "seed003-seed004"])
def compared_presets(request, tiny_data, tmp_path_factory):
    """Every seed preset trained (its seed's models), tuned and compared with others by `steel-tpu compare`: the
    runs test_seed_presets and test_compare share (graph building dominates)."""
    from steel_tpu import cli

    configs, task, fold = request.param
    out = tmp_path_factory.mktemp("compare") / "cmp"
    args = compare_args(out, configs=configs, task=task, shards=tiny_data["shards"], fold=fold)
    assert cli.main(["compare", *args]) == 0
    return {"out": out, "args": args, "configs": configs.split(","), "task": task, "fold": fold}


# `make test` runs on every core (pytest-xdist, --dist loadgroup). A test goes where the expensive session fixture it
# uses is built, once; any other test goes with its module, so module-scoped models are built once too. The groups are
# marked as each test is collected, before xdist's own collection hook turns them into node ids (pytest-xdist 3.8
# does that by renaming node ids, which pytest 9.2 ignores: the lock pins pytest 8.4).
_SHARED_RUNS = ("compared_presets", "slice_runs", "trained_workdir")


def _shared_run(item):
    """The first of _SHARED_RUNS that `item` uses, or None."""
    return next((name for name in _SHARED_RUNS if name in item.fixturenames), None)


def _group(item):
    shared = _shared_run(item)
    if shared is None:
        return item.nodeid.split("::")[0]
    # Each parameter of a parametrized run is a run of its own: they may go to different workers. No brackets in
    # the name: xdist 3.8 takes the group from a node id only when its last "@" follows its last "]", and without
    # that every test was a group of its own (compared_presets was built on two workers).
    params = getattr(item, "callspec", None)
    param = params.id if params and shared in params.params else ""
    return f"{shared}-{param}" if param else shared


def pytest_itemcollected(item):
    item.add_marker(pytest.mark.xdist_group(_group(item)))
    if _shared_run(item) is not None:
        item.add_marker(pytest.mark.slow)  # a shared training run: `make test-fast` trains nothing


@pytest.fixture(scope="session", autouse=True)
def _fast_runs_train_nothing(request):
    """Under `-m "not slow"` (make test-fast) any training fails the test that started it: a test that trains (itself
    or through a fixture) must be marked slow."""
    if "not slow" not in (request.config.option.markexpr or ""):
        yield
        return
    from steel_tpu.training import train

    def refuse(**_):
        raise AssertionError("a test not marked slow trains a model (itself or through a fixture): mark it "
                             "@pytest.mark.slow, `make test-fast` trains nothing")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train, "train_fold", refuse)
        yield


# Modules of a few long tests each (minutes a test on 2 cores in CI): started early, not left as the run's tail.
_LONG_MODULES = ("test_legacy_keras.py", "test_notebook.py", "test_bench_learning.py", "test_gpu_proof.py",
                 "test_memory.py")


def pytest_collection_modifyitems(config, items):
    # The shared runs first, then the long modules: the longest work starts while the other workers take the rest.
    def rank(item):
        shared = _shared_run(item)
        if shared is not None:
            return _SHARED_RUNS.index(shared)
        module = item.nodeid.split("::")[0].rsplit("/", 1)[-1]
        return len(_SHARED_RUNS) + (_LONG_MODULES.index(module) if module in _LONG_MODULES else len(_LONG_MODULES))

    # Then by group, so that a group's tests run back to back: a session fixture with parameters holds one
    # parameter at a time, and test_compare and test_seed_presets interleaved rebuilt each compared_presets run.
    items.sort(key=lambda item: (rank(item), _group(item)))
