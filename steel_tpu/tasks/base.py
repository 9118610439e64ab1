"""What every task provides, in the pattern of tensorflow/models' base_task.Task."""

import dataclasses

import numpy as np

from steel_tpu import models

from steel_tpu.constants import CHANNELS, CLASS_IDS
from steel_tpu.device import augment, losses


class Task:
    """A task's model, training targets and loss, device forward and validation; subclasses fill in the rest."""

    name = None
    metric = None  # the validation score that selects the best epoch

    def __init__(self, tcfg, *, oof_scale):
        self.config, self.oof_scale = tcfg, oof_scale

    def build_model(self, *, pretrained=True):
        """The Keras model. pretrained=False when the weights come from a workdir: never fetch (or require)
        pretrained encoder weights just to build the graph."""
        m = self.config.model
        if not pretrained:
            m = dataclasses.replace(m, weights=None, allow_random_weights=True)
        # Height and width left open: the same weights train on augment crops and score whole images.
        model = self._build(m, encoder=m.encoder, input_shape=(None, None, CHANNELS), weights=m.weights,
                            allow_random=m.allow_random_weights)
        if m.bn_momentum is not None:
            models.set_batchnorm_momentum(model, m.bn_momentum)
        return model

    def _build(self, m, **common):
        raise NotImplementedError

    def targets(self, masks, augmented_masks):
        """What the model learns to predict, from the original and the augmented uint8 masks [B, h, w, 4]."""
        raise NotImplementedError

    def loss(self, *, class_counts=None):
        """The per-example loss of the config's spec (BCE options: label smoothing, positive weights; CCE: class
        weights); pos_weight "auto" needs the training images' per-class counts (the shard manifest's)."""
        t = self.config.train
        # Per-class weights are given for every class; a model of some classes (model.classes) takes theirs.
        pick = [CLASS_IDS.index(c) for c in self.config.model.classes]
        options = {}
        if t.class_weights is not None:
            options["cce"] = dict(class_weights=(t.class_weights[0], *(t.class_weights[1 + i] for i in pick)))
        if "bce" in losses.parse_spec(t.loss):
            options["bce"] = dict(label_smoothing=t.label_smoothing)
            if t.pos_weight == "auto":
                if class_counts is None:
                    raise ValueError(f"{self.name}.train.pos_weight=auto needs the training data's class counts")
                options["bce"]["pos_weight"] = tuple(losses.auto_pos_weight(class_counts)[i] for i in pick)
            elif t.pos_weight is not None:
                options["bce"]["pos_weight"] = tuple(t.pos_weight[i] for i in pick)
        return losses.make_loss(t.loss, options=options)

    def augment_fn(self):
        """The on-device augmentation of a (uint8 images, uint8 masks) batch -> (float images, targets)."""
        acfg = self.config.augment

        def fn(images, masks, *, seed):
            out_images, out_masks = augment.augment_batch(images, masks, seed=seed, config=acfg)
            # Training batches carry the luma plane (pipeline.train_dataset): augmenting one channel and making
            # the three here, on the device, is the same arithmetic on a third of the bytes.
            return augment.to_channels(out_images), self.targets(masks, out_masks)

        return fn

    def probs(self, model, x):
        """float32 probabilities of a float batch: what ensembles average (a segmenter's maps, a classifier's
        gating probabilities)."""
        raise NotImplementedError

    def forward(self, model):
        """Inference on a uint8 batch, on the device: what validation scores."""
        raise NotImplementedError

    def validate(self, predict, eval_ds):
        """Score every validation record once (padding dropped): (selection score, scores dict, OOF arrays)."""
        ids, labels, parts = [], [], []
        for batch in eval_ds.as_numpy_iterator():
            valid = batch["valid"]
            masks = batch["mask"][valid] > 0
            ids.extend(i.decode() for i in batch["image_id"][valid])
            labels.append(masks.any(axis=(1, 2)))
            parts.append(self._oof_rows(predict(batch["image"]), valid, masks))
        oof = {"image_ids": np.array(ids), "labels": np.concatenate(labels),
               **{k: np.concatenate([p[k] for p in parts]) for k in parts[0]}}
        scores = self.scores(oof)
        # An undefined score (a fold too small to have both labels) still lets the first epoch be kept.
        selection = scores[self.metric]
        return (0.0 if np.isnan(selection) else selection), scores, oof

    def _oof_rows(self, out, valid, masks):
        """{name: array} of one batch's valid rows for the OOF file (workdir.save_oof lists them)."""
        raise NotImplementedError

    def scores(self, oof):
        """{metric: float} of the whole validation fold, `self.metric` among them."""
        raise NotImplementedError
