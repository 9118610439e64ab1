"""thresholds.json: the post-processing `predict` applies and tune's record of how it chose it; one reader, one writer.

```
{"pixel_threshold": [4], "min_area": [4], "gate": [] | [1] | [4],          the rule (postprocess.PostProcess)
 "min_component": [4], "soft_gate": [] | [4], "mask_threshold": [] | [4],  optional rules (absent: off)
 "gate_head", "dice_before", "dice_after", ..., "members"}                  tune's record (RECORD_KEYS)
```
Written by `tune` (and copied into a kit by `export`); read by predict, rescore, pseudo, export, report and compare
through `read`, never parsed anywhere else. "members" (an ensemble's) lists each member workdir and the (weights
path, bytes) of the fold models whose out-of-fold maps were averaged: what predict checks an ensemble against.
"""

import dataclasses
import json

import numpy as np

from steel_tpu import postprocess, storage
from steel_tpu.constants import CLASS_IDS, NUM_CLASSES

FILE = "thresholds.json"
RULE_KEYS = ("pixel_threshold", "min_area", "gate")
# Rules added later: a file from before them (no key) means the rule is off.
OPTIONAL_RULE_KEYS = ("min_component", "soft_gate", "mask_threshold")
RECORD_KEYS = ("gate_head", "dice_before", "dice_after", "dice_before_full_resolution", "n_images", "folds",
               "oof_scale", "grid", "dice_all_empty", "defect_hit_rate", "gain_over_empty", "min_gain",
               "switched_off", "fold_stability", "warnings", "members")


class ThresholdsError(ValueError):
    """A thresholds file that cannot be used; the message names the file."""


@dataclasses.dataclass(frozen=True)
class Thresholds:
    """A thresholds.json as read: its post-processing, tune's record (RECORD_KEYS it holds) and where it came from
    (None: a rule made in code, tuned for nothing in particular)."""

    postprocess: postprocess.PostProcess
    record: dict
    path: str | None = None

    def __post_init__(self):
        unknown = sorted(set(self.record) - set(RECORD_KEYS))
        if unknown:
            raise ThresholdsError(f"{self.path or 'thresholds'}: unknown record key(s) {unknown}")

    @property
    def members(self):
        """[(workdir, {weights path: bytes})] of the ensemble tune averaged, or None (tuned for one workdir)."""
        if "members" not in self.record:
            return None
        try:
            return [(str(m["workdir"]), {str(p): int(n) for ident in m["models"].values() for p, n in ident})
                    for m in self.record["members"]]
        except (KeyError, TypeError, ValueError, AttributeError):
            raise ThresholdsError(f"{self.path}: `members` is not tune's record of the workdirs it averaged") from None

    def to_doc(self):
        """The JSON document: the rule's keys, then the record's."""
        return {**self.postprocess.to_dict(), **self.record}

    def diagnosis(self):
        """Per class, then a "mean" row: tune's OOF Dice at 0.5 and tuned, the Dice of submitting nothing on the same
        images, the share of defect images hit (Dice > 0) and the chosen post-processing. A tuned Dice near the
        all-empty one with few defect images hit is a class not learned, however high the Dice. Files from before
        tune recorded the last two hold None there."""
        pp, before, after = self.postprocess, self.record["dice_before"], self.record["dice_after"]
        empty, hits = self.record.get("dice_all_empty"), self.record.get("defect_hit_rate")
        rows = [{"class": CLASS_IDS[c], "dice_before": before["per_class"][c], "dice_after": after["per_class"][c],
                 "dice_all_empty": empty["per_class"][c] if empty else None,
                 "defect_hit_rate": hits[c] if hits else None,
                 "postprocess": {"pixel_threshold": pp.pixel_threshold[c],
                                 "mask_threshold": pp.mask_threshold[c] if pp.mask_threshold else None,
                                 "min_area": pp.min_area[c], "min_component": pp.min_component[c],
                                 "gate": gate_text(pp.gate, c),
                                 "soft_gate": pp.soft_gate[c] if pp.soft_gate else None}}
                for c in range(NUM_CLASSES)]
        # The hit rate's mean is over the classes that have defect images (a class without any has none to hit).
        known = [h for h in hits or () if h is not None]
        rows.append({"class": "mean", "dice_before": before["mean"], "dice_after": after["mean"],
                     "dice_all_empty": empty["mean"] if empty else None,
                     "defect_hit_rate": float(np.mean(known)) if known else None, "postprocess": None})
        return rows


def gate_text(gate, c):
    """Class c's gate as a report shows it: "none", "p_any ≥ t" (a binary head) or "p ≥ t"."""
    value = (gate[0] if len(gate) == 1 else gate[c]) if gate else 0.0
    if value == 0.0:
        return "none"  # a gate of 0 passes every image
    return f"p_any ≥ {value:g}" if len(gate) == 1 else f"p ≥ {value:g}"


def from_doc(doc, *, where):
    """A Thresholds from a parsed document; a missing or unknown key, or a bad rule, is refused naming `where`.

    Strict: a misspelt `min_areas` would otherwise leave every minimum area at its default without a word."""
    if not isinstance(doc, dict):
        raise ThresholdsError(f"{where}: not a valid thresholds file (a JSON object expected, got "
                              f"{type(doc).__name__})")
    missing = [k for k in RULE_KEYS if k not in doc]
    unknown = sorted(k for k in doc if k not in RULE_KEYS + OPTIONAL_RULE_KEYS + RECORD_KEYS)
    if missing or unknown:
        raise ThresholdsError(f"{where}: not a valid thresholds file: missing key(s) {missing or 'none'}, unknown "
                              f"key(s) {unknown or 'none'} (expected {list(RULE_KEYS)}, optionally "
                              f"{list(OPTIONAL_RULE_KEYS)} and tune's {list(RECORD_KEYS)})")
    try:
        pp = postprocess.PostProcess(**{k: doc[k] for k in RULE_KEYS + OPTIONAL_RULE_KEYS if k in doc})
    except (ValueError, TypeError) as error:
        raise ThresholdsError(f"{where}: not a valid thresholds file: {error}") from None
    found = Thresholds(postprocess=pp, record={k: doc[k] for k in RECORD_KEYS if k in doc}, path=str(where))
    found.members  # a malformed members record is named now, not when predict compares it
    return found


def read(path):
    """The Thresholds in `path` (local or gs://); a missing file is FileNotFoundError, a bad one ThresholdsError."""
    if not storage.exists(path):
        raise FileNotFoundError(f"{path}: no such thresholds file")
    try:
        doc = json.loads(storage.read_text(path))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ThresholdsError(f"{path}: not a valid thresholds file (bad JSON: {error})") from None
    return from_doc(doc, where=path)


def read_if_present(path):
    """`read(path)`, or None where there is no such file (not tuned yet)."""
    return read(path) if storage.exists(path) else None


def write(path, thresholds):
    """Write `thresholds` (a Thresholds) to `path`, atomically."""
    storage.write_text(path, json.dumps(thresholds.to_doc(), indent=2) + "\n")
