"""Typed, range-checked dataclass fields: check a value against its annotation, parse `--set` text into that type."""

import ast
import math
import dataclasses
import types
import typing

_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a finite number", str: "a string", tuple: "a list",
               dict: "a dict", type(None): "None"}


def describe(hint):
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(describe(h) for h in typing.get_args(hint))
    origin = typing.get_origin(hint) or hint
    return _TYPE_NAMES.get(origin, getattr(origin, "__name__", str(origin)))


def coerce(value, hint, *, name):
    """`value` as the annotation `hint` says (lists become tuples, ints floats), or ValueError naming `name`."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        for option in args:
            try:
                return coerce(value, option, name=name)
            except ValueError:
                continue
    elif hint is type(None):
        if value is None:
            return None
    elif hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        # NaN and inf pass every `>= low` check by accident (or fail it unreadably): no setting means them.
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
    elif (origin or hint) is tuple:
        if isinstance(value, (list, tuple)):
            if not args:
                return tuple(value)
            if len(args) == len(value):
                return tuple(coerce(v, a, name=name) for v, a in zip(value, args))
    elif (origin or hint) is dict:
        if isinstance(value, dict):
            return dict(value)
    elif dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
    else:
        raise TypeError(f"{name}: no coercion for annotation {hint!r}")
    raise ValueError(f"{name} must be {describe(hint)}, got {value!r}")


def check(obj):
    """Coerce every field of dataclass `obj` to its annotated type in place (frozen ones too)."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        object.__setattr__(obj, f.name, coerce(getattr(obj, f.name), hints[f.name], name=f.name))


def hint(cls, name):
    """The resolved annotation of field `name` of dataclass `cls`."""
    return typing.get_type_hints(cls)[name]


def parse(text, hint_):
    """`--set` text -> a value for a field annotated `hint_`: a Python literal, or the bare word for strings."""
    text = text.strip()
    accepts = {h for h in (typing.get_args(hint_) or (hint_,))}
    if bool in accepts and text.lower() in ("true", "false"):
        return text.lower() == "true"
    if type(None) in accepts and text.lower() in ("none", "null"):
        return None
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a bare word such as efficientnetb3; the type check says whether a string fits
    # `tpu=1234` names a TPU: a str field keeps the text unless another type the field accepts fits the value
    # (`pos_weight=[2, 1, 1, 3]` beside `pos_weight=auto`).
    if str in accepts and not isinstance(value, str):
        for option in accepts - {str}:
            try:
                return coerce(value, option, name="")
            except (ValueError, TypeError):
                continue
        return text
    return value


# Multiples of the deepest encoder stride (EfficientNet / U-Net): decoders need exact 2x up-sampling.
STRIDE = 32


def require(ok, message):
    if not ok:
        raise ValueError(message)


def positive(obj, *names):
    for name in names:
        value = getattr(obj, name)
        require(value is None or value > 0, f"{name}={value!r}: must be > 0")


def unit(obj, *names, high=1.0):
    for name in names:
        value = getattr(obj, name)
        require(0.0 <= value <= high, f"{name}={value!r}: must be in [0, {high:g}]")


def one_of(name, value, allowed):
    require(value in allowed, f"{name}={value!r}: choose one of {', '.join(map(str, allowed))}")


def stride_multiple(obj, *names):
    for name in names:
        value = getattr(obj, name)
        require(value is None or (value > 0 and value % STRIDE == 0),
                 f"{name}={value!r}: must be a positive multiple of {STRIDE}")
