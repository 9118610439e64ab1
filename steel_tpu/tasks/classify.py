"""The defect classifier: presence labels, AUC selection, and the probabilities that gate a submission."""

import functools

import numpy as np

from steel_tpu import metrics, models

from steel_tpu.device import augment
from steel_tpu.keras_api import ops
from steel_tpu.tasks.base import Task


class Classify(Task):
    name = "classify"
    metric = "auc"

    def _build(self, m, **common):
        return models.build_classifier(heads=m.heads, dropout=m.dropout, **common)

    def targets(self, masks, augmented_masks):
        # A crop can cut every defect pixel out: the label follows the cropped mask (augment.classifier_labels).
        labels = augment.classifier_labels(masks, augmented_masks, config=self.config.augment)
        binary = ops.max(labels, axis=-1, keepdims=True)
        return {"binary": binary, "multilabel": labels, "both": {"binary": binary, "multilabel": labels}}[
            self.config.model.heads]

    def loss(self, *, class_counts=None):
        loss = super().loss(class_counts=class_counts)
        if self.config.model.heads == "both":
            # wraps keeps the loss's name and its all_reduces mark (step.make_train_step reads it).
            return functools.wraps(loss)(lambda y, p: loss(y["binary"], p["binary"]) + loss(y["multilabel"],
                                                                                             p["multilabel"]))
        return loss

    @staticmethod
    def gate_probs(output):
        """A two-headed classifier gates on its binary head; validation, tune and predict all read this."""
        return output["binary"] if isinstance(output, dict) else output

    @property
    def gate_head(self):
        """What gate_probs returns: "binary" [B, 1] (a binary or two-headed classifier) or "multilabel" [B, 4]."""
        return "multilabel" if self.config.model.heads == "multilabel" else "binary"

    def probs(self, model, x):
        return ops.cast(self.gate_probs(model(x, training=False)), "float32")

    def forward(self, model):
        return lambda images: self.probs(model, augment.eval_preprocess(images))

    def _oof_rows(self, out, valid, masks):
        return {"probs": np.asarray(out[valid], np.float32)}

    def scores(self, oof):
        return classifier_scores(oof["probs"], oof["labels"], threshold=self.config.train.eval_threshold)


def classifier_scores(probs, labels, *, threshold):
    """Any-defect AUC and accuracy; for a multilabel head, which gates each class on its own, "auc" is the mean
    of the per-class AUCs (classes this fold has both labels of), each also reported."""
    p_any, y_any = probs.max(axis=1), labels.any(axis=1)
    scores = {"auc": _auc(y_any, p_any), "accuracy": float(((p_any > threshold) == y_any).mean())}
    if probs.shape[1] == labels.shape[1]:
        per_class = {f"auc_c{c + 1}": _auc(labels[:, c], probs[:, c]) for c in range(labels.shape[1])}
        known = [v for v in per_class.values() if not np.isnan(v)]
        scores = {"auc": float(np.mean(known)) if known else float("nan"), "auc_any": scores["auc"],
                  "accuracy": scores["accuracy"], **per_class}
    return scores


def _auc(labels, scores):
    # NaN, not an error, for a class a small validation fold lacks or has in every image.
    return metrics.roc_auc(labels, scores) if 0 < labels.sum() < len(labels) else float("nan")
