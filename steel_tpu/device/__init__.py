"""The device side: the tf.distribute strategy and precision (distribute), the compiled replicated steps (step), the
on-device augmentation (augment), the per-example losses (losses), and custom-gradient bookkeeping. The one place
that knows TensorFlow strategies; a JAX backend belongs here beside them."""
