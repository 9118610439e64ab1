"""A system: one folder of named member workdirs trained, tuned and scored as one ensemble (seed 000's six models).

```
W/system.json      {"name": preset, "members": [name, ...]}: written before any member trains, by train only
W/<member>/        a training workdir of its own (workdir.py's layout), one per member
W/thresholds.json  the system's tuned thresholds, W/tune/ its plots (tune's; the ensemble of the members)
```

A system folder given as --workdir is a model source of its members (scoring.source.ModelSource), so tune,
predict, rescore, pseudo, export, Beam and compare need nothing of their own; its folder is where the ensemble's
thresholds go by default.
"""

import json
import re

from steel_tpu import storage

SYSTEM = "system.json"
_NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}")  # a member's folder name: never a path or a pattern


class SystemFileError(ValueError):
    """A system.json that cannot be used; the message names the file."""


def path_of(folder):
    return storage.join(str(folder), SYSTEM)


def is_system(folder):
    """True when `folder` (a path, not a list) holds a system.json."""
    return isinstance(folder, str) and storage.exists(path_of(folder))


def check_names(names, *, where):
    """`names` as a tuple of distinct member folder names, or SystemFileError naming `where`."""
    names = tuple(names)
    bad = [n for n in names if not isinstance(n, str) or not _NAME.fullmatch(n)]
    if not names or bad or len(set(names)) != len(names):
        raise SystemFileError(f"{where}: members must be distinct names of lowercase letters, digits, - and _ "
                              f"(got {list(names)!r})")
    return names


def read(folder):
    """(preset name, member names) of the system at `folder`."""
    where = path_of(folder)
    try:
        doc = json.loads(storage.read_text(where))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise SystemFileError(f"{where}: not a valid system file (bad JSON: {error})") from None
    if not isinstance(doc, dict) or set(doc) != {"name", "members"} or not isinstance(doc["members"], list):
        raise SystemFileError(f"{where}: not a valid system file (expected {{\"name\": ..., \"members\": [...]}})")
    return str(doc["name"]), check_names(doc["members"], where=where)


def member_paths(folder):
    """The member workdirs of the system at `folder`, in system.json's order."""
    return tuple(storage.join(str(folder), name) for name in read(folder)[1])


def claim(folder, *, name, members):
    """Write system.json for preset `name` of `members` ({member: Config}) into `folder`, refusing a folder that is
    a training workdir already or a system of other members: a rerun of the same system resumes it."""
    where = path_of(folder)
    names = check_names(members, where=where)
    if storage.exists(storage.join(str(folder), "config.json")):
        raise SystemFileError(f"{folder}: a training workdir already (config.json); a system of {', '.join(names)} "
                           "needs a folder of its own")
    if storage.exists(where):
        found = read(folder)
        if found != (name, names):
            raise SystemFileError(f"{where}: the system {found[0]} of {', '.join(found[1])}, not {name} of "
                               f"{', '.join(names)}; give another --workdir")
        return
    storage.makedirs(str(folder))
    storage.write_text(where, json.dumps({"name": name, "members": list(names)}, indent=2) + "\n")
