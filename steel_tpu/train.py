"""K-fold training of the defect classifier and the segmenter: resume, checkpoints, logs, out-of-fold data."""

import csv
import io
import json
import time

import numpy as np
import tensorflow as tf

from steel_tpu import augment, console, distribute, losses, metrics, models, postprocess, step, storage, workdir
from steel_tpu.constants import CHANNELS
from steel_tpu.data import pipeline
from steel_tpu.data.shard_folder import ShardFolder
from steel_tpu.keras_api import keras
from steel_tpu.workdir import save_config


def build_model(task, tcfg):
    """The Keras model of `task` ("classify" or "segment") for a TaskConfig."""
    m = tcfg.model
    # Height and width left open: the same weights train on augment crops and score whole images.
    shape = (None, None, CHANNELS)
    common = dict(encoder=m.encoder, input_shape=shape, weights=m.weights, allow_random=m.allow_random_weights)
    if task == "classify":
        model = models.build_classifier(heads=m.heads, dropout=m.dropout, **common)
    else:
        options = {} if m.arch.startswith("sm-") else dict(decoder_filters=tuple(m.decoder_filters))
        if m.arch == "unetpp":
            options["deep_supervision"] = m.deep_supervision
        model = models.build_segmenter(arch=m.arch, **common, **options)
    if m.bn_momentum is not None:
        models.set_batchnorm_momentum(model, m.bn_momentum)
    return model


def _classifier_targets(labels, heads):
    """[B, 4] class presence -> what the classifier heads predict."""
    binary = tf.reduce_max(labels, axis=-1, keepdims=True)
    return {"binary": binary, "multilabel": labels, "both": {"binary": binary, "multilabel": labels}}[heads]


def make_task_loss(task, tcfg):
    t = tcfg.train
    options = {}
    if "bce" in losses.parse_spec(t.loss):
        options["bce"] = dict(label_smoothing=t.label_smoothing)
        if t.pos_weight is not None:
            options["bce"]["pos_weight"] = tf.constant(t.pos_weight, tf.float32)
    loss = losses.make_loss(t.loss, options=options)
    if task == "classify" and tcfg.model.heads == "both":
        return lambda y, p: loss(y["binary"], p["binary"]) + loss(y["multilabel"], p["multilabel"])
    return loss


def make_augment_fn(task, tcfg):
    """The on-device augmentation of a (uint8 images, uint8 masks) batch -> (float images, targets)."""
    acfg, heads = tcfg.augment, tcfg.model.heads

    def fn(images, masks, *, seed):
        out_images, out_masks = augment.augment_batch(images, masks, seed=seed, config=acfg)
        if task == "segment":
            return out_images, out_masks
        # A crop can cut every defect pixel out: the label follows the cropped mask (augment.classifier_labels).
        return out_images, _classifier_targets(augment.classifier_labels(masks, out_masks, config=acfg), heads)

    return fn


def make_forward(task, model):
    """Inference on a uint8 batch: classifier probabilities, or segmenter uint8 maps at full resolution."""
    if task == "segment":
        return lambda images: postprocess.to_full_resolution(model(augment.eval_preprocess(images), training=False))
    return lambda images: model(augment.eval_preprocess(images), training=False)


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


def _validate(*, task, predict, eval_ds, tcfg, oof_scale):
    """Score every validation record once (padding dropped); returns (score, metrics dict, out-of-fold arrays)."""
    threshold = tcfg.train.eval_threshold
    ids, probs, truth, dice, areas, labels = [], [], [], [], [], []
    for batch in eval_ds.as_numpy_iterator():
        valid = batch["valid"]
        out = predict(batch["image"])
        masks = batch["mask"][valid] > 0
        ids.extend(i.decode() for i in batch["image_id"][valid])
        labels.append(masks.any(axis=(1, 2)))
        if task == "segment":
            q = out[valid]
            dice.append(metrics.dice_matrix(postprocess.binarize(q, threshold), masks).astype(np.float32))
            probs.append(postprocess.downsample(q, scale=oof_scale))
            truth.append(postprocess.downsample(masks.astype(np.uint8) * 255, scale=oof_scale) >= 128)
            areas.append(masks.sum(axis=(1, 2)))
        else:
            out = out["binary"] if isinstance(out, dict) else out
            probs.append(np.asarray(out[valid], np.float32))
    labels = np.concatenate(labels)
    oof = dict(image_ids=np.array(ids), probs=np.concatenate(probs), labels=labels)
    if task == "segment":
        dice = np.concatenate(dice)
        oof.update(truth=np.concatenate(truth), truth_area=np.concatenate(areas), dice=dice)
        scores = {"dice": float(dice.mean()), **{f"dice_c{c + 1}": float(dice[:, c].mean()) for c in range(4)}}
        return scores["dice"], scores, oof
    return *_classifier_scores(oof["probs"], labels, threshold=threshold), oof


def _classifier_scores(probs, labels, *, threshold):
    """(selection AUC, scores): any-defect AUC for a binary head; for a multilabel head, which gates each class
    on its own, the mean of the per-class AUCs (classes this fold has both labels of), each also reported."""
    p_any, y_any = probs.max(axis=1), labels.any(axis=1)
    scores = {"auc": _auc(y_any, p_any), "accuracy": float(((p_any > threshold) == y_any).mean())}
    if probs.shape[1] == labels.shape[1]:
        per_class = {f"auc_c{c + 1}": _auc(labels[:, c], probs[:, c]) for c in range(labels.shape[1])}
        known = [v for v in per_class.values() if not np.isnan(v)]
        scores = {"auc": float(np.mean(known)) if known else float("nan"), "auc_any": scores["auc"],
                  "accuracy": scores["accuracy"], **per_class}
    # An undefined AUC still lets the first epoch's weights be kept as the best so far.
    return (0.0 if np.isnan(scores["auc"]) else scores["auc"]), scores


def _auc(labels, scores):
    # NaN, not an error, for a class a small validation fold lacks or has in every image.
    return metrics.roc_auc(labels, scores) if 0 < labels.sum() < len(labels) else float("nan")


def _read_log(path):
    if not storage.exists(path):
        return []
    return list(csv.DictReader(io.StringIO(storage.read_text(path))))


def _write_log(path, rows):
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[-1]))
    writer.writeheader()
    writer.writerows(rows)
    storage.write_text(path, buf.getvalue())


class _FoldState(tf.Module):
    """Everything a resumed fold needs besides the data: weights, optimizer slots, epoch, best score."""

    def __init__(self, model, optimizer):
        super().__init__()
        self.model, self.optimizer = model, optimizer
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.best = tf.Variable(-np.inf, dtype=tf.float64, trainable=False)


def train_fold(*, folder, work, cfg, task, fold, device):
    """Train `task` on every fold but `fold`, validate on `fold`; resumes from the fold's latest checkpoint."""
    tcfg = getattr(cfg, task)
    t, d = tcfg.train, tcfg.data
    fdir = workdir.fold_dir(work, task, fold)
    if storage.exists(storage.join(fdir, "done.json")):
        print(f"[{task} fold {fold}] already complete: skipping")
        return json.loads(storage.read_text(storage.join(fdir, "done.json")))
    train_folds = [f for f in range(folder.num_folds) if f != fold]
    train_files, val_files = folder.files(folds=train_folds), folder.files(folds=[fold])
    image_size = (d.image_height, d.image_width)
    seed = cfg.seed * 1009 + fold * 2 + workdir.TASKS.index(task)
    steps = t.steps_per_epoch or pipeline.steps_per_epoch(
        folder, batch_size=d.batch_size, folds=train_folds, oversample=d.oversample, clean_keep=d.clean_keep)
    # Whole calls of steps_per_execution steps: the compiled loop has a static trip count.
    steps = max(t.steps_per_execution, steps - steps % t.steps_per_execution)

    with device.strategy.scope():
        model = build_model(task, tcfg)
        optimizer = distribute.wrap_optimizer(keras.optimizers.Adam(_schedule(t, steps)),
                                              keras.mixed_precision.global_policy())
        optimizer.build(model.trainable_variables)
        state = _FoldState(model, optimizer)
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(state=state), storage.join(fdir, "ckpt"), max_to_keep=1)
    if manager.latest_checkpoint:
        tf.train.Checkpoint(state=state).restore(manager.latest_checkpoint).assert_existing_objects_matched()
        print(f"[{task} fold {fold}] resuming after epoch {int(state.epoch.numpy())}")

    jit_compile = distribute.use_xla(device, t.jit_compile)
    train_step = step.make_train_step(
        model=model, loss_fn=make_task_loss(task, tcfg), optimizer=optimizer, global_batch_size=d.batch_size,
        strategy=device.strategy, augment_fn=make_augment_fn(task, tcfg),
        steps_per_execution=t.steps_per_execution, jit_compile=jit_compile)
    predict = step.make_predict_step(forward=make_forward(task, model), strategy=device.strategy,
                                     jit_compile=jit_compile)
    eval_ds = pipeline.eval_dataset(files=val_files, image_size=image_size, batch_size=d.batch_size)
    log_path = storage.join(fdir, "log.csv")
    rows = [r for r in _read_log(log_path) if int(r["epoch"]) < int(state.epoch.numpy())]
    tb = tf.summary.create_file_writer(storage.join(fdir, "tb"))

    for epoch in range(int(state.epoch.numpy()), t.epochs):
        start = time.perf_counter()
        dist = distribute.distribute_dataset(
            device,
            lambda input_context, epoch=epoch: pipeline.train_dataset(
                files=train_files, image_size=image_size, batch_size=d.batch_size, seed=seed, epoch=epoch,
                steps=steps, oversample=d.oversample, clean_keep=d.clean_keep, shuffle_buffer=d.shuffle_buffer,
                input_context=input_context),
            global_batch_size=d.batch_size)
        iterator = iter(dist)
        with console.Progress(steps, desc=f"[{task} fold {fold}] epoch {epoch + 1}/{t.epochs}", unit="step",
                              lines=1) as bar:
            for s in range(0, steps, t.steps_per_execution):
                loss = float(train_step(iterator, step=epoch * steps + s, seed=seed))
                bar.update(min(t.steps_per_execution, steps - s), loss=loss)
        train_seconds = time.perf_counter() - start
        score, scores, oof = _validate(task=task, predict=predict, eval_ds=eval_ds, tcfg=tcfg, oof_scale=cfg.oof_scale)
        lr = float(optimizer.learning_rate.numpy()) if hasattr(optimizer.learning_rate, "numpy") else t.learning_rate
        row = {"epoch": epoch, "loss": round(loss, 6), "lr": lr, **{k: round(v, 6) for k, v in scores.items()},
               "train_images_per_s": round(steps * d.batch_size / train_seconds, 2),
               "seconds": round(time.perf_counter() - start, 2)}
        rows.append(row)
        print(f"[{task} fold {fold}] " + "  ".join(f"{k} {v}" for k, v in row.items()))
        with tb.as_default(step=epoch):
            for k, v in row.items():
                if k != "epoch":
                    tf.summary.scalar(k, v)
        tb.flush()
        if score > float(state.best.numpy()):
            state.best.assign(score)
            workdir.save_weights(model, storage.join(fdir, "best.weights.h5"))
            workdir.save_oof(storage.join(fdir, "oof.npz"), **oof)
        _write_log(log_path, rows)
        state.epoch.assign(epoch + 1)
        manager.save()

    done = {"task": task, "fold": fold, "epochs": t.epochs, "best": float(state.best.numpy()),
            "metric": "dice" if task == "segment" else "auc"}
    storage.write_text(storage.join(fdir, "done.json"), json.dumps(done, indent=2))
    return done


def run(*, shards, workdir, cfg, tasks=workdir.TASKS, folds=None, device=None):
    """Train `tasks` over `folds` (default: the config's) from the shard folder `shards` into `workdir` (local or
    gs://)."""
    data, work = shards, workdir
    device = device or distribute.select_strategy(tpu=cfg.tpu)
    distribute.set_precision(device.kind, gpu_float16=cfg.gpu_float16)
    # The manifest is the truth: exactly its shards, their sizes checked, nothing unlisted beside them.
    folder = ShardFolder.open(data, split="train").check()
    num_folds = folder.num_folds
    folds = tuple(cfg.folds if folds is None else folds)
    bad = [f for f in folds if not 0 <= f < num_folds]
    if bad:
        raise ValueError(f"folds {bad} outside the {num_folds} folds of {data}")
    save_config(work, cfg)
    results = []
    for fold in folds:
        for task in tasks:
            results.append(train_fold(folder=folder, work=work, cfg=cfg, task=task, fold=fold, device=device))
    return results
