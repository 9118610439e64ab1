"""steel_tpu: Severstal steel defect detection on TPU, GPU and CPU with TensorFlow."""

__version__ = "0.1.0"
