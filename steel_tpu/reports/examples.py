"""The report's best and worst validation images: read from the shard folder, drawn with their maps and truth."""

import io

import numpy as np
from PIL import Image

from steel_tpu.constants import CLASS_IDS
from steel_tpu.data import example
from steel_tpu.data.shard_folder import ShardFolder, read_records
from steel_tpu.reports import figures
from steel_tpu.reports.page import Section


def read_images(data, wanted):
    """{image id: uint8 [height, width] grayscale} for `wanted` ({fold: ids}), read from that fold's shards."""
    folder = ShardFolder.open(data, split="train").check()
    images = {}
    for fold, ids in wanted.items():
        for rec in read_records(folder.files(folds=[fold]), image_ids=ids):
            images[rec[example.IMAGE_ID]] = np.asarray(Image.open(io.BytesIO(rec[example.IMAGE])).convert("L"))
        todo = set(ids) - set(images)
        if todo:
            raise ValueError(f"{data}: no fold-{fold} shard holds {sorted(todo)}, which the workdir's fold-{fold} "
                             "OOF data names; was it trained on other shards?")
    return images


def section(seg, data):
    """The report's section of the best and worst validation images (`data`: the shard folder, or None)."""
    section = Section("Best and worst validation images")
    if seg is None:
        section.note("No completed segment folds, so no OOF maps to show.")
        return section
    chosen = seg.examples()
    images = {}
    if data is not None:
        wanted = {}
        for _, c in chosen:
            wanted.setdefault(c["fold"], []).append(c["image_id"])
        images = read_images(data, wanted)
    examples = [dict(title=_title(kind, c), probs=c["probs"], truth=c["truth"],
                     image=images.get(c["image_id"])) for kind, c in chosen]
    kinds = [kind for kind, _ in chosen]
    backdrop = "over the image" if data is not None else "alone (pass --shards SHARDS to see the images under them)"
    section.figure("examples.png", figures.prediction_grid(examples),
                   f"The {kinds.count('best')} best (among images with a defect) and {kinds.count('worst')} "
                   f"worst OOF images by mean Dice over the 4 classes: probability maps (opacity rising from "
                   f"p = {figures.OVERLAY_FLOOR:g} to 1) {backdrop}, truth outlined, one colour per class.")
    section.table(["", "image", "fold", *[f"class {c}" for c in CLASS_IDS], "mean"],
                  [[kind, c["image_id"], c["fold"], *map(float, c["dice"]), float(c["dice"].mean())]
                   for kind, c in chosen])
    return section


def _title(kind, c):
    per_class = "  ".join(f"c{cid} {d:.2f}" for cid, d in zip(CLASS_IDS, c["dice"]))
    truth = "defect" if c["has_defect"] else "clean"
    return f"{kind}: {c['image_id']} (fold {c['fold']}, {truth})  mean Dice {c['dice'].mean():.3f}  [{per_class}]"
