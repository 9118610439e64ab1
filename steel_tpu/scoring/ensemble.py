"""The fold models of one workdir or several as one device function: mean probabilities, flip TTA, full-res masks."""

import dataclasses

import numpy as np

from steel_tpu import postprocess
from steel_tpu.scoring import members

from steel_tpu import tasks as tasks_lib
from steel_tpu.device import augment, resize
from steel_tpu.keras_api import ops


@dataclasses.dataclass(frozen=True)
class Loaded:
    """One member's loaded fold models of each task, its own task objects and its classifiers' input size."""

    path: str
    segmenters: tuple
    classifiers: tuple
    tasks: dict  # task name -> task object made from this member's config
    classify_size: tuple
    coverage: tuple  # 1.0 for each class its segmenters predict (members.coverage), else 0.0
    gate_kind: str  # what its classifiers' probabilities are (members.gate_kind)
    folds: dict  # task -> fold numbers loaded
    identity: dict  # task -> [(weights path, bytes)]: what a resumed run must find unchanged


@dataclasses.dataclass(frozen=True)
class Ensemble:
    """The loaded members (one workdir, or several) and the input size their segmenters share."""

    members: tuple
    segment_size: tuple  # (h, w) the segmenters take: the size the input pipeline decodes to

    @property
    def folds(self):
        """task -> folds loaded; with several members, workdir -> that."""
        if len(self.members) == 1:
            return self.members[0].folds
        return {m.path: m.folds for m in self.members}

    @property
    def identity(self):
        """task -> [[weights path, bytes]]; with several members, [workdir, that] per member: a resumed run
        must find the same members with the same models (JSON-shaped: it goes into plans and manifests)."""
        own = [{task: [list(item) for item in ident] for task, ident in m.identity.items()} for m in self.members]
        return own[0] if len(own) == 1 else [[m.path, i] for m, i in zip(self.members, own)]

    @property
    def models(self):
        """Every Keras model the forward calls."""
        return [model for m in self.members for model in (*m.segmenters, *m.classifiers)]

    @property
    def has_classifiers(self):
        return any(m.classifiers for m in self.members)


def build(plan, *, strategy):
    """The Ensemble of a scoring.source.Plan's members (checked there to be averageable), each member's models built
    with its own task objects (members may differ in encoder, arch, segmenter head or classes, classifier size).
    A fold whose model is missing, unreadable or not finite is refused naming the file."""
    planned = plan.members
    objects = [{name: tasks_lib.make(name, m.config) for name in m.folds} for m in planned]
    loaded = []
    for m, tasks in zip(planned, objects):
        models = {name: tuple(m.models.load_model(tasks[name], f, strategy=strategy) for f in use)
                  for name, use in m.folds.items()}
        data = m.config.classify.data
        loaded.append(Loaded(path=m.path, segmenters=models.get("segment", ()), classifiers=models.get("classify", ()),
                             tasks=tasks, classify_size=(data.image_height, data.image_width), folds=m.folds,
                             identity=m.identity, coverage=tuple(members.coverage(m.config).tolist()),
                             gate_kind=members.gate_kind(m.config)))
    return Ensemble(members=tuple(loaded), segment_size=plan.segment_size)


def _flips(x, tta):
    """The batch, and with TTA its horizontal and vertical flips stacked behind it: [views * B, ...]."""
    if not tta:
        return x
    # One model call on a 3x batch, not three calls: one trace per model and a fuller device.
    return ops.concatenate([x, ops.flip(x, axis=2), ops.flip(x, axis=1)], axis=0)


def _unflip_mean(p, tta):
    """Mean over the views of _flips, each flipped back (flips are their own inverses)."""
    if not tta:
        return p
    same, h, v = ops.split(p, 3, axis=0)
    return (same + ops.flip(h, axis=2) + ops.flip(v, axis=1)) / 3.0


def _view_mean(p, tta):
    """Mean over the views of a per-image output (classifier probabilities): nothing to flip back."""
    return ops.mean(ops.stack(ops.split(p, 3, axis=0)), axis=0) if tta else p


def make_forward(ensemble, *, pp, tta=False):
    """uint8 images [B, h, w, 3] at segment_size -> {"masks": bool [B, 256, 1600, 4], "areas": int32 [B, 4],
    "probs": float32 [B, heads]} ("probs" only with classifiers), all on the device in one program.

    The segment probabilities of each class are the mean over every fold model of every member that predicts the
    class, each fold model counting once (a member with 5 folds weighs 5/2 of one with 2), and the gating
    probabilities likewise over every classifier of a kind, the kinds combined by members.combine_gates.
    Thresholding by the PostProcess `pp` on the device (postprocess.to_masks: "areas" are the pixels counted
    against min_area, above the upper threshold under a double threshold) leaves the host only RLE encoding; min
    areas and the gate act on "areas" and "probs" on the host (PostProcess.keep). A soft gate raises each image's
    levels from "probs" on the device.
    """
    if pp.soft_gate and not ensemble.has_classifiers:
        raise ValueError("a soft gate needs the classifiers: load the ensemble with the classify task")

    def forward(images):
        x = _flips(augment.eval_preprocess(images), tta)
        sized = {tuple(ensemble.segment_size): x}  # each classifier input size made once per batch
        out, cls, seg, count = {}, {}, [], 0.0
        for m in ensemble.members:
            if m.classifiers:
                size = tuple(m.classify_size)
                if size not in sized:
                    # One decode per image on the host; a classifier's own size is made on the device.
                    sized[size] = ops.round(resize.area(x, size))
                # The classify task decides which head's probabilities gate (Classify.gate_probs).
                cls.setdefault(m.gate_kind, []).extend(
                    _view_mean(m.tasks["classify"].probs(model, sized[size]), tta) for model in m.classifiers)
            seg += [_unflip_mean(m.tasks["segment"].probs(model, x), tta) for model in m.segmenters]
            count += len(m.segmenters) * np.array(m.coverage, np.float32)
        if cls:
            out["probs"] = members.combine_gates(cls)
        # A model's maps of classes it does not predict are zeros (Segment.probs): each class over its own models.
        mean = sum(seg[1:], seg[0]) / ops.convert_to_tensor(np.maximum(count, 1.0).astype(np.float32))
        out["masks"], out["areas"] = postprocess.to_masks(postprocess.to_full_resolution(mean), pp,
                                                          class_probs=out.get("probs"))
        return out

    return forward
