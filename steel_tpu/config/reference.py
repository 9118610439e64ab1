"""docs/config.md, generated from the schema: every key, its type, its default and what it means (the comment beside
or above it in schema.py). `python -m steel_tpu.config.reference > docs/config.md`; a test checks they agree."""

import dataclasses
import inspect
import io
import sys
import tokenize
import typing

from steel_tpu.config import fields, schema

_HEADER = """# Config reference

Generated from `steel_tpu/config/schema.py` by `python -m steel_tpu.config.reference > docs/config.md` (a test
checks that this file is what it prints). `--set KEY=VALUE` sets any key; a preset (`--config NAME`) sets many;
the defaults below are a bare `Config()`'s, which no preset leaves as they are. `classify.*` and `segment.*` share
the data, augment and train sections; their model sections differ.
"""


def _comments(cls):
    """{field name: the comment on its line, or the comment lines right above it} of dataclass `cls`'s source."""
    source, notes, above = inspect.getsource(cls), {}, []
    lines = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            lines.setdefault(token.start[0], []).append(token.string.lstrip("# ").strip())
    for number, text in enumerate(source.splitlines(), start=1):
        stripped = text.strip()
        if stripped.startswith("#"):
            above.extend(lines.get(number, []))
            continue
        name = stripped.split(":", 1)[0]
        if ":" in stripped and name.isidentifier() and not stripped.startswith(("def ", "class ")):
            own = [c for c in lines.get(number, []) if not stripped.startswith("#")]
            notes[name] = " ".join(above + own)
        above = []
    return notes


def _notes(cls):
    """Comments of `cls` and of the classes it inherits fields from."""
    found = {}
    for base in reversed(cls.__mro__):
        if dataclasses.is_dataclass(base):
            found.update(_comments(base))
    return found


def rows(cls=schema.Config, prefix="", default=None):
    """(key, type, default, meaning) of every leaf key under dataclass `cls`, depth first."""
    default = default if default is not None else cls()
    notes, out = _notes(cls), []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        value = getattr(default, f.name)
        if dataclasses.is_dataclass(hints[f.name]):
            out += rows(hints[f.name], prefix=f"{prefix}{f.name}.", default=value)
        else:
            out.append((f"{prefix}{f.name}", fields.describe(hints[f.name]), value, notes.get(f.name, "")))
    return out


def markdown():
    """The whole reference page."""
    table = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    for key, kind, value, meaning in rows():
        shown = repr(value).replace("|", "\\|")
        table.append(f"| `{key}` | {kind} | `{shown}` | {meaning.replace('|', '/')} |")
    return _HEADER + "\n" + "\n".join(table) + "\n"


if __name__ == "__main__":
    sys.stdout.write(markdown())
