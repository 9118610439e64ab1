"""The fold models of a workdir as one device function: mean probabilities, optional flip TTA, full-res masks."""

import dataclasses

import tensorflow as tf

from steel_tpu import augment, kit, postprocess, storage
from steel_tpu import tasks as tasks_lib


@dataclasses.dataclass(frozen=True)
class Ensemble:
    """Loaded fold models of each task, the task objects and the input size each expects."""

    segmenters: tuple
    classifiers: tuple
    tasks: dict  # task name -> task object
    segment_size: tuple  # (h, w) the segmenters take: the size the input pipeline decodes to
    classify_size: tuple
    folds: dict  # task -> fold numbers loaded
    identity: dict  # task -> [(weights path, bytes)]: what a resumed run must find unchanged


def load(work, *, strategy, folds=None, tasks=tasks_lib.NAMES):
    """Every completed fold of each task in `tasks` (or just `folds`), built under `strategy`'s scope, from a
    training workdir or an exported kit.

    A fold whose best weights are missing, not HDF5 or not finite is refused naming the file.
    """
    wd = kit.open_models(work)
    cfg = wd.config()
    chosen = {name: [f for f in wd.completed_folds(name) if folds is None or f in folds] for name in tasks}
    # The segmenters make the masks: every requested fold must have one (checked before any model is built);
    # classifiers only gate.
    missing = sorted(set(folds or ()) - set(chosen.get("segment", ())))
    if missing:
        raise FileNotFoundError(f"{work}: segment folds {missing} are not complete")
    if not chosen.get("segment"):
        raise FileNotFoundError(f"{work}: no completed segment folds (segment/fold*/done.json): "
                                "nothing to predict with")
    loaded, identity, objects = {}, {}, {}
    for name, use in chosen.items():
        task = objects[name] = tasks_lib.make(name, cfg)
        loaded[name] = tuple(wd.load_model(task, fold, strategy=strategy) for fold in use)
        identity[name] = [(p, storage.size(p)) for p in (wd.model_path(name, f) for f in use)]
    size = lambda name: (getattr(cfg, name).data.image_height, getattr(cfg, name).data.image_width)  # noqa: E731
    return Ensemble(segmenters=loaded["segment"], classifiers=loaded.get("classify", ()), tasks=objects,
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


def make_forward(ensemble, *, pp, tta=False):
    """uint8 images [B, h, w, 3] at segment_size -> {"masks": bool [B, 256, 1600, 4], "areas": int32 [B, 4],
    "probs": float32 [B, heads]} ("probs" only with classifiers), all on the device in one program.

    Thresholding by the PostProcess `pp` on the device (postprocess.to_masks: "areas" are the pixels counted
    against min_area, above the upper threshold under a double threshold) leaves the host only RLE encoding; min
    areas and the gate act on "areas" and "probs" on the host (PostProcess.keep). A soft gate raises each image's
    levels from "probs" on the device.
    """
    if pp.soft_gate and not ensemble.classifiers:
        raise ValueError("a soft gate needs the classifiers: load the ensemble with the classify task")

    def forward(images):
        x = _flips(augment.eval_preprocess(images), tta)
        segment, classify = ensemble.tasks["segment"], ensemble.tasks.get("classify")
        out = {}
        if ensemble.classifiers:
            # The classify task decides which head's probabilities gate (Classify.gate_probs).
            cx = x
            if tuple(ensemble.classify_size) != tuple(ensemble.segment_size):
                # One decode per image on the host; the classifier's size is made on the device.
                cx = tf.round(tf.image.resize(x, ensemble.classify_size, method="area"))
            out["probs"] = _mean([_view_mean(classify.probs(m, cx), tta) for m in ensemble.classifiers])
        seg = [_unflip_mean(segment.probs(m, x), tta) for m in ensemble.segmenters]
        out["masks"], out["areas"] = postprocess.to_masks(postprocess.to_full_resolution(_mean(seg)), pp,
                                                          class_probs=out.get("probs"))
        return out

    return forward
