"""The workdirs of an ensemble on the host: whether their models can be averaged, how their gates combine, their
averaged out-of-fold data (tune) and the record of them a tuned thresholds.json keeps (predict checks it).

One workdir is the ensemble of its own folds; several (one per encoder, say: seed 004's B0..B5) are averaged model
by model. Which workdirs a command was given is scoring.source.ModelSource's to resolve. Nothing here imports
TensorFlow: tune reads it.
"""

import os

import numpy as np

from steel_tpu import storage
from steel_tpu.constants import CLASS_IDS
from steel_tpu.formats.workdir import Workdir

_BATCH = 64  # images averaged at a time: bounds the float32 copy of one fold's maps


class MembersError(ValueError):
    """Workdirs that cannot be ensembled, or thresholds tuned for other ones; the message names them."""


def normalized(path):
    """A path as thresholds.json records it and compares it: absolute when local (tune and predict may run in
    different folders), without a trailing slash on gs://."""
    return str(path).rstrip("/") if storage.is_gcs(path) else os.path.abspath(str(path))


def segment_size(cfg):
    """(h, w) the segmenters of a config take: the size the input pipeline decodes each image to."""
    return (cfg.segment.data.image_height, cfg.segment.data.image_width)


def check_agree(items, *, what, why):
    """The one value of `items` [(workdir, value)]; a second value is refused in one line naming both workdirs."""
    (first_path, first), *rest = items
    for path, value in rest:
        if value != first:
            raise MembersError(f"workdirs {first_path} and {path} cannot be ensembled: {what} {first} vs {value} "
                               f"({why})")
    return first


def check_segment_sizes(members):
    """The segmenters' common input size of `members` [(workdir, config)]."""
    return check_agree([(p, segment_size(c)) for p, c in members], what="segmenter input size (h, w)",
                       why="the pipeline decodes each image once, at the segmenters' size")


def gate_kind(cfg):
    """What a config's classifier's gating probabilities are: "binary" (any defect), "multilabel" (each class) or
    "given_defect" (each class, of a multilabel classifier trained on defect images only: clean_keep=0)."""
    heads = cfg.classify.model.heads
    if heads != "multilabel":
        return "binary"  # a two-headed classifier gates on its binary head (tasks.Classify.gate_probs)
    return "given_defect" if cfg.classify.data.clean_keep == 0.0 else "multilabel"


def gate_rule(kinds):
    """The kinds of gating probabilities ([(workdir, gate_kind)]) an ensemble combines, refused unless one kind
    (averaged) or seed 000's pair, binary and given_defect: P(class) = P(defect) x P(class | defect)."""
    first = {}
    for path, kind in kinds:
        first.setdefault(kind, path)
    if len(first) > 1 and set(first) != {"binary", "given_defect"}:
        (a, path_a), (b, path_b) = list(first.items())[:2]
        raise MembersError(f"workdirs {path_a} and {path_b} cannot be ensembled: classifier gate heads {a} vs {b} "
                           "(averaged only when of one kind; a binary classifier combines with a multilabel one "
                           "trained on defect images only, classify.data.clean_keep=0)")
    return sorted(first)


def combine_gates(by_kind):
    """One gating probability array from {gate_kind: [arrays]} (numpy on the host, tensors on the device): the
    mean of each kind; binary times given_defect for seed 000's pair ([B, 1] x [B, 4] -> [B, 4])."""
    means = {kind: sum(arrays[1:], arrays[0]) / len(arrays) for kind, arrays in by_kind.items() if arrays}
    if set(means) == {"binary", "given_defect"}:
        return means["binary"] * means["given_defect"]
    (only,) = means.values()
    return only


def coverage(cfg):
    """float32 [4]: 1 for each class a config's segmenter predicts (segment.model.classes), else 0."""
    return np.array([float(c in cfg.segment.model.classes) for c in CLASS_IDS], np.float32)


class AveragedOof:
    """The out-of-fold data of several workdirs as one: per fold, the mean of the members' OOF arrays (each
    member's fold-k model scored fold k's held-out images), read through the Workdir methods tune reads OOF with.

    Only folds complete in every member that trains the task (config `tasks`) exist here. Members must have been
    trained on one shard folder (shards.json) and hold, per fold, the same images in the same order with the same
    truth. Segment maps are averaged per class over the members that predict it (coverage), in float, and rounded
    back to uint8 (half to even); classifier probabilities are averaged in float and combined by gate kind
    (combine_gates).
    There is no ensemble "dice" (training's full-resolution Dice of one model): the OOF maps hold none.
    """

    def __init__(self, paths):
        self.paths = tuple(paths)
        self.members = [Workdir(p) for p in self.paths]
        self.configs = {wd.path: wd.config() for wd in self.members}  # read once: each read is a GCS call
        self._check_shards()
        check_segment_sizes([(m.path, self.configs[m.path]) for m in self.having("segment")])

    def having(self, task):
        """The members whose config trains `task`."""
        return [wd for wd in self.members if task in self.configs[wd.path].tasks]

    def _check_shards(self):
        records = []
        for wd in self.members:
            record = wd.shards_record()
            if record is None:
                raise MembersError(f"{wd.path}: no shards.json: no record of the shards it was trained on, so its "
                                   "out-of-fold images cannot be matched with the other workdirs'")
            records.append((wd.path, record))
        check_agree([(p, r.get("fingerprint")) for p, r in records], what="shard folder fingerprints",
                    why=f"trained on different shard folders ({', '.join(str(r.get('path')) for _, r in records)}): "
                        "their out-of-fold images are not the same")

    def completed_folds(self, task):
        """Folds of `task` complete in every member that trains it, sorted."""
        having = self.having(task)
        common = set(having[0].completed_folds(task)) if having else set()
        for wd in having[1:]:
            common &= set(wd.completed_folds(task))
        return sorted(common)

    def left_out(self, task, *, common=None):
        """{workdir: folds of `task` complete there but not in every member} (those with any)."""
        common = set(self.completed_folds(task) if common is None else common)
        return {wd.path: extra for wd in self.having(task)
                if (extra := sorted(set(wd.completed_folds(task)) - common))}

    def oof_path(self, task, fold):
        """The members' OOF files of the fold (what error messages name)."""
        return " + ".join(str(wd.oof_path(task, fold)) for wd in self.having(task))

    def oof(self, task, fold):
        """The fold's averaged OOF arrays: the first member's image ids, labels and truth, the mean `probs`."""
        having = self.having(task)
        arrays = [wd.oof(task, fold) for wd in having]
        first = arrays[0]
        same = [k for k in ("image_ids", "labels", "truth", "truth_area") if k in first]
        for wd, other in zip(having[1:], arrays[1:]):
            self._check_rows(task, fold, having[0], wd, first, other, same)
        if task == "segment":
            # A member's maps of classes it does not predict are zeros: each class is divided by its own count.
            count = np.maximum(sum(coverage(self.configs[wd.path]) for wd in having), 1.0)
            probs = np.empty_like(first["probs"])
            for i in range(0, len(probs), _BATCH):
                block = sum(a["probs"][i:i + _BATCH].astype(np.float32) for a in arrays) / count
                probs[i:i + _BATCH] = np.rint(block)
        else:
            kinds = [(wd.path, gate_kind(self.configs[wd.path])) for wd in having]
            gate_rule(kinds)
            by_kind = {}
            for (_, kind), a in zip(kinds, arrays):
                by_kind.setdefault(kind, []).append(a["probs"].astype(np.float64))
            probs = combine_gates(by_kind).astype(np.float32)
        return {**{k: first[k] for k in same}, "probs": probs}

    def _check_rows(self, task, fold, first_wd, wd, first, other, keys):
        a, b = first_wd.oof_path(task, fold), wd.oof_path(task, fold)
        ids, their = first["image_ids"], other["image_ids"]
        if len(ids) != len(their) or not np.array_equal(ids, their):
            at = next((i for i, (x, y) in enumerate(zip(ids.tolist(), their.tolist())) if x != y), None)
            where = f"row {at}: {ids[at]} vs {their[at]}" if at is not None else f"{len(ids)} vs {len(their)} images"
            raise MembersError(f"{a} and {b}: fold {fold}'s out-of-fold images differ ({where}): members must be "
                               "trained on the same shard folder and folds")
        averaged = task == "segment" or gate_kind(self.configs[first_wd.path]) == gate_kind(self.configs[wd.path])
        if averaged and first["probs"].shape != other["probs"].shape:
            what = "gate heads (binary [N, 1], multilabel [N, 4])" if task == "classify" else "OOF maps (oof_scale)"
            raise MembersError(f"{a} and {b}: cannot average {what}: {first['probs'].shape} vs "
                               f"{other['probs'].shape}")
        for key in keys[1:]:
            if not np.array_equal(first[key], other.get(key)):
                raise MembersError(f"{a} and {b}: fold {fold}'s `{key}` differ for the same images: the members' "
                                   "truth must be the same to average their predictions")

    def describe(self):
        """One line: the members and the folds averaged, and any left out."""
        common = self.completed_folds("segment")
        left = self.left_out("segment", common=common)
        extra = "".join(f"; {p} also has fold(s) {f}, not used" for p, f in left.items())
        return (f"ensemble of {len(self.members)} workdirs ({', '.join(self.paths)}): segment folds {common} "
                f"complete in every one, their OOF maps averaged{extra}")


def open_oof(paths):
    """What tune reads out-of-fold data from: a Workdir for one member path, an AveragedOof for several."""
    return Workdir(paths[0]) if len(paths) == 1 else AveragedOof(paths)


def record(paths, *, folds):
    """thresholds.json's "members": per member workdir (`paths`) the (weights path, bytes) of the fold models whose
    OOF data was averaged (`folds`: {task: fold numbers}), paths as `normalized` writes them."""
    recorded = []
    for p in paths:
        wd = Workdir(normalized(p))
        own = {task: use for task, use in folds.items() if task in wd.config().tasks}
        identity = wd.identity(own)
        recorded.append({"workdir": normalized(p),
                         "models": {task: [[w, n] for w, n in ident] for task, ident in identity.items()}})
    return recorded
