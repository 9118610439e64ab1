"""The segmenter: per-class masks, full-resolution Dice selection, and the OOF maps tune searches."""

import numpy as np

from steel_tpu import metrics, models, postprocess

from steel_tpu.constants import CLASS_IDS
from steel_tpu.device import augment
from steel_tpu.keras_api import ops
from steel_tpu.tasks.base import Task


class Segment(Task):
    name = "segment"
    metric = "dice"

    def _build(self, m, **common):
        options = {} if m.arch.startswith("sm-") else dict(decoder_filters=tuple(m.decoder_filters))
        if m.arch == "unetpp":
            options["deep_supervision"] = m.deep_supervision
        return models.build_segmenter(arch=m.arch, head=m.head, num_classes=len(m.classes), **common, **options)

    @property
    def softmax(self):
        return self.config.model.head == "softmax"

    @property
    def classes(self):
        return self.config.model.classes

    def targets(self, masks, augmented_masks):
        masks = ops.take(augmented_masks, [CLASS_IDS.index(c) for c in self.classes], axis=-1)
        return one_hot_targets(masks) if self.softmax else masks

    def probs(self, model, x):
        # A softmax model's background channel is dropped here, and a model of some classes' maps put at their
        # places among zeros, so everything reading probs (validation, OOF, tune, predict, ensembles, kits, Beam)
        # sees the same [B, h, w, 4] class maps whichever head made them (ensemble.coverage divides by the
        # models of each class).
        out = ops.cast(model(x, training=False), "float32")
        out = out[..., 1:] if self.softmax else out
        if self.classes == CLASS_IDS:
            return out
        zeros = ops.zeros_like(out[..., 0])
        return ops.stack([out[..., self.classes.index(c)] if c in self.classes else zeros for c in CLASS_IDS],
                         axis=-1)

    def forward(self, model):
        # Full resolution on the device, quantised as predict does: a tuned threshold means the same thing there.
        return lambda images: postprocess.to_full_resolution(self.probs(model, augment.eval_preprocess(images)))

    def _oof_rows(self, out, valid, masks):
        q = out[valid]
        dice = metrics.dice_matrix(postprocess.binarize(q, self.config.train.eval_threshold), masks)
        return {"probs": postprocess.downsample(q, scale=self.oof_scale),
                "truth": postprocess.downsample(masks.astype(np.uint8) * 255, scale=self.oof_scale) >= 128,
                "truth_area": masks.sum(axis=(1, 2)), "dice": dice.astype(np.float32)}

    def scores(self, oof):
        # Over the model's own classes: the maps of the others are zeros, not predictions.
        dice = oof["dice"][:, [CLASS_IDS.index(c) for c in self.classes]]
        per_class = {f"dice_c{c}": float(dice[:, i].mean()) for i, c in enumerate(self.classes)}
        return {"dice": float(dice.mean()), **per_class}


def one_hot_targets(masks):
    """float32 [B, h, w, C + 1] one-hot targets of a softmax head, background first, from [B, h, w, C] 0/1 masks.

    A pixel two classes claim goes to the higher class id (metrics.class_labels counts truth by the same rule):
    Severstal's masks practically never overlap, and a softmax can only learn one class per pixel.
    """
    ids = ops.arange(1, masks.shape[-1] + 1, dtype="int32")
    labels = ops.max(ops.where(ops.cast(masks, "float32") > 0.5, ids, 0), axis=-1)
    return ops.one_hot(labels, masks.shape[-1] + 1, dtype="float32")
