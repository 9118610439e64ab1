"""The JAX backend's steps: a stateless, jitted train step and predict forward over Keras' DataParallel mesh (the
TensorFlow twin, with the same interface, is step.py)."""

import jax
import numpy as np

from steel_tpu.device import draws, losses
from steel_tpu.keras_api import ops


def to_device(batch, device):
    """A host batch (numpy, or a structure of them) as global arrays sharded over the mesh's batch axis."""
    distribution = device.distribution

    def put(x):
        x = np.asarray(x)
        if distribution is None:
            return jax.device_put(x)
        # Each process hands its own rows (a multi-host slice: its tf.data share); JAX assembles the global batch.
        return jax.make_array_from_process_local_data(distribution.get_data_layout(x.shape).backend_layout, x)

    return jax.tree_util.tree_map(put, batch)


def replicated(tree, device):
    """`tree` placed whole on every device of the mesh: fresh variables are uncommitted arrays, the step's outputs
    replicated ones, and a jitted function called with both kinds compiles twice."""
    if device.distribution is None:
        return tree
    mesh = device.distribution.device_mesh.backend_mesh
    return jax.device_put(tree, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))


def step_key(seed, step):
    """The augmentation key of one step: the same on every device count (the step sees the global batch)."""
    return jax.random.fold_in(jax.random.key(seed), step)


def _values(variables):
    return [v.value for v in variables]


def _assign(variables, values):
    for v, value in zip(variables, values):
        v.assign(value)


def make_train_step(*, model, loss_fn, optimizer, global_batch_size, device, augment_fn=None,
                    steps_per_execution=1, average=None):
    """A function `(iterator, *, step, seed) -> mean loss` running `steps_per_execution` steps, as step.py's.

    The model's and optimizer's variables are the state: read at each call, written back after it, so validation,
    checkpoints and weight averaging see every update. Step `step + i` augments with step_key(seed, step + i).
    """
    if not optimizer.built:
        optimizer.build(model.trainable_variables)
    trainable, non_trainable = model.trainable_variables, model.non_trainable_variables
    averaged = [] if average is None else _averaged_positions(model)

    def loss_of(trainable_values, non_trainable_values, images, targets):
        preds, non_trainable_values, regularisers = model.stateless_call(
            trainable_values, non_trainable_values, images, training=True, return_losses=True)
        # The step sees the global batch: its mean is what TensorFlow's sum over replicas of per-replica sums / the
        # global batch gives.
        loss = ops.sum(losses.per_example(loss_fn, targets, preds)) / global_batch_size
        if regularisers:
            loss = loss + sum(ops.cast(x, "float32") for x in regularisers)
        return optimizer.scale_loss(loss), (loss, non_trainable_values)

    gradients = jax.value_and_grad(loss_of, has_aux=True)

    def one_step(state, images, targets, key):
        trainable_values, non_trainable_values, optimizer_values, shadow, count = state
        if augment_fn is not None:
            images, targets = augment_fn(images, targets, seed=draws.JaxDraws(key=key))
        (_, (loss, non_trainable_values)), grads = gradients(trainable_values, non_trainable_values, images, targets)
        trainable_values, optimizer_values = optimizer.stateless_apply(optimizer_values, grads, trainable_values)
        if average is not None:
            every = {id(v): x for v, x in zip(trainable + non_trainable, trainable_values + non_trainable_values)}
            shadow, count = average.advanced(shadow, count, [every[i] for i in averaged])
        return (trainable_values, non_trainable_values, optimizer_values, shadow, count), loss

    # The previous state's buffers are dead once the step returns: donating them halves the peak HBM of the weights.
    compiled = jax.jit(one_step, donate_argnums=(0,))

    def current():
        return replicated((_values(trainable), _values(non_trainable), _values(optimizer.variables),
                           [] if average is None else list(average.shadow),
                           np.int32(0) if average is None else np.int32(average.count)), device)

    def train_step(iterator, *, step, seed):
        state = current()
        step_losses = []
        for i in range(steps_per_execution):
            images, masks = to_device(_numpy(next(iterator)), device)
            state, loss = compiled(state, images, masks, step_key(seed, step + i))
            step_losses.append(loss)
        trainable_values, non_trainable_values, optimizer_values, shadow, count = state
        _assign(trainable, trainable_values)
        _assign(non_trainable, non_trainable_values)
        _assign(optimizer.variables, optimizer_values)
        if average is not None:
            average.shadow, average.count = list(shadow), count
        return float(np.mean([float(x) for x in step_losses]))

    def memory(images, masks):
        """XLA's memory analysis of the step compiled for host batches shaped like these (on this device; a TPU's
        figures come from compiling for a TPU): weights, optimizer slots and batch in, activations as temporaries."""
        lowered = compiled.lower(current(), *to_device((images, masks), device), step_key(0, 0))
        return lowered.compile().memory_analysis()

    train_step.memory = memory
    return train_step


def _averaged_positions(model):
    from steel_tpu.training import averaging

    return [id(v) for v in averaging.averaged_weights(model)]


def _numpy(batch):
    """A tf.data batch (tf tensors) as numpy: the host side is TensorFlow, the device side JAX."""
    return jax.tree_util.tree_map(np.asarray, tuple(batch) if isinstance(batch, list) else batch)


def make_predict_step(*, forward, models, device):
    """A function `(images [B, ...] numpy) -> forward(images) as numpy`, rows in order, B sharded over the mesh.

    forward calls the Keras `models`; their variables enter the compiled function as arguments (not as constants
    baked into the program), through a StatelessScope.
    """
    import keras

    variables = [v for m in models for v in m.variables]

    def run(values, images):
        with keras.StatelessScope(state_mapping=list(zip(variables, values))):
            return forward(images)

    compiled = jax.jit(run)

    def predict(images):
        images = np.asarray(images)
        if images.shape[0] % device.replicas:
            raise ValueError(f"predict batch of {images.shape[0]} rows is not divisible by {device.replicas} "
                             f"devices (pad it and drop the padding with a validity mask)")
        out = compiled(replicated(_values(variables), device), to_device(images, device))
        return jax.tree_util.tree_map(np.asarray, out)

    return predict
