"""Host memory stays flat across folds: what one fold builds (models, optimizers, traced steps) is released."""

import gc
import weakref

import pytest
import tensorflow as tf

from steel_tpu import config
from steel_tpu.training import memory, train

from steel_tpu.device import custom_gradients
from steel_tpu.formats.workdir import Workdir

# Growth left behind per fold before the fix: ~200 MB (classifier at 32x160, 1 step a fold); after it, 27-43 MB
# from fold 1 to fold 3 in four runs (no Python object grows: the rest is the allocator and TF's runtime).
MARGIN_MB = 80


def test_rss_and_peak_are_numbers_of_megabytes():
    assert 10 < memory.rss_mb() <= memory.peak_rss_mb()


def _traced_silu_gradient():
    """A weak reference to the graph of a step that differentiates tf.nn.silu (a tf.custom_gradient, as swish)."""
    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = tf.nn.silu(x)
        return tape.gradient(y, x)

    return weakref.ref(step.get_concrete_function(tf.TensorSpec([4], tf.float32)).graph)


def test_graphs_traced_in_the_block_are_freed_after_it_and_earlier_ones_keep_their_gradients():
    before = _traced_silu_gradient()
    gc.collect()
    # The cause of the growth: TensorFlow's gradient registry keeps every such graph for the life of the process.
    assert before() is not None
    with custom_gradients.forgotten_after():
        inside = _traced_silu_gradient()
    gc.collect()
    assert inside() is None
    assert before() is not None  # only what the block registered is forgotten


@pytest.mark.slow  # three folds of real training
def test_three_folds_in_one_process_leave_memory_flat(tmp_path):
    from steel_tpu.data.shards import build_shards
    from steel_tpu.data.synth import synthesize

    data, shards, work = (str(tmp_path / n) for n in ("data", "shards", "work"))
    synthesize(data, n_train=18, n_test=0, seed=5)
    build_shards(data=data, out=shards, folds=3, seed=0, shard_mb=1, progress=False)
    cfg = config.apply_overrides(config.preset("tiny"), [
        "classify.train.epochs=1", "classify.train.steps_per_epoch=1", "classify.train.jit_compile=False",
        "classify.data.image_height=32", "classify.data.image_width=160", "classify.data.batch_size=4"])
    train.run(shards=shards, workdir=work, cfg=cfg, folds=(0, 1, 2), tasks=("classify",))
    rows = [Workdir(work).read_log("classify", fold)[-1] for fold in (0, 1, 2)]
    resident = [r["rss_mb"] for r in rows]
    assert resident[2] - resident[0] < MARGIN_MB, f"resident MB at the end of folds 1, 2, 3: {resident}"
    assert all(r["peak_rss_mb"] >= r["rss_mb"] for r in rows)
