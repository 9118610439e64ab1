"""Runs on the device distribute.py chose: compiled, replicated train and eval steps, exact loss averaging."""

import numpy as np
import tensorflow as tf

from steel_tpu import keras_api
from steel_tpu.device import losses


def _check_optimizer(optimizer, strategy):
    inner = getattr(optimizer, "inner_optimizer", optimizer)  # a LossScaleOptimizer clips via its inner one
    for opt in (optimizer, inner):
        # Keras (3 and tf-keras) binds an optimizer to the strategy active at construction; slot variables built
        # for another strategy fail later with "Mixing different tf.distribute.Strategy objects".
        if getattr(opt, "_distribution_strategy", strategy) is not strategy:
            raise ValueError(f"optimizer {opt.name} was created outside strategy.scope() of "
                             f"{type(strategy).__name__}: create it inside the scope")
    clipping = {k: getattr(inner, k, None) for k in ("clipnorm", "clipvalue", "global_clipnorm")}
    clipping = {k: v for k, v in clipping.items() if v is not None}
    if clipping and strategy.num_replicas_in_sync > 1:
        # Keras 3 clips inside apply_gradients BEFORE its cross-replica all-reduce, i.e. it clips each replica's
        # partial gradient, so the result depends on the replica count.
        raise ValueError(f"optimizer clipping {clipping} is per replica under Keras 3; not usable with "
                         f"{strategy.num_replicas_in_sync} replicas")


def _check_all_reduce(loss_fn, strategy, jit_compile):
    if not (jit_compile and strategy.num_replicas_in_sync > 1 and getattr(loss_fn, "all_reduces", False)):
        return
    devices = strategy.extended.worker_devices
    mirrored = (tf.distribute.MirroredStrategy, tf.distribute.MultiWorkerMirroredStrategy)
    if isinstance(strategy, mirrored) and not all("GPU" in d.upper() for d in devices):
        # Both all-reduce through a merge_call unless every device is a GPU (then collective ops), and a merge_call
        # cannot run inside an XLA-compiled function.
        raise ValueError(f"loss {getattr(loss_fn, '__name__', loss_fn)} all-reduces over replicas in its forward "
                         f"pass, which {type(strategy).__name__} over {len(devices)} non-GPU devices cannot "
                         f"compile: train with jit_compile=False (the default on CPU)")


def replica_seed(seed, step, replica_id):
    """The stateless [2] seed of one replica at one step: reruns repeat it, other steps and replicas differ."""
    base = tf.stack([tf.cast(seed, tf.int64), tf.constant(0, tf.int64)])
    per_step = tf.random.experimental.stateless_fold_in(base, tf.cast(step, tf.int64))
    return tf.random.experimental.stateless_fold_in(per_step, tf.cast(replica_id, tf.int64))


def _grad_fn(*, model, loss_fn, optimizer, global_batch_size, replicas, augment_fn, jit_compile):
    def grads(images, targets, seed):
        if augment_fn is not None:
            images, targets = augment_fn(images, targets, seed=seed)
        with tf.GradientTape() as tape:
            preds = model(images, training=True)
            per_example = losses.per_example(loss_fn, targets, preds)
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch_size)
            if model.losses:
                # Regularisers are computed on every replica from the same weights: 1/replicas of each sums to 1.
                loss += tf.add_n([tf.cast(x, tf.float32) for x in model.losses]) / replicas
            scaled = keras_api.scale_loss(optimizer, loss)
        return loss, keras_api.unscale_gradients(optimizer, tape.gradient(scaled, model.trainable_variables))

    # jit_compile covers only forward + backward: apply_gradients stays outside XLA because its all-reduce is a
    # merge_call into cross-replica context, which a compiled function cannot contain under MirroredStrategy,
    # and jit_compile on the outer function fails there (each replica's variables live on another device).
    # On TPU, TPUStrategy compiles the whole replica function anyway. Without jit no nested tf.function is made:
    # synchronized BatchNormalization (an all-reduce in the forward pass) only works un-nested.
    return tf.function(grads, jit_compile=True) if jit_compile else grads


def make_train_step(*, model, loss_fn, optimizer, global_batch_size, strategy, augment_fn=None,
                    steps_per_execution=1, jit_compile=True, average=None):
    """A function `(iterator, *, step, seed) -> mean loss` running `steps_per_execution` steps in one call.

    Batches are `(images, targets)`; step `step + i` of a call augments replica r with
    `augment_fn(images, targets, seed=replica_seed(seed, step + i, r))`. An `average` (averaging.WeightAverage)
    takes one update after each optimizer step.
    """
    replicas = strategy.num_replicas_in_sync
    _check_optimizer(optimizer, strategy)
    _check_all_reduce(loss_fn, strategy, jit_compile)
    if not keras_api.optimizer_built(optimizer):
        with strategy.scope():
            # Slot variables (momentum, Adam moments) must be created as mirrored variables, before tracing.
            optimizer.build(model.trainable_variables)
    grads_fn = _grad_fn(model=model, loss_fn=loss_fn, optimizer=optimizer, global_batch_size=global_batch_size,
                        replicas=replicas, augment_fn=augment_fn, jit_compile=jit_compile)

    def replica_step(batch, step, seed):
        images, targets = batch
        replica_id = tf.distribute.get_replica_context().replica_id_in_sync_group
        loss, grads = grads_fn(images, targets, replica_seed(seed, step, replica_id))
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        if average is not None:
            average.update(model)
        return loss

    @tf.function
    def run(iterator, step, seed):
        total = tf.constant(0.0, tf.float32)
        # One tf.range loop per call so a TPU is not starved by Python dispatch between steps.
        for i in tf.range(steps_per_execution, dtype=tf.int64):
            losses = strategy.run(replica_step, args=(next(iterator), step + i, seed))
            # Each replica's loss is already divided by the GLOBAL batch: their SUM is the global mean.
            total += strategy.reduce(tf.distribute.ReduceOp.SUM, losses, axis=None)
        return total / steps_per_execution

    def train_step(iterator, *, step, seed):
        return run(iterator, tf.constant(step, tf.int64), tf.constant(seed, tf.int64))

    return train_step


def make_predict_step(*, forward, strategy, jit_compile=True):
    """A function `(images [B, ...] numpy) -> forward(images) as numpy`, rows in order, B split over replicas.

    The batch is sliced on the host, one slice per replica, so ids, strings and validity masks never need to
    go to the device (strings cannot live on a TPU); the caller keeps them beside the returned rows.
    """
    replicas = strategy.num_replicas_in_sync
    compiled = tf.function(forward, jit_compile=True) if jit_compile else forward

    def replica_forward(images):
        # A plain function around the compiled one: a jit tf.function handed straight to strategy.run under
        # Mirrored is placed on replica 0's device and fails reading the other replicas' variables.
        return compiled(images)

    @tf.function
    def run(per_replica_images):
        return strategy.run(replica_forward, args=(per_replica_images,))

    def to_host(per_replica):
        # Concatenated on the host in replica order, the order the slices were taken in: strategy.gather's
        # all-gather has no uint8 kernel under MirroredStrategy, and predictions travel as uint8 maps.
        return np.concatenate([np.asarray(t) for t in strategy.experimental_local_results(per_replica)], axis=0)

    def predict(images):
        images = np.asarray(images)
        if images.shape[0] % replicas:
            raise ValueError(f"predict batch of {images.shape[0]} rows is not divisible by {replicas} replicas "
                             f"(pad it and drop the padding with a validity mask)")
        size = images.shape[0] // replicas

        def replica_slice(context):
            start = context.replica_id_in_sync_group * size
            return tf.constant(images[start:start + size])

        outputs = run(strategy.experimental_distribute_values_from_function(replica_slice))
        return tf.nest.map_structure(to_host, outputs)

    return predict
