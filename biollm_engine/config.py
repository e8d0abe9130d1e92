"""Dataclass configs as the one source of truth for every job's options.

Each job (harvest, train, features, circuit, evaluate, ...) defines a plain `@dataclass` in its
own module, every field with `metadata={"help": "..."}`. The same dataclass becomes the CLI flags
(`add_arguments` / `from_args`), the saved `cfg.json` (`to_dict` / `from_dict`) and the GUI forms
(magicgui reads the same fields).
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any, Literal, TypeVar, get_args, get_origin

from .errors import BioLLMError

T = TypeVar("T")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _unwrap_optional(tp):
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def field_help(f: dataclasses.Field) -> str:
    return f.metadata.get("help", "")


def add_arguments(parser: argparse.ArgumentParser, cls: type, exclude: tuple[str, ...] = (),
                  required: tuple[str, ...] = ()) -> None:
    """Add one flag per dataclass field to `parser`."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in exclude or not f.init:
            continue
        tp, _ = _unwrap_optional(hints[f.name])
        kwargs: dict[str, Any] = {"help": field_help(f), "dest": f.name}
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        else:
            default = None
        is_required = f.name in required or (f.default is dataclasses.MISSING
                                             and f.default_factory is dataclasses.MISSING)  # type: ignore[misc]
        if tp is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
            kwargs["default"] = default
        elif get_origin(tp) in (list, tuple):
            (inner,) = get_args(tp)[:1]
            kwargs["action"] = "append"
            kwargs["type"] = inner if inner in (int, float, str) else str
            kwargs["default"] = None
            kwargs["help"] = (kwargs["help"] + " (repeatable)").strip()
        elif get_origin(tp) is Literal:
            kwargs["choices"] = list(get_args(tp))
            kwargs["default"] = default
        else:
            kwargs["type"] = tp if tp in (int, float, str) else str
            kwargs["default"] = default
        if is_required and tp is not bool:
            kwargs["required"] = True
            kwargs.pop("default", None)
        parser.add_argument(_flag(f.name), **kwargs)


def from_args(cls: type[T], ns: argparse.Namespace, **overrides) -> T:
    """Build the dataclass from parsed flags (fields missing from `ns` keep their defaults)."""
    values = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        if f.name in overrides:
            values[f.name] = overrides[f.name]
        elif hasattr(ns, f.name):
            v = getattr(ns, f.name)
            if v is None and (f.default is not dataclasses.MISSING
                              or f.default_factory is not dataclasses.MISSING):  # type: ignore[misc]
                continue
            values[f.name] = v
    return cls(**values)


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(cls: type[T], data: dict, strict: bool = False) -> T:
    """Build the dataclass from a saved dict; unknown keys are an error only when `strict`."""
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = set(data) - names
    if strict and unknown:
        raise BioLLMError(f"unknown {cls.__name__} options: {', '.join(sorted(unknown))}.")
    try:
        return cls(**{k: v for k, v in data.items() if k in names})
    except TypeError as e:
        raise BioLLMError(f"invalid {cls.__name__}: {e}.") from None
