"""A Kaggle submission written as committed part files beside its final name, resumable, published atomically.

```
DST.csv.parts/plan.json          what the parts belong to (a digest of images, models, post-processing)
DST.csv.parts/part-00000.csv     rows of chunk 0 (no header), each written atomically
DST.csv                          header + every part in chunk order, published in one atomic write
DST.csv.errors.csv               the images `--skip-bad` left out and why (only when there are any)
```
These are the only files predict writes or deletes; a parts folder holding any other file is refused by name.
"""

import hashlib
import io
import json
import os
import re

from steel_tpu import storage
from steel_tpu.constants import CLASS_IDS
from steel_tpu.formats import outputs
from steel_tpu.formats.kaggle import SUBMISSION_HEADER, csv_reader, submission_rows

PLAN = "plan.json"
_PART = re.compile(r"part-\d{5,}\.csv")


def parts_dir(out):
    return str(out) + ".parts"


def errors_path(out):
    return str(out) + ".errors.csv"


def _ours(name):
    return name == PLAN or bool(_PART.fullmatch(name))


def claim(out):
    """Check every output location before any work, then remove the previous run's submission and error list.

    OUT and OUT.errors.csv must be files in a writable folder, OUT.parts may hold only part files and the plan
    (else refused by name, nothing changed). The old OUT goes at the start: it is this command's own output, and a
    run that fails later must not leave it looking like its result.
    """
    outputs.check_file(out)
    outputs.check_file(errors_path(out), flag="--out's error list")
    found = outputs.claim_folder(parts_dir(out), ours=_ours, command="predict", flag="--out's parts folder")
    outputs.remove_temps(parts_dir(out), found, ours=_ours)
    storage.remove(str(out))
    storage.remove(errors_path(out))


def _plan_digest(path):
    """The digest a previous run recorded in its plan file, or None when the file is unreadable (the plan is
    predict's own: an unreadable one means starting over, not an error)."""
    try:
        doc = json.loads(storage.read_text(path))
    except (ValueError, UnicodeDecodeError):
        return None
    return doc.get("digest") if isinstance(doc, dict) else None


def _part(out, index):
    return storage.join(parts_dir(out), f"part-{index:05d}.csv")


class ChunkedSubmission:
    """Part files of one plan: committed chunks survive a crash; a different plan starts over."""

    def __init__(self, out, *, plan):
        self.out = str(out)
        self.digest = hashlib.sha256(json.dumps(plan, sort_keys=True).encode()).hexdigest()
        plan_path = storage.join(parts_dir(out), PLAN)
        if storage.exists(plan_path) and _plan_digest(plan_path) != self.digest:
            stale = self._part_files()
            print(f"predict: {len(stale)} committed chunk(s) in {parts_dir(out)} belong to another run "
                  f"(other images, models or settings): starting over")
            for path in stale:
                storage.remove(path)
        storage.write_text(plan_path, json.dumps({"digest": self.digest, "out": self.out}) + "\n")

    def _part_files(self):
        # A literal listing filtered by name: the user's output path is never a glob pattern.
        names = storage.list_files(parts_dir(self.out))
        return sorted(storage.join(parts_dir(self.out), n) for n in names if _PART.fullmatch(n))

    def committed(self):
        """Indices of the chunks whose part file exists (each was written atomically: complete)."""
        names = (os.path.basename(p) for p in self._part_files())
        return {int(n.removeprefix("part-").removesuffix(".csv")) for n in names}

    def commit(self, index, rows):
        """Write chunk `index`: `rows` is a list of (image id, one RLE per class)."""
        storage.write_text(_part(self.out, index), submission_rows(rows))

    def finish(self, num_chunks):
        """Publish header + parts 0..num_chunks-1 as the final CSV (atomically), then drop the parts."""
        seen = set()
        with storage.atomic_write(self.out, "wb") as f:
            f.write(SUBMISSION_HEADER.encode())
            for index in range(num_chunks):
                data = storage.read_bytes(_part(self.out, index))
                for row in csv_reader(io.StringIO(data.decode())):
                    key = (row[0], row[2])
                    if key in seen:
                        raise RuntimeError(f"{_part(self.out, index)}: image {row[0]} class {row[2]} written twice")
                    seen.add(key)
                f.write(data)
        for path in self._part_files() + [storage.join(parts_dir(self.out), PLAN)]:
            storage.remove(path)
        # Only an empty folder goes: a file someone put there since the claim is theirs.
        if not storage.is_gcs(self.out) and os.path.isdir(parts_dir(self.out)) and not os.listdir(parts_dir(self.out)):
            os.rmdir(parts_dir(self.out))
        return len(seen) // len(CLASS_IDS)
