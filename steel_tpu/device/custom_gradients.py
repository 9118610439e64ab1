"""Forgets the custom gradients that graphs traced in a block registered in TensorFlow's global gradient registry."""

import contextlib

from tensorflow.python.framework import ops

# Every graph-mode call of a tf.custom_gradient function (tf.nn.silu: EfficientNet's swish, 49 in a B0) registers
# its gradient under a fresh "CustomGradient-<uid>" name in this process-wide dict, and never removes it. Each
# entry's closure holds tensors of the graph being traced, so every traced train/predict step stays alive: measured
# ~200 MB a fold for a B0 classifier at 32x160 (99 entries a fold, 20,000 graph operations). Private API, pinned
# TensorFlow: tests/test_memory.py fails fast if its layout changes.
_REGISTRY = ops._gradient_registry._registry
_PREFIX = "CustomGradient-"


@contextlib.contextmanager
def forgotten_after():
    """Inside the block, trace freely; after it, the custom gradients registered inside it are removed.

    Only for graphs that die with the block: a graph traced inside it and differentiated after it (e.g. a
    ConcreteFunction called under a GradientTape later) would find its gradient gone.
    """
    before = set(_REGISTRY)
    try:
        yield
    finally:
        for name in [n for n in _REGISTRY if n.startswith(_PREFIX) and n not in before]:
            del _REGISTRY[name]
