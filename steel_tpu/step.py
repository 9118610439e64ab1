"""Compiled, replicated train and eval steps whose loss averaging is exact under any strategy."""

import numpy as np
import tensorflow as tf


def _check_optimizer(optimizer, replicas):
    clipping = {k: getattr(optimizer, k, None) for k in ("clipnorm", "clipvalue", "global_clipnorm")}
    clipping = {k: v for k, v in clipping.items() if v is not None}
    if clipping and replicas > 1:
        # Keras 3 clips inside apply_gradients BEFORE its cross-replica all-reduce, i.e. it clips each replica's
        # partial gradient, so the result depends on the replica count.
        raise ValueError(f"optimizer clipping {clipping} is per replica under Keras 3; not usable with "
                         f"{replicas} replicas")


def _per_example(loss_fn, targets, preds):
    per_example = loss_fn(targets, preds)
    if per_example.shape.rank != 1:
        # A batch-mean scalar would be summed over replicas: an N-replica run would train with N x the gradient.
        raise ValueError(f"loss {getattr(loss_fn, '__name__', loss_fn)} must return one value per example "
                         f"(shape [B]), got shape {per_example.shape}")
    return per_example


def _grad_fn(*, model, loss_fn, optimizer, global_batch_size, replicas, augment_fn, jit_compile):
    def grads(images, targets, seed):
        if augment_fn is not None:
            images, targets = augment_fn(images, targets, seed=seed)
        with tf.GradientTape() as tape:
            preds = model(images, training=True)
            per_example = _per_example(loss_fn, targets, preds)
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch_size)
            if model.losses:
                # Regularisers are computed on every replica from the same weights: 1/replicas of each sums to 1.
                loss += tf.add_n([tf.cast(x, tf.float32) for x in model.losses]) / replicas
            scaled = optimizer.scale_loss(loss)
        return loss, tape.gradient(scaled, model.trainable_variables)

    # jit_compile covers only forward + backward: apply_gradients must stay outside XLA because its all-reduce
    # is a merge_call into cross-replica context, which a compiled function cannot contain under
    # MirroredStrategy (on TPU the whole replica function is compiled by TPUStrategy anyway).
    return tf.function(grads, jit_compile=jit_compile)


def make_train_step(*, model, loss_fn, optimizer, global_batch_size, strategy, augment_fn=None,
                    steps_per_execution=1, jit_compile=True):
    """A function `(iterator, *, step, seed) -> mean loss` running `steps_per_execution` steps in one call.

    Batches are `(images, targets)`. Step `step + i` of the call augments replica r with the stateless seed
    fold_in(fold_in([seed, 0], step + i), r), so reruns are reproducible and replicas/steps differ.
    """
    replicas = strategy.num_replicas_in_sync
    _check_optimizer(optimizer, replicas)
    grads_fn = _grad_fn(model=model, loss_fn=loss_fn, optimizer=optimizer, global_batch_size=global_batch_size,
                        replicas=replicas, augment_fn=augment_fn, jit_compile=jit_compile)

    def replica_step(batch, step_seed):
        images, targets = batch
        replica_id = tf.distribute.get_replica_context().replica_id_in_sync_group
        seed = tf.random.experimental.stateless_fold_in(step_seed, tf.cast(replica_id, tf.int64))
        loss, grads = grads_fn(images, targets, seed)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    @tf.function
    def run(iterator, step, seed):
        total = tf.constant(0.0, tf.float32)
        # One tf.range loop per call so a TPU is not starved by Python dispatch between steps.
        for i in tf.range(steps_per_execution, dtype=tf.int64):
            step_seed = tf.random.experimental.stateless_fold_in(tf.stack([seed, 0]), step + i)
            losses = strategy.run(replica_step, args=(next(iterator), step_seed))
            # Each replica's loss is already divided by the GLOBAL batch: their SUM is the global mean.
            total += strategy.reduce(tf.distribute.ReduceOp.SUM, losses, axis=None)
        return total / steps_per_execution

    def train_step(iterator, *, step, seed):
        return run(iterator, tf.constant(step, tf.int64), tf.constant(seed, tf.int64))

    return train_step


def make_eval_step(*, model, strategy, jit_compile=True):
    """A function `((images, extras)) -> (predictions, extras)` as numpy, concatenated over replicas.

    `extras` (ids, validity masks, targets...) pass through untouched so the host can drop padded rows; keep
    them numeric, since strings cannot live on a TPU.
    """
    forward = tf.function(lambda images: model(images, training=False), jit_compile=jit_compile)

    def replica_step(batch):
        images, extras = batch
        return forward(images), extras

    @tf.function
    def run(batch):
        outputs = strategy.run(replica_step, args=(batch,))
        return tf.nest.map_structure(lambda x: strategy.gather(x, axis=0), outputs)

    def eval_step(batch):
        return tf.nest.map_structure(np.asarray, run(batch))

    return eval_step
