"""`--set key=value` overrides, and a Config to and from its dict and JSON forms (config.json's content)."""

import dataclasses
import json

from steel_tpu.config import fields
from steel_tpu.config.schema import TASKS, Config

def _set(values, cls, path, text, *, item):
    """Put the parsed `text` at `path` of the dict form `values` of dataclass `cls`."""
    head, rest = path[0], path[1:]
    if head not in {f.name for f in dataclasses.fields(cls)}:
        raise ValueError(f"--set {item}: no config key {head!r} in {cls.__name__}")
    hint = fields.hint(cls, head)
    if rest:
        if not dataclasses.is_dataclass(hint):
            raise ValueError(f"--set {item}: {head!r} has no keys below it")
        _set(values[head], hint, rest, text, item=item)
    elif dataclasses.is_dataclass(hint):
        raise ValueError(f"--set {item}: {head!r} is a section; set one of its keys")
    else:
        values[head] = fields.parse(text, hint)


def apply_overrides(cfg, overrides):
    """A validated copy of `cfg` with `key.path=value` strings applied, e.g. `segment.train.epochs=5`.

    Validated once all are applied, so their order does not matter (arch and encoder change together)."""
    values, given = to_dict(cfg), set()
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep:
            raise ValueError(f"--set {item}: expected key=value")
        _set(values, Config, key.strip().split("."), text, item=item)
        given.add(key.strip())
    for task in TASKS:
        # The two batch keys are alternatives: setting one (and not the other) replaces the preset's choice.
        for key, other in (("batch_size", "batch_per_replica"), ("batch_per_replica", "batch_size")):
            if f"{task}.data.{key}" in given and f"{task}.data.{other}" not in given \
                    and values[task]["data"][key] is not None:
                values[task]["data"][other] = None
    try:
        return from_dict(values)
    except ValueError as error:
        raise ValueError(f"--set {error}") from None


# config.json's format: 2 since the classifier and the segmenter have configs of their own. Files of format 1 (no
# "format" key) come from versions never released: refused in one line, never migrated.
FORMAT = 2


def to_dict(cfg):
    return dataclasses.asdict(cfg)


def to_json(cfg):
    """config.json's text: the format, then every key of `cfg`."""
    return json.dumps({"format": FORMAT, **to_dict(cfg)}, indent=2, sort_keys=True)


def from_json_doc(doc):
    """The Config a parsed config.json holds; a file of another format is refused in one line."""
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        found = doc.get("format") if isinstance(doc, dict) else None
        raise ValueError(f"config format {found!r}, this steel_tpu reads format {FORMAT} (a workdir written before "
                         "0.1.0 was released): train it again into a new --workdir")
    return from_dict({k: v for k, v in doc.items() if k != "format"})


def _build(cls, values, *, where):
    if not isinstance(values, dict):
        raise ValueError(f"{where or 'config'}: expected an object, got {values!r}")
    names = [f.name for f in dataclasses.fields(cls)]
    unknown, missing = sorted(set(values) - set(names)), [n for n in names if n not in values]
    if unknown or missing:
        raise ValueError(f"{where or 'config'}: " + "; ".join(
            part for part in (unknown and f"unknown keys {unknown}", missing and f"missing keys {missing}") if part))
    kwargs = {}
    for name in names:
        sub, value = fields.hint(cls, name), values[name]
        if dataclasses.is_dataclass(sub):
            value = _build(sub, value, where=f"{where}{name}.")
        elif name == "oversample" and isinstance(value, dict):
            value = {int(k) if str(k).isdigit() else k: n for k, n in value.items()}  # JSON keys are strings
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except ValueError as error:
        raise ValueError(f"{where}{error}") from None


def from_dict(d):
    """A validated Config from `to_dict` output (JSON turns tuples into lists and int keys into strings); unknown
    or missing keys are errors naming them."""
    return _build(Config, d, where="")
