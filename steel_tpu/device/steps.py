"""The compiled train and predict steps of the device's backend, one interface: step.py (TensorFlow) or
jax_step.py (JAX)."""


def train_step(*, device, model, loss_fn, optimizer, global_batch_size, augment_fn=None, steps_per_execution=1,
               jit_compile=True, average=None):
    """`(iterator, *, step, seed) -> mean loss` of `steps_per_execution` optimizer steps (JAX always compiles)."""
    if device.backend == "jax":
        from steel_tpu.device import jax_step

        return jax_step.make_train_step(model=model, loss_fn=loss_fn, optimizer=optimizer,
                                        global_batch_size=global_batch_size, device=device, augment_fn=augment_fn,
                                        steps_per_execution=steps_per_execution, average=average)
    from steel_tpu.device import step

    return step.make_train_step(model=model, loss_fn=loss_fn, optimizer=optimizer, global_batch_size=global_batch_size,
                                strategy=device.strategy, augment_fn=augment_fn,
                                steps_per_execution=steps_per_execution, jit_compile=jit_compile, average=average)


def predict_step(*, device, forward, models, jit_compile=True):
    """`(uint8 images [B, ...] numpy) -> forward(images) as numpy`; `models`: the Keras models forward calls."""
    if device.backend == "jax":
        from steel_tpu.device import jax_step

        return jax_step.make_predict_step(forward=forward, models=models, device=device)
    from steel_tpu.device import step

    return step.make_predict_step(forward=forward, strategy=device.strategy, jit_compile=jit_compile)
