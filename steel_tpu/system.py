"""A system: one folder of named member workdirs trained, tuned and scored as one ensemble (seed 000's six models).

```
W/system.json      {"name": preset, "members": [name, ...]}: written before any member trains, by train only
W/<member>/        a training workdir of its own (workdir.py's layout), one per member
W/thresholds.json  the system's tuned thresholds, W/tune/ its plots (tune's; the ensemble of the members)
```

Everywhere a workdir list is read (members.paths), a system folder stands for its members, so tune, predict,
Beam and compare need nothing of their own; `home` is where the ensemble's thresholds go by default.
"""

import json
import os
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


def refuse(folder, *, command):
    """Refuse a system folder where `command` takes one training workdir (a system's kit, rescore and pseudo-labels
    are not built): the message names a member to give instead."""
    if is_system(str(folder)):
        raise SystemFileError(f"{folder} is a system (system.json) of {', '.join(read(folder)[1])}: `steel-tpu "
                              f"{command}` takes one training workdir, not a system of them (e.g. "
                              f"{member_paths(folder)[0]})")


def expand(paths):
    """`paths` (a tuple of workdir paths) with a lone system folder replaced by its members."""
    if len(paths) == 1 and is_system(paths[0]):
        return member_paths(paths[0])
    for path in paths:
        if len(paths) > 1 and is_system(path):
            raise SystemFileError(f"{path} is a system (system.json): give it alone as --workdir, or its members")
    return paths


def home(work):
    """The system folder `work` names (where its thresholds go by default), else None."""
    found = (str(work),) if isinstance(work, (str, os.PathLike)) else tuple(str(p) for p in work)
    return found[0] if len(found) == 1 and is_system(found[0]) else None
