"""Probability maps to masks: full-resolution uint8 maps on the device, thresholds and areas on the host.

Validation, out-of-fold predictions, tuning and scoring all go through these functions, so a threshold tuned on
out-of-fold predictions means the same thing when `predict` applies it.
"""

from dataclasses import asdict, dataclass, fields, replace

import numpy as np

from steel_tpu.constants import HEIGHT, NUM_CLASSES, WIDTH

QUANT = 255.0  # probabilities travel as uint8: a quarter of the device-to-host bytes of float32
OFF = 1.0  # a pixel threshold no uint8 map exceeds (q > 255 never holds): the class is never submitted


def is_off(threshold):
    """Whether a class with this pixel threshold is switched off (never submitted)."""
    return threshold >= OFF


def to_full_resolution(probs, *, height=HEIGHT, width=WIDTH):
    """[B, h, w, C] probabilities -> [B, height, width, C] uint8 (p * 255, rounded half to even), on the device
    (Keras ops: TensorFlow or JAX)."""
    from steel_tpu.keras_api import ops  # here, not at the top: tune and evaluate use this module without Keras

    full = ops.image.resize(ops.cast(probs, "float32"), (height, width), interpolation="bilinear")
    return ops.cast(ops.round(ops.clip(full, 0.0, 1.0) * QUANT), "uint8")


def levels(thresholds):
    """uint8 levels L such that `q > L` on uint8 maps q is exactly `q > threshold * 255` (thresholds in 0..1)."""
    thresholds = np.asarray(thresholds, dtype=np.float32)
    if np.any(~(thresholds >= 0.0) | ~(thresholds <= 1.0)):
        raise ValueError(f"pixel thresholds must be in 0..1, got {thresholds.tolist()}")
    # q is an integer, so q > x <=> q > floor(x): the comparison stays in uint8 (no float copy of 1.6 M px/image).
    return np.floor(thresholds * QUANT).astype(np.uint8)


def binarize(quantized, thresholds):
    """uint8 probability maps [..., C] -> bool masks, with one threshold (in 0..1) per class or one for all."""
    return np.asarray(quantized) > levels(thresholds)


def _level_rule(thresholds, soft_gate, class_probs, *, clip, floor):
    """floor(clip(t + (1 - p) * k, 0, 1) * 255): the level of soft gating, written once for numpy and the device
    (float32 in the same operation order on both), so tune and predict cut at the same level."""
    return floor(clip(thresholds + (1.0 - class_probs) * soft_gate, 0.0, 1.0) * QUANT)


def soft_levels(thresholds, soft_gate, class_probs):
    """uint8 [N, C] per-image levels of soft gating: threshold t + (1 - p) * k (clipped to 0..1) per image and
    class, p the gating probability ([N, 1] from a binary head applies to every class, [N, C] per class)."""
    levels(thresholds)  # range check of the base thresholds
    t, k = np.asarray(thresholds, np.float32), np.asarray(soft_gate, np.float32)
    return _level_rule(t, k, np.asarray(class_probs, np.float32), clip=np.clip, floor=np.floor).astype(np.uint8)


def threshold_maps(quantized, pp, class_probs=None):
    """Host twin of to_masks: uint8 maps [N, H, W, C] -> (bool masks drawn at `pp`'s mask levels, int64 [N, C]
    pixels above its presence levels), at the maps' resolution."""
    n, q = len(quantized), np.asarray(quantized)
    lower = pp.mask_levels(class_probs, n=n)[:, None, None, :]
    upper = pp.image_levels(class_probs, n=n)[:, None, None, :]
    return q > lower, (q > upper).sum(axis=(1, 2), dtype=np.int64)


def to_masks(quantized, pp, *, class_probs=None):
    """In the graph: uint8 maps [B, H, W, C] -> (bool masks, int32 [B, C] pixel counts), threshold_maps' rule: masks
    drawn at `pp`'s mask (lower) levels, counts above its presence (upper) levels; soft-gate levels are computed on
    the device from `class_probs` [B, heads]. A single-threshold `pp` draws and counts at one level."""
    from steel_tpu.keras_api import ops  # see to_full_resolution

    def level(thresholds):
        if not pp.soft_gate:
            return ops.convert_to_tensor(levels(thresholds), "uint8")
        t = ops.convert_to_tensor(np.asarray(thresholds, np.float32))
        k = ops.convert_to_tensor(np.asarray(pp.soft_gate, np.float32))
        rule = _level_rule(t, k, ops.cast(class_probs, "float32"), clip=ops.clip, floor=ops.floor)
        return ops.cast(rule, "uint8")[:, None, None, :]

    upper = level(pp.pixel_threshold)
    masks = quantized > (level(pp.mask_threshold) if pp.mask_threshold else upper)
    above = masks if not pp.mask_threshold else quantized > upper
    return masks, ops.sum(ops.cast(above, "int32"), axis=(1, 2))


def downsample(quantized, *, scale):
    """Block-mean [N, H, W, C] uint8 maps by an integer `scale` (compact out-of-fold storage)."""
    n, h, w, c = quantized.shape
    if h % scale or w % scale:
        raise ValueError(f"scale {scale} does not divide the {h}x{w} maps")
    blocks = quantized.reshape(n, h // scale, scale, w // scale, scale, c).astype(np.float32)
    return np.round(blocks.mean(axis=(2, 4))).astype(np.uint8)


def area_kept(areas, min_area):
    """Masks whose full-resolution pixel count reaches the minimum area survive (numpy broadcasting)."""
    return np.asarray(areas) >= np.asarray(min_area)


def gate_kept(class_probs, gate):
    """Masks whose classifier probability reaches the gate survive; a gate of 0 passes everything."""
    return np.asarray(class_probs) >= np.asarray(gate)


@dataclass(frozen=True)
class PostProcess:
    """Probability maps -> submitted masks: per-class pixel threshold (raised by the soft gate), minimum component
    size, minimum area and classifier gate, in that order.

    `mask_threshold` is () for one threshold, or seed 004's double threshold: one lower threshold per class, each
    <= its pixel_threshold. Then the pixels above pixel_threshold (the upper one) are counted against min_area
    to decide whether the class is present, and a present class's mask is the pixels above mask_threshold. A
    lower threshold equal to the upper one IS the single threshold: such a mask_threshold is stored as (). A
    soft gate raises both thresholds by the same (1 - p) * k.

    `gate` is () for none, (t,) for a binary head (p_any < t empties the whole image), or one threshold per
    class for a multilabel head. `tune` chooses these on out-of-fold data with the same rules (levels,
    area_kept, gate_kept) that `predict` applies: `to_masks` on the device, then on the host `filter` (only
    when a min_component is set: 8-connected components under it are dropped, and areas are counted after) and
    `keep`. `soft_gate` is () for none or one k in 0..1 per class: image i's threshold for class c is
    t_c + (1 - p_ic) * k_c (soft_levels), p the gating probabilities the hard gate reads.
    """

    pixel_threshold: tuple = (0.5,) * NUM_CLASSES
    min_area: tuple = (0,) * NUM_CLASSES
    gate: tuple = ()
    min_component: tuple = (0,) * NUM_CLASSES  # full-resolution pixels; 0: no component filtering
    soft_gate: tuple = ()
    mask_threshold: tuple = ()

    def __post_init__(self):
        # Strict: a hand-edited "0.5", true or 600.5 would otherwise become some other setting without a word.
        for name in _FIELDS:
            values = getattr(self, name)
            if not isinstance(values, (list, tuple, np.ndarray)) or not all(_finite_number(v) for v in values):
                raise ValueError(f"PostProcess.{name} must be a list of finite numbers, got {values!r}")
            if name in ("min_area", "min_component") and not all(float(v).is_integer() for v in values):
                raise ValueError(f"PostProcess.min_area must be whole pixel counts, got {values!r}")
        object.__setattr__(self, "pixel_threshold", tuple(float(t) for t in self.pixel_threshold))
        object.__setattr__(self, "min_area", tuple(int(a) for a in self.min_area))
        object.__setattr__(self, "gate", tuple(float(t) for t in self.gate))
        object.__setattr__(self, "min_component", tuple(int(a) for a in self.min_component))
        # All zeros is no soft gate: stored as () so predict need not load the classifiers for it.
        object.__setattr__(self, "soft_gate", tuple(float(k) for k in self.soft_gate) if any(self.soft_gate) else ())
        # The identity: a lower threshold equal to the upper one is the single threshold, stored as such.
        lower = tuple(float(t) for t in self.mask_threshold)
        object.__setattr__(self, "mask_threshold", () if lower == self.pixel_threshold else lower)
        if NUM_CLASSES != len(self.pixel_threshold) or {len(self.min_area), len(self.min_component)} != {NUM_CLASSES}:
            raise ValueError(f"PostProcess needs {NUM_CLASSES} pixel thresholds, min areas and min components, "
                             f"got {self}")
        levels(self.pixel_threshold)
        if min(self.min_area) < 0 or min(self.min_component) < 0:
            raise ValueError(f"PostProcess.min_area and min_component must be >= 0, got {self}")
        if len(self.gate) not in (0, 1, NUM_CLASSES) or not all(0.0 <= t <= 1.0 for t in self.gate):
            raise ValueError(f"PostProcess.gate must be (), one or {NUM_CLASSES} values in 0..1, got {self.gate}")
        if len(self.soft_gate) not in (0, NUM_CLASSES) or not all(0.0 <= k <= 1.0 for k in self.soft_gate):
            raise ValueError(f"PostProcess.soft_gate must be () or {NUM_CLASSES} values in 0..1, got {self.soft_gate}")
        if self.mask_threshold:
            if len(self.mask_threshold) != NUM_CLASSES or not all(
                    0.0 <= low <= up for low, up in zip(self.mask_threshold, self.pixel_threshold)):
                raise ValueError(f"PostProcess.mask_threshold must be () or {NUM_CLASSES} values in 0..1, each <= its "
                                 f"pixel_threshold {list(self.pixel_threshold)}, got {list(self.mask_threshold)}")
            if self.filters_components:
                # Component filtering recounts areas from the drawn masks; under a double threshold presence is
                # counted above the upper threshold, so the two rules would disagree on what min_area reads.
                raise ValueError("PostProcess.mask_threshold (double threshold) cannot be combined with "
                                 f"min_component, got min_component {list(self.min_component)}")

    @classmethod
    def from_dict(cls, d):
        # Thresholds files from before component filtering, soft gating or the double threshold have no
        # min_component / soft_gate / mask_threshold: none.
        return cls(**{k: d[k] for k in _FIELDS if k in d})

    def to_dict(self):
        return {k: list(v) for k, v in asdict(self).items()}

    @property
    def filters_components(self):
        return any(self.min_component)

    @property
    def off(self):
        """Per class: switched off (pixel threshold OFF), never submitted."""
        return tuple(is_off(t) for t in self.pixel_threshold)

    @property
    def needs_classifier(self):
        return bool(self.gate or self.soft_gate)

    @property
    def tasks(self):
        """The models scoring with this needs: the classifiers only gate, and without a gate they would cost
        device time and change nothing."""
        return ("classify", "segment") if self.needs_classifier else ("segment",)

    @property
    def lower(self):
        """The per-class threshold masks are drawn at: mask_threshold under a double threshold, else pixel_threshold."""
        return self.mask_threshold or self.pixel_threshold

    def mask_levels(self, class_probs, *, n):
        """uint8 [n, C]: the level each image's class mask is drawn at (`q > level`), soft gate included."""
        if not self.mask_threshold:
            return self.image_levels(class_probs, n=n)
        single = PostProcess(pixel_threshold=self.mask_threshold, soft_gate=self.soft_gate)
        return single.image_levels(class_probs, n=n)

    def image_levels(self, class_probs, *, n):
        """uint8 [n, C]: the level above which each image's class pixels are counted against min_area (`q >
        level`), soft gate included; with one threshold also the level its mask is drawn at."""
        if not self.soft_gate:
            return np.broadcast_to(levels(self.pixel_threshold), (n, NUM_CLASSES))
        if class_probs is None:
            raise ValueError("this post-processing soft-gates on a classifier, but no classifier probabilities "
                             "were given")
        return soft_levels(self.pixel_threshold, self.soft_gate, class_probs)

    def filter(self, masks, *, scale=1):
        """(bool masks [N, H, W, C] without components under min_component, int64 [N, C] full-resolution areas)
        of masks at full resolution / `scale` (tune scores OOF maps with scale 4)."""
        from steel_tpu import components  # scipy only when filtering

        masks = components.remove_small(masks, components.scaled(self.min_component, scale=scale))
        return masks, masks.sum(axis=(1, 2), dtype=np.int64) * scale ** 2

    def keep(self, areas, class_probs=None):
        """bool [N, C]: which thresholded masks (full-resolution pixel counts `areas`) are submitted."""
        kept = area_kept(areas, self.min_area)
        if self.gate:
            if class_probs is None:
                raise ValueError("this post-processing gates on a classifier, but no classifier probabilities "
                                 "were given")
            probs = np.asarray(class_probs)
            if probs.shape[-1] != len(self.gate):
                raise ValueError(f"gate has {len(self.gate)} threshold(s) but the classifier gives "
                                 f"{probs.shape[-1]} probabilities per image")
            kept = kept & gate_kept(probs, self.gate)
        return kept


_FIELDS = tuple(f.name for f in fields(PostProcess))


def switched_off(pp, classes):
    """`pp` with `classes` never submitted: their thresholds OFF and their own min area, min component, soft gate
    and (multilabel) gate cleared, so an off class neither shows settings it does not use nor loads a classifier."""
    def cleared(values, value):
        return tuple(value if c in classes else v for c, v in enumerate(values))

    if not classes:
        return pp
    gate = cleared(pp.gate, 0.0) if len(pp.gate) == NUM_CLASSES else pp.gate
    return replace(pp, pixel_threshold=cleared(pp.pixel_threshold, OFF), min_area=cleared(pp.min_area, 0),
                   min_component=cleared(pp.min_component, 0), gate=gate if any(gate) else (),
                   soft_gate=cleared(pp.soft_gate, 0.0) if pp.soft_gate else (),
                   mask_threshold=cleared(pp.mask_threshold, OFF) if pp.mask_threshold else ())


def _finite_number(value):
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool) \
        and np.isfinite(value)
