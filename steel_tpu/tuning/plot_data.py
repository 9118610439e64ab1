"""tune/plot_data.npz: the few MB of search results tune's plots are drawn from, so report redraws them unsearched."""

import io

import numpy as np

from steel_tpu import storage
from steel_tpu.constants import NUM_CLASSES
from steel_tpu.tuning import oof_stats

PLOT_DATA = "plot_data.npz"  # in the workdir's tune/: what tune's plots are drawn from, so report redraws them without a search
PLOT_FILES = ("dice_vs_pixel_threshold.png", "dice_vs_min_area.png", "dice_vs_gate.png", "area_histograms.png")
_PLOT_KEYS = ("dice", "pixel_grid", "area_grid", "gate_grid", "chosen", "gate_head", "truth_area", "raw_area",
              "submitted_area")


def arrays(stats, tables, chosen, *, kind, gates, pixel_grid, area_grid, marked=None):
    """The arrays tune's plots are drawn from (a few MB at most): mean Dice tables, grids, choices, mask areas.
    The plots circle `marked` (default `chosen`): for a class gain.switch_off switched off, its best setting."""
    marked = marked or chosen
    gate = marked.gate * NUM_CLASSES if len(marked.gate) == 1 else marked.gate or (0.0,) * NUM_CLASSES
    chosen_index = [[list(gates).index(g) for g in gate], [list(pixel_grid).index(t) for t in marked.pixel_threshold],
                    [list(area_grid).index(a) for a in marked.min_area]]
    n = len(stats.image_ids)
    presence, _ = oof_stats.counts_at(stats, chosen.image_levels(stats.class_probs, n=n))
    drawn, _ = oof_stats.counts_at(stats, chosen.mask_levels(stats.class_probs, n=n))
    raw = presence * stats.scale ** 2  # full-resolution areas min area reads, before min area and gate
    return {"dice": tables / len(stats.image_ids), "pixel_grid": np.asarray(pixel_grid, np.float64),
            "area_grid": np.asarray(area_grid, np.int64), "gate_grid": np.asarray(gates, np.float64),
            "chosen": np.asarray(chosen_index, np.int64), "off": np.asarray(chosen.off),
            "gate_head": np.asarray(kind or "none"), "truth_area": stats.truth_area, "raw_area": raw,
            "submitted_area": drawn * stats.scale ** 2 * chosen.keep(raw, stats.class_probs)}


def save(folder, data):
    """Write arrays()' output to `folder`/PLOT_DATA (compressed npz, atomic; local or gs://)."""
    buf = io.BytesIO()
    np.savez_compressed(buf, **data)
    storage.write_bytes(storage.join(folder, PLOT_DATA), buf.getvalue())


def load(folder):
    """arrays() saved under `folder`, or None when tune (or a version before it wrote them) left none."""
    path = storage.join(folder, PLOT_DATA)
    if not storage.exists(path):
        return None
    try:
        with np.load(io.BytesIO(storage.read_bytes(path))) as npz:
            data = {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: not tune's plot data ({error}); run `steel-tpu tune` again") from None
    missing = [k for k in _PLOT_KEYS if k not in data]
    if missing:
        raise ValueError(f"{path}: not tune's plot data (missing {missing}); run `steel-tpu tune` again")
    return data
