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
        return models.build_segmenter(arch=m.arch, **common, **options)

    def targets(self, masks, augmented_masks):
        return augmented_masks

    def probs(self, model, x):
        return tf.cast(model(x, training=False), tf.float32)

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
