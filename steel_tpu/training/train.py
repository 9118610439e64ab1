"""K-fold training of each task: one loop per fold that resumes, checkpoints, logs and keeps out-of-fold data."""

import contextlib
import datetime
import socket
import time

import numpy as np
import tensorflow as tf

from steel_tpu import backend, console, keras_api
from steel_tpu.formats import outputs
from steel_tpu.training import averaging, checkpoints, memory

from steel_tpu import tasks as tasks_lib
from steel_tpu.config import resolve
from steel_tpu.constants import NUM_CLASSES
from steel_tpu.data import pipeline, tfrecord
from steel_tpu.data.shard_folder import ShardFolder
from steel_tpu.device import custom_gradients, distribute
from steel_tpu.device import steps as device_steps
from steel_tpu.formats.workdir import Workdir
from steel_tpu.keras_api import keras


class Diverged(ValueError):
    """Training produced a non-finite loss or weights: the fold is unusable and is not marked done."""


def _schedule(t, steps_per_epoch):
    total = max(1, t.epochs * steps_per_epoch)
    warmup = min(total - 1, int(round(t.warmup_epochs * steps_per_epoch)))
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=t.learning_rate * 0.01 if warmup else t.learning_rate,
        decay_steps=max(1, total - warmup),
        alpha=t.min_lr_ratio,
        warmup_target=t.learning_rate if warmup else None,
        warmup_steps=warmup,
    )


def _diverged(task, fold, epoch, what):
    t = task.config.train
    # A run killed here has no done marker; its config is locked into config.json, hence the new workdir.
    return Diverged(f"{task.name} fold {fold} epoch {epoch + 1}: {what}: training diverged; "
                    f"{task.name}.train.learning_rate={t.learning_rate:g} is the likely cause: lower it and "
                    "train into a new --workdir")


def _finite(model):
    # Non-finite gradients show up here too: one Adam update with them leaves NaN weights.
    return all(np.isfinite(w).all() for w in model.get_weights())


def _log_row(tb, row, epoch):
    with tb.as_default(step=epoch):
        for k, v in row.items():
            if k != "epoch":
                tf.summary.scalar(k, v)
    tb.flush()


def _class_counts(folder, folds):
    """The manifest's images per class in `folds` (pos_weight "auto" derives from them)."""
    entries = folder.entries_of(folds)
    return [sum(e["class_counts"][c] for e in entries) for c in range(NUM_CLASSES)]


def train_fold(*, folder, wd, cfg, task, fold, device, pseudo=None):
    """Train `task` on every fold but `fold` (and, at its data.pseudo_share of each batch, the pseudo-label
    ShardFolder `pseudo`), validate on `fold`; resumes from the fold's latest checkpoint."""
    done = wd.done(task, fold)
    if done is not None:
        print(f"[{task} fold {fold}] already complete: skipping")
        return done
    spec = tasks_lib.make(task, cfg)
    t, d = spec.config.train, spec.config.data
    image_size = (d.image_height, d.image_width)
    train_folds = [f for f in range(folder.num_folds) if f != fold]
    seed = cfg.seed * 1009 + fold * 2 + tasks_lib.NAMES.index(task)
    share = d.pseudo_share if pseudo is not None else 0.0
    pseudo_files = pseudo.files() if share else []
    # An epoch is one pass over the labelled folds: pseudo rows take batch places, so it takes more steps.
    labelled_rows = d.batch_size - pipeline.pseudo_rows(d.batch_size // device.input_replicas,
                                                        share) * device.input_replicas
    steps = t.steps_per_epoch or pipeline.steps_per_epoch(folder, batch_size=labelled_rows,
                                                          **_sampling(spec, train_folds))
    # Whole calls of steps_per_execution steps: the compiled loop has a static trip count.
    steps = max(t.steps_per_execution, steps - steps % t.steps_per_execution)

    # Model, optimizer and everything a resume restores.
    with device.strategy.scope():
        model = spec.build_model()
        optimizer = distribute.wrap_optimizer(keras.optimizers.Adam(_schedule(t, steps)),
                                              keras.mixed_precision.global_policy())
        optimizer.build(model.trainable_variables)
        average = averaging.weight_average(model, decay=t.ema_decay) if t.ema_decay else None
        state = checkpoints.for_device(device, wd, task, fold, model=model, optimizer=optimizer, average=average)
    first = state.restore()
    if first:
        print(f"[{task} fold {fold}] resuming after epoch {first}")

    # The compiled steps and the data.
    jit_compile = distribute.use_xla(device, t.jit_compile)
    train_step = device_steps.train_step(
        device=device, model=model, loss_fn=spec.loss(class_counts=_class_counts(folder, train_folds)),
        optimizer=optimizer, global_batch_size=d.batch_size, augment_fn=spec.augment_fn(),
        steps_per_execution=t.steps_per_execution, jit_compile=jit_compile, average=average)
    predict = device_steps.predict_step(device=device, forward=spec.forward(model), models=[model],
                                        jit_compile=jit_compile)
    train_files = folder.files(folds=train_folds)
    # Validation (hence OOF and tune) reads the held-out labelled fold only: never a pseudo-label.
    eval_ds = pipeline.eval_dataset(files=folder.files(folds=[fold]), image_size=image_size, batch_size=d.batch_size)
    rows = [r for r in wd.read_log(task, fold) if r["epoch"] < first]
    tb = tf.summary.create_file_writer(wd.tb_dir(task, fold))

    for epoch in range(first, t.epochs):
        start = time.perf_counter()
        dist = distribute.distribute_dataset(
            device,
            lambda input_context, epoch=epoch: pipeline.train_dataset(
                files=train_files, image_size=image_size, batch_size=d.batch_size, seed=seed, epoch=epoch,
                steps=steps, oversample=d.oversample, clean_keep=d.clean_keep, classes=spec.config.model.classes,
                shuffle_buffer=d.shuffle_buffer, input_context=input_context, pseudo_files=pseudo_files,
                pseudo_share=share),
            global_batch_size=d.batch_size)
        iterator = iter(dist)
        with console.Progress(steps, desc=f"[{task} fold {fold}] epoch {epoch + 1}/{t.epochs}", unit="step",
                              lines=1) as bar:
            for s in range(0, steps, t.steps_per_execution):
                loss = float(train_step(iterator, step=epoch * steps + s, seed=seed))
                if not np.isfinite(loss):  # one host float per call: free
                    raise _diverged(spec, fold, epoch, f"loss {loss} by step {s + t.steps_per_execution}")
                bar.update(min(t.steps_per_execution, steps - s), loss=loss)
        if not _finite(model):
            raise _diverged(spec, fold, epoch, "weights hold NaN or inf")
        train_seconds = time.perf_counter() - start

        # With an average, validation, OOF and the kept best weights are all the averaged model's.
        with average.applied(model) if average else contextlib.nullcontext():
            score, scores, oof = spec.validate(predict, eval_ds)
            if score > state.best:
                state.set_best(score)
                wd.save_weights(model, task, fold)
                wd.save_oof(task, fold, **oof)
        try:
            lr = float(np.asarray(optimizer.learning_rate))
        except (TypeError, ValueError):  # tf-keras may hand back the schedule itself
            lr = t.learning_rate
        row = {"epoch": epoch, "loss": round(loss, 6), "lr": lr, **{k: round(v, 6) for k, v in scores.items()},
               "train_images_per_s": round(steps * d.batch_size / train_seconds, 2),
               "seconds": round(time.perf_counter() - start, 2),
               # Host memory, so growth across epochs and folds shows in the log (it must stay flat).
               "rss_mb": memory.rss_mb(), "peak_rss_mb": memory.peak_rss_mb()}
        rows.append(row)
        print(f"[{task} fold {fold}] " + "  ".join(f"{k} {v}" for k, v in row.items()))
        _log_row(tb, row, epoch)
        wd.write_log(task, fold, rows)
        state.save(epoch + 1)
    tb.close()  # its writer thread and buffers would outlive the fold

    return wd.mark_done(task, fold, {"task": task, "fold": fold, "epochs": t.epochs,
                                     "best": state.best, "metric": spec.metric})


def _open_pseudo(pseudo, *, cfg, tasks):
    """The pseudo-label ShardFolder `pseudo` (or None), refused unless a trained task mixes it in, and a share
    set without one refused too."""
    shares = {task: getattr(cfg, task).data.pseudo_share for task in tasks}
    if pseudo is None:
        wanting = [f"{task}.data.pseudo_share={share:g}" for task, share in shares.items() if share]
        if wanting:
            raise ValueError(f"{', '.join(wanting)} but no --pseudo: give the pseudo shard folder "
                             "(`steel-tpu pseudo`) or set the share to 0")
        return None
    if not any(shares.values()):
        raise ValueError(f"--pseudo {pseudo}: pseudo_share is 0 for {', '.join(tasks)}: set e.g. "
                         "segment.data.pseudo_share=0.125, or leave out --pseudo")
    # split="pseudo": a labelled (train) folder is refused here, so it can never enter a batch as pseudo-labels.
    return ShardFolder.open(pseudo, split="pseudo").check()


def check_folds(folder, folds, *, shards):
    """`folds` as a tuple, refused unless each is a fold of the shard folder."""
    bad = [f for f in folds if not 0 <= f < folder.num_folds]
    if bad:
        raise ValueError(f"folds {bad} outside the {folder.num_folds} folds of {shards}")
    return tuple(folds)


def _sampling(spec, train_folds):
    d = spec.config.data
    return dict(folds=train_folds, oversample=d.oversample, clean_keep=d.clean_keep, classes=spec.config.model.classes)


def check_sampling(folder, *, cfg, tasks, folds):
    """Refuse, before anything is written, a task whose sampling keeps no training image for a fold (a model of a
    class the other folds never hold, on defect images only): its dataset would never yield a batch."""
    for task in tasks:
        spec = tasks_lib.make(task, cfg)
        for fold in folds:
            pipeline.sampled_images(folder, **_sampling(spec, [f for f in range(folder.num_folds) if f != fold]))


def run(*, shards, workdir, cfg, tasks=None, folds=None, device=None, pseudo=None):
    """Train `tasks` (default: the config's) over `folds` (default: the config's) from the shard folder `shards`
    into `workdir`, mixing the pseudo-label folder `pseudo` (steel-tpu pseudo) into each task's batches at its
    data.pseudo_share."""
    tasks = cfg.tasks if tasks is None else tuple(tasks)
    for task in tasks:
        tasks_lib.make(task, cfg)  # an unknown task name fails before anything is written
    outside = [t for t in tasks if t not in cfg.tasks]
    if outside:
        raise ValueError(f"config {cfg.name} trains {', '.join(cfg.tasks)} only (its `tasks`), not "
                         f"{', '.join(outside)}: leave out --task, or --set 'tasks=[...]'")
    # A workdir path that is a file (or under one) or cannot be written fails here, not after the device starts.
    outputs.check_folder(workdir, flag="--workdir")
    # The manifest is the truth: exactly its shards, their sizes checked, nothing unlisted beside them.
    folder = ShardFolder.open(shards, split="train").check()
    folds = check_folds(folder, cfg.folds if folds is None else folds, shards=shards)
    check_sampling(folder, cfg=cfg, tasks=tasks, folds=folds)
    pseudo_folder = _open_pseudo(pseudo, cfg=cfg, tasks=tasks)
    check_backend(cfg, tasks=tasks)
    device = device or distribute.select_strategy(tpu=cfg.tpu, prefer=distribute.prefer_for(cfg.device),
                                                  verbose=False)
    distribute.set_precision(device.kind, gpu_float16=cfg.gpu_float16)
    print(distribute.summary(device))
    resolved = resolve.resolve_for(cfg, replicas=device.replicas)  # a batch that cannot split fails before writing
    for task in tasks:  # a share too small for one row of this slice's per-replica batch fails before writing too
        data = getattr(resolved, task).data
        pipeline.pseudo_rows(data.batch_size // device.input_replicas, data.pseudo_share)
    wd = Workdir(workdir)
    wd.save_config(cfg)  # the user's config: the same on every slice, so a resume on another one is not refused
    wd.bind_shards(folder, pseudo=pseudo_folder)
    _record_run(wd, device=device, resolved=resolved, tasks=tasks, folds=folds, pseudo=pseudo_folder)
    results = []
    try:
        for fold in folds:
            for task in tasks:
                with _released(device, cfg):
                    results.append(train_fold(folder=folder, wd=wd, cfg=resolved, task=task, fold=fold,
                                              device=device, pseudo=pseudo_folder))
                print(f"[{task} fold {fold}] host memory after release: {memory.rss_mb():.0f} MB resident, "
                      f"peak {memory.peak_rss_mb():.0f} MB")
    except tf.errors.DataLossError as error:
        # TensorFlow names no file; outside the hot loop, the shards are re-read to say which one is damaged.
        raise tfrecord.name_damaged(error, folder.files() + (pseudo_folder.files() if pseudo_folder else [])) from None
    return results


def check_backend(cfg, *, tasks):
    """Refuse, before anything is written, a backend this process did not load or a model it cannot train."""
    reason = backend.refusal(cfg, tasks=tasks, running=keras_api.backend())
    if reason:
        raise ValueError(reason)


def _record_run(wd, *, device, resolved, tasks, folds, pseudo):
    """Append this invocation to the workdir's runs.jsonl; say so when the slice changed the global batch."""
    summary = resolve.summary(resolved, replicas=device.replicas)
    previous = wd.runs()
    for line in resolve.changes(previous[-1].get("resolved", {}), summary) if previous else ():
        print(f"train: this run's slice differs from the last run's: {line}")
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    used = None if pseudo is None else {
        "path": pseudo.path, "fingerprint": pseudo.fingerprint, "manifest_sha256": pseudo.manifest_sha256,
        "records": pseudo.records, "share": {task: getattr(resolved, task).data.pseudo_share for task in tasks}}
    wd.add_run({"command": "train", "started": started, "host": socket.gethostname(), "tasks": list(tasks),
                "folds": list(folds), **distribute.describe(device), "resolved": summary, "pseudo": used})


@contextlib.contextmanager
def _released(device, cfg):
    """Run one fold of one task in the block, then drop what it left in the process, so memory stays flat across
    folds and tasks (measured before: ~200 MB a fold, a B0 classifier at 32x160; tests/test_memory.py).

    - Every traced step registers its custom gradients (EfficientNet's swish) in TensorFlow's global registry, and
      each one keeps its whole traced graph alive: forgotten once the fold's steps are gone (the bulk of the growth).
    - Keras' global state keeps every layer name and functional graph ever built; TensorFlow's eager kernel cache
      keeps kernels of the fold's ops. clear_session drops both, but also Keras' dtype policy, hence set_precision.
    - The fold's models and traces are reference cycles: gc frees them; malloc_trim hands the pages back.
    """
    with custom_gradients.forgotten_after():
        yield
    keras.backend.clear_session()
    # clear_session drops every Keras global: the dtype policy and, under JAX, the device mesh.
    distribute.set_precision(device.kind, gpu_float16=cfg.gpu_float16)
    if device.distribution is not None:
        keras.distribution.set_distribution(device.distribution)
    memory.collect()
