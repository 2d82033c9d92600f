"""Command-line options made from the settings classes of `bort.config`: each field becomes one
option with the field's default and help, so a default is written once, in its dataclass."""

from __future__ import annotations

import argparse
import json
import types
import typing
from dataclasses import MISSING, Field, fields
from pathlib import Path
from typing import Any, TypeVar, Union

from ..config import Settings, choices_of

__all__ = ["add_overrides", "add_settings", "default_source", "option_name", "overrides_from",
           "settings_from"]

S = TypeVar("S", bound=Settings)


def option_name(f: Field) -> str:
    """The option of a settings field: ``--batch-size`` for ``batch_size``, or its ``flag``."""
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def cli_fields(cls: type[Settings], skip: tuple[str, ...] = ()) -> list[Field]:
    """The fields of ``cls`` that have a command-line option."""
    return [f for f in fields(cls) if f.metadata.get("cli", True) and f.name not in skip]


def _default(f: Field) -> Any:
    return f.default_factory() if f.default is MISSING else f.default  # type: ignore[misc]


def _json_list(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON ({e.msg})") from None


def _kind(hint: Any) -> tuple[Any, bool]:
    """(element type, is a list) of an annotation, Optional unwrapped."""
    if typing.get_origin(hint) in (Union, types.UnionType):
        (hint,) = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) is list:
        return typing.get_args(hint)[0], True
    return hint, False


def _option(f: Field, hint: Any) -> dict[str, Any]:
    """argparse keywords for one field."""
    default = _default(f)
    shown = ("on" if default is True else "off" if default is False
             else json.dumps(default) if isinstance(default, (list, dict)) else default)
    text = f.metadata.get("help", "")
    # an unset field's help says what unset means ("default: the installed ..."): once is enough
    if not (default is None and "default" in text):
        text = f"{text} (default: {'none' if default is None else shown})"
    kwargs: dict[str, Any] = {"dest": f.name, "default": default, "help": text}
    element, is_list = _kind(hint)
    if element is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    elif element is dict:  # a list of tables: one JSON value
        kwargs.update(type=_json_list, metavar="JSON")
    else:
        kwargs["type"] = element
        if is_list:
            kwargs["nargs"] = "+"
    # Registry choices are checked when the settings are built (the same error as the API's):
    # reading a registry here could import torch just to print `bort --version`.
    if not callable(f.metadata.get("choices")) and choices_of(f) is not None:
        kwargs["choices"] = choices_of(f)
    return kwargs


def add_settings(parser: argparse.ArgumentParser, cls: type[Settings], *,
                 skip: tuple[str, ...] = ()) -> None:
    """One option per field of ``cls`` (but those in ``skip``), in a group titled by the class."""
    group = parser.add_argument_group(f"{cls.title} settings")
    hints = typing.get_type_hints(cls)
    for f in cli_fields(cls, skip):
        group.add_argument(option_name(f), **_option(f, hints[f.name]))


def add_overrides(parser: argparse.ArgumentParser, cls: type[Settings],
                  names: tuple[str, ...]) -> None:
    """Options for the fields ``names`` of ``cls`` that override a value only when given (their
    default is None; the help shows the field's own default)."""
    hints = typing.get_type_hints(cls)
    by_name = {f.name: f for f in fields(cls)}
    for name in names:
        kwargs = _option(by_name[name], hints[name])
        kwargs["default"] = None
        parser.add_argument(option_name(by_name[name]), **kwargs)


def overrides_from(args: argparse.Namespace, names: tuple[str, ...]) -> dict[str, Any]:
    """The options among ``names`` that were given, as plain values (paths as strings)."""
    out = {}
    for name in names:
        value = getattr(args, name)
        if value is not None:
            out[name] = [str(v) for v in value] if isinstance(value, list) else str(
                value) if isinstance(value, Path) else value
    return out


def settings_from(args: argparse.Namespace, cls: type[S], **values: Any) -> S:
    """``cls`` built from the parsed options (and ``values`` for fields set otherwise); its own
    checks raise the same ConfigError as the Python API would."""
    given = {f.name: getattr(args, f.name) for f in cli_fields(cls) if hasattr(args, f.name)}
    return cls(**{**given, **values})


def default_source(path: str | Path | None) -> Path:
    """``path``, or the installed default source model."""
    if path is not None:
        return Path(path)
    from ..assets import default_source as installed

    return installed()
