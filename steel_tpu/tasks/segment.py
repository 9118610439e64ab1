"""The segmenter: per-class masks, full-resolution Dice selection, and the OOF maps tune searches."""

import numpy as np
import tensorflow as tf

from steel_tpu import augment, metrics, models, postprocess
from steel_tpu.tasks.base import Task


class Segment(Task):
    name = "segment"
    metric = "dice"

    def _build(self, m, **common):
        options = {} if m.arch.startswith("sm-") else dict(decoder_filters=tuple(m.decoder_filters))
        if m.arch == "unetpp":
            options["deep_supervision"] = m.deep_supervision
        return models.build_segmenter(arch=m.arch, head=m.head, **common, **options)

    @property
    def softmax(self):
        return self.config.model.head == "softmax"

    def targets(self, masks, augmented_masks):
        return one_hot_targets(augmented_masks) if self.softmax else augmented_masks

    def probs(self, model, x):
        # A softmax model's background channel is dropped here, so everything reading probs (validation, OOF,
        # tune, predict, ensembles, kits, Beam) sees the same [B, h, w, 4] class maps whichever head made them.
        out = tf.cast(model(x, training=False), tf.float32)
        return out[..., 1:] if self.softmax else out

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
        dice = oof["dice"]
        return {"dice": float(dice.mean()), **{f"dice_c{c + 1}": float(dice[:, c].mean()) for c in range(4)}}


def one_hot_targets(masks):
    """float32 [B, h, w, C + 1] one-hot targets of a softmax head, background first, from [B, h, w, C] 0/1 masks.

    A pixel two classes claim goes to the higher class id (metrics.class_labels counts truth by the same rule):
    Severstal's masks practically never overlap, and a softmax can only learn one class per pixel.
    """
    ids = tf.range(1, masks.shape[-1] + 1, dtype=tf.int32)
    labels = tf.reduce_max(tf.where(tf.cast(masks, tf.float32) > 0.5, ids, 0), axis=-1)
    return tf.one_hot(labels, masks.shape[-1] + 1, dtype=tf.float32)
