"""The fold models of a workdir as one device function: mean probabilities, optional flip TTA, full-res masks."""

import dataclasses

import tensorflow as tf

from steel_tpu import augment, postprocess, storage, train, workdir


@dataclasses.dataclass(frozen=True)
class Ensemble:
    """Loaded fold models of both tasks and the input size each expects."""

    segmenters: tuple
    classifiers: tuple
    segment_size: tuple  # (h, w) the segmenters take: the size the input pipeline decodes to
    classify_size: tuple
    folds: dict  # task -> fold numbers loaded
    identity: dict  # task -> [(weights path, bytes)]: what a resumed run must find unchanged


def _build(task, tcfg):
    # Weights come from the workdir: never fetch (or require) pretrained encoder weights to build the graph.
    offline = dataclasses.replace(tcfg, model=dataclasses.replace(tcfg.model, weights=None, allow_random_weights=True))
    return train.build_model(task, offline)


def load(work, *, strategy, folds=None, tasks=workdir.TASKS):
    """Every completed fold of each task in `tasks` (or just `folds`), built under `strategy`'s scope."""
    cfg = workdir.load_config(work)
    loaded, chosen, identity = {}, {}, {}
    for task in tasks:
        done = workdir.completed_folds(work, task)
        use = [f for f in done if folds is None or f in folds]
        if folds is not None and task == "segment" and sorted(use) != sorted(folds):
            raise FileNotFoundError(f"{work}: segment folds {sorted(set(folds) - set(done))} are not complete")
        paths = [workdir.fold_file(work, task, f, "best.weights.h5") for f in use]
        with strategy.scope():
            models = [_build(task, getattr(cfg, task)) for _ in use]
        for model, path in zip(models, paths):
            workdir.load_weights(model, path)
        loaded[task], chosen[task] = tuple(models), use
        identity[task] = [(p, storage.size(p)) for p in paths]
    if not loaded.get("segment"):
        raise FileNotFoundError(f"{work}: no completed segment folds (segment/fold*/done.json): nothing to predict with")
    size = lambda task: (getattr(cfg, task).data.image_height, getattr(cfg, task).data.image_width)  # noqa: E731
    return Ensemble(segmenters=loaded["segment"], classifiers=loaded.get("classify", ()),
                    segment_size=size("segment"), classify_size=size("classify"), folds=chosen, identity=identity)


def _flips(x, tta):
    """The batch, and with TTA its horizontal and vertical flips stacked behind it: [views * B, ...]."""
    if not tta:
        return x
    # One model call on a 3x batch, not three calls: one trace per model and a fuller device.
    return tf.concat([x, tf.reverse(x, axis=[2]), tf.reverse(x, axis=[1])], axis=0)


def _unflip_mean(p, tta):
    """Mean over the views of _flips, each flipped back (flips are their own inverses)."""
    if not tta:
        return p
    same, h, v = tf.split(p, 3, axis=0)
    return (same + tf.reverse(h, axis=[2]) + tf.reverse(v, axis=[1])) / 3.0


def _view_mean(p, tta):
    """Mean over the views of a per-image output (classifier probabilities): nothing to flip back."""
    return tf.reduce_mean(tf.stack(tf.split(p, 3, axis=0)), axis=0) if tta else p


def _mean(outputs):
    return tf.add_n(outputs) / float(len(outputs))


def _class_probs(output):
    # A two-headed classifier gates on its binary head, as training's validation (and so tune) does.
    return tf.cast(output["binary"] if isinstance(output, dict) else output, tf.float32)


def make_forward(ensemble, *, pixel_threshold, tta=False):
    """uint8 images [B, h, w, 3] at segment_size -> {"masks": bool [B, 256, 1600, 4], "areas": int32 [B, 4],
    "probs": float32 [B, heads]} ("probs" only with classifiers), all on the device in one program.

    Thresholding on the device leaves the host only RLE encoding; min areas and the gate act on "areas" and
    "probs" on the host (PostProcess.keep).
    """

    def forward(images):
        x = _flips(augment.eval_preprocess(images), tta)
        seg = [_unflip_mean(tf.cast(m(x, training=False), tf.float32), tta) for m in ensemble.segmenters]
        masks, areas = postprocess.to_masks(postprocess.to_full_resolution(_mean(seg)), pixel_threshold)
        out = {"masks": masks, "areas": areas}
        if ensemble.classifiers:
            if tuple(ensemble.classify_size) != tuple(ensemble.segment_size):
                # One decode per image on the host; the classifier's size is made on the device.
                x = tf.round(tf.image.resize(x, ensemble.classify_size, method="area"))
            out["probs"] = _mean([_view_mean(_class_probs(m(x, training=False)), tta) for m in ensemble.classifiers])
        return out

    return forward
