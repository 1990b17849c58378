"""Command-line flags from dataclass fields, and the dataclass back from the parsed flags.

A field declared with `option(default, help, ...)` becomes the flag `--field-name` (dest `field_name`):
its help is the option's, its type the field's annotation (int, float, str, Optional of one of
those, or a tuple of str for a list of values), its choices `choices=`. A bool field is a switch:
`--flag` when it defaults to False, `--flag/--no-flag` when it defaults to True. A command may give
a field another default; a `required=True` option without one is a required flag, and so is a field
the command names in `required`.
"""
from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any, Dict, Iterable, Optional

from drfast.common.errors import UsageError, UsageTypeError

__all__ = ["option", "add_arguments", "from_args", "takes_value"]


def option(default: Any, help: str, **metadata: Any) -> Any:
    """A dataclass field with its command-line help; `metadata` may add choices=, metavar= or required=."""
    return dataclasses.field(default=default, metadata={"help": help, **metadata})


def _kind(annotation: Any) -> type:
    """int, float, str, bool or tuple (a list of strings) from a field's annotation."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    origin = typing.get_origin(annotation)
    if origin is typing.Union and len(args) == 1:  # Optional[X]
        return _kind(args[0])
    if origin in (tuple, list):
        return tuple
    if annotation in (int, float, str, bool):
        return annotation
    raise UsageTypeError("annotation", f"no command-line flag for a field of type {annotation!r}")


def takes_value(cls: type, name: str) -> bool:
    """Whether the flag of field `name` of dataclass `cls` takes a value (every kind but a bool switch)."""
    return _kind(typing.get_type_hints(cls)[name]) is not bool


def add_arguments(parser: Any, cls: type, names: Optional[Iterable[str]] = None, *,
                  required: Iterable[str] = (), **defaults: Any) -> Dict[str, str]:
    """Add a flag for each field of dataclass `cls` (or for the fields in `names`) to `parser` (an
    ArgumentParser or one of its groups), with the default given in `defaults` where there is one,
    else the field's; the fields in `required` become required flags. Returns {field name: flag}."""
    hints = typing.get_type_hints(cls)
    required, flags = set(required), {}
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for name in fields if names is None else names:
        if name not in fields or "help" not in fields[name].metadata:
            raise UsageError("names", f"{cls.__name__} has no option {name!r}")
        meta, kind = fields[name].metadata, _kind(hints[name])
        default = defaults.get(name, fields[name].default)
        kwargs: dict = {"dest": name, "default": default, "help": meta["help"]}
        if not (default is None or default is False or default == ()):  # those say nothing
            kwargs["help"] += " (default: %(default)s)"
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction if default else "store_true"
        elif kind is tuple:
            kwargs.update(nargs="*", type=str)
        else:
            kwargs["type"] = kind
        for key in ("choices", "metavar"):
            if key in meta:
                kwargs[key] = meta[key]
        if (meta.get("required") and name not in defaults) or name in required:
            kwargs["required"] = True
        flags[name] = "--" + name.replace("_", "-")
        parser.add_argument(flags[name], **kwargs)
    return flags


def from_args(cls: type, args: argparse.Namespace, **overrides: Any) -> Any:
    """An instance of dataclass `cls` from the parsed flags named like its fields (a field without a
    flag keeps its default), with `overrides` on top."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if f.init and hasattr(args, f.name)}
    for name, value in values.items():
        if isinstance(value, list):  # nargs="*" gives a list; the fields hold tuples
            values[name] = tuple(value)
    return cls(**{**values, **overrides})
