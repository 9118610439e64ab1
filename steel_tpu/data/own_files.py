"""What the shard builder owns in its --out: the manifest, the plan and the shards they list (by exact name, never a
pattern); which of them a resumed build keeps, and which it removes."""

import hashlib
import json
import re

from steel_tpu import storage
from steel_tpu.data.manifest import MANIFEST, PLAN, parse_shard_name
from steel_tpu.data.source import SourceError

# storage.atomic_write's local temp file for NAME, left behind only by a killed writer (mkstemp's 8 characters).
_TEMP = re.compile(r"\.tmp-[a-z0-9_]{8}-(.+)")


def claim(out, found, *, split, overwrite):
    """{MANIFEST/PLAN: doc} of a previous build in `out`; refuses a folder holding files this builder did not write.

    `found` is one literal listing of `out` ({name: size}): no character of the user's path is ever a pattern.
    """
    docs, foreign = {}, []
    for name in (MANIFEST, PLAN):
        if name in found:
            doc = _builder_doc(storage.join(out, name))
            if doc is None:
                foreign.append(f"{name} (not one this builder wrote)")
            else:
                docs[name] = doc
    own = recorded(docs) | {MANIFEST, PLAN}
    foreign += [n for n in sorted(found) if n not in own and not _temp_of(n, own)]
    if foreign:
        shown = ", ".join(foreign[:10]) + (f" and {len(foreign) - 10} more" if len(foreign) > 10 else "")
        raise SourceError(f"{out}: holds {len(foreign)} file(s) this shard builder did not write: {shown}; "
                          "nothing was changed: give an empty or new --out (--overwrite replaces only its own files)")
    other = docs.get(MANIFEST, {}).get("split")
    if other not in (None, split) and not overwrite:
        raise SourceError(f"{storage.join(out, MANIFEST)}: {out} holds {other} shards; use another --out or --overwrite")
    return docs


def _builder_doc(path):
    """A manifest or plan this builder wrote (a dict whose shard names are all shard names), else None."""
    try:
        doc = json.loads(storage.read_text(path))
        names = [e["name"] for e in doc["shards"]] + list(doc.get("names", []))
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    return doc if all(isinstance(n, str) and parse_shard_name(n) for n in names) else None


def recorded(docs):
    """Shard names a previous build recorded as its own: the shards of its manifest or plan, and what it planned."""
    return {n for doc in docs.values() for n in [e["name"] for e in doc["shards"]] + doc.get("names", [])}


def _temp_of(name, own):
    m = _TEMP.fullmatch(name)
    return bool(m) and m[1] in own


def previous(docs, plan_sha256):
    """Manifest entries of shards a previous build of the same plan finished: {name: entry}."""
    for name in (PLAN, MANIFEST):
        if docs.get(name, {}).get("plan_sha256") == plan_sha256:
            return {s["name"]: s for s in docs[name]["shards"]}
    return {}


def remove_stale(out, found, *, owned, keep):
    """Remove, by exact name, shards a previous build recorded that this plan does not keep, and temp files of a
    killed writer of ours."""
    for name in found:
        if (name in owned and name not in keep) or _temp_of(name, owned | {MANIFEST, PLAN}):
            storage.remove(storage.join(out, name))


def intact(path, entry):
    if not storage.exists(path) or storage.size(path) != entry["bytes"]:
        return False
    return _file_sha256(path) == entry["sha256"]


def _file_sha256(path, *, chunk=1 << 20):
    digest = hashlib.sha256()
    with storage.open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()
