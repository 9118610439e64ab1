"""TFRecord schema, shard writing, folds and tf.data pipelines; knows nothing of models or devices."""
