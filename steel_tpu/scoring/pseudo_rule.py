"""The confidence rule of pseudo-labels: keep an image only where the classifier and the segmenter agree, per class.

For each class c of an image, with p_c the classifier's gating probability and a_c the pixel count of the
segmenter's thresholded mask (full resolution, after component filtering):

- confidently present: p_c >= hi and a_c >= max(min_area_c, 1);
- confidently absent:  p_c <= lo and a_c == 0.

An image is kept when every class is one or the other; its pseudo-labels are then exactly its masks (present
classes' masks, empty elsewhere). A binary classifier head (one probability, any defect) judges the image as a
whole: kept when no class has a mask under its minimum area and either p >= hi with some class present, or
p <= lo with every mask empty. Host-only (numpy).
"""

from dataclasses import asdict, dataclass

import numpy as np

from steel_tpu.constants import CLASS_IDS, NUM_CLASSES


@dataclass(frozen=True)
class ConfidenceRule:
    """hi, lo: classifier probabilities (0 <= lo < hi <= 1); min_area: full-resolution pixels per class."""

    hi: float = 0.9
    lo: float = 0.1
    min_area: tuple = (1,) * NUM_CLASSES

    def __post_init__(self):
        for name in ("hi", "lo"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ValueError(f"confidence rule: {name}={value!r} must be a number in [0, 1]")
        if not self.lo < self.hi:
            raise ValueError(f"confidence rule: lo={self.lo} must be below hi={self.hi} (a probability between "
                             "them is not confident either way)")
        areas = tuple(self.min_area)
        if len(areas) != NUM_CLASSES or not all(isinstance(a, (int, np.integer)) and not isinstance(a, bool)
                                                and a >= 0 for a in areas):
            raise ValueError(f"confidence rule: min_area={self.min_area!r} must be {NUM_CLASSES} pixel counts >= 0")
        object.__setattr__(self, "hi", float(self.hi))
        object.__setattr__(self, "lo", float(self.lo))
        object.__setattr__(self, "min_area", tuple(int(a) for a in areas))

    def to_dict(self):
        return {**asdict(self), "min_area": list(self.min_area)}

    def judge(self, probs, areas):
        """(bool [N] kept, [N] reasons: None for a kept image, else why it was dropped) of images whose gating
        probabilities are `probs` [N, heads] (heads 1 or NUM_CLASSES) and mask areas `areas` [N, NUM_CLASSES]."""
        probs, areas = np.asarray(probs, np.float64), np.asarray(areas, np.int64)
        if probs.ndim != 2 or areas.ndim != 2 or len(probs) != len(areas) or areas.shape[1] != NUM_CLASSES \
                or probs.shape[1] not in (1, NUM_CLASSES):
            raise ValueError(f"confidence rule: probabilities {probs.shape} and areas {areas.shape} must be "
                             f"[N, 1 or {NUM_CLASSES}] and [N, {NUM_CLASSES}]")
        need = np.maximum(np.asarray(self.min_area), 1)
        present, empty = areas >= need, areas == 0
        if probs.shape[1] == NUM_CLASSES:
            agree = ((probs >= self.hi) & present) | ((probs <= self.lo) & empty)
            kept = agree.all(axis=1)
            reasons = [None if k else self._class_reason(p, a, need, int(np.argmin(g)))
                       for k, p, a, g in zip(kept, probs, areas, agree)]
        else:
            p = probs[:, 0]
            clear = (present | empty).all(axis=1)
            kept = clear & (((p >= self.hi) & present.any(axis=1)) | ((p <= self.lo) & empty.all(axis=1)))
            reasons = [None if k else self._image_reason(q, a, need) for k, q, a in zip(kept, p, areas)]
        return kept, reasons

    def _class_reason(self, p, a, need, c):
        """Why class c (the first that disagrees) drops an image."""
        name = f"class {CLASS_IDS[c]}: probability {p[c]:.3f}"
        if self.lo < p[c] < self.hi:
            return f"{name} between lo {self.lo:g} and hi {self.hi:g}"
        if p[c] >= self.hi:
            return f"{name} >= hi {self.hi:g} but a mask of {a[c]} px (< {need[c]})"
        return f"{name} <= lo {self.lo:g} but a mask of {a[c]} px"

    def _image_reason(self, p, a, need):
        name = f"any-defect probability {p:.3f}"
        small = [c for c in range(NUM_CLASSES) if 0 < a[c] < need[c]]
        if small:
            c = small[0]
            return f"class {CLASS_IDS[c]}: a mask of {a[c]} px under its minimum area {need[c]}"
        if self.lo < p < self.hi:
            return f"{name} between lo {self.lo:g} and hi {self.hi:g}"
        if p >= self.hi:
            return f"{name} >= hi {self.hi:g} but no mask"
        return f"{name} <= lo {self.lo:g} but masks of {a.tolist()} px"
