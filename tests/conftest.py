"""Shared test set-up: 8 logical CPU devices (an 8-core TPU stand-in) configured before TensorFlow starts."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

NUM_LOGICAL_CPUS = 8

# Logical devices can only be configured before the runtime initialises, so it happens at import,
# once for the whole session; single-device tests simply use the default strategy.
_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(_cpus[0], [tf.config.LogicalDeviceConfiguration()] * NUM_LOGICAL_CPUS)


@pytest.fixture(scope="session")
def logical_cpus():
    devices = tf.config.list_logical_devices("CPU")
    assert len(devices) == NUM_LOGICAL_CPUS
    return [d.name for d in devices]
