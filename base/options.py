"""Options dataclasses of extension points, and what the CLI needs to know about each field (torch-free).

An export format (or the INT8 step) keeps its options in one frozen dataclass, as a plug-in keeps
its hyper-parameters in ``Config``. Each field may say how it appears on the command line with
``option(...)``; ``app/cli.py`` generates ``wherevit export``'s options from these declarations
(``app/options_cli.py``), so a format's new option is one field, and a Python caller passes the same
dataclass (``ExportRequest.format_options``).

Field metadata (all optional):

* ``cli``      the option's declaration: ``"--trt-lib"``, or ``"--strongly-typed/--weakly-typed"`` for a
               flag pair; ``False`` keeps the field off the command line; absent: ``--<owner>-<field>``.
* ``help``     the help text.
* ``choices``  allowed values (a ``click.Choice``).
* ``parse``    a function turning the command-line string into the field's value (``"8.6,8.9"`` -> a tuple).
* ``metavar``  how the value is shown in ``--help``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, TypeVar

from wherevit.base.config import ConfigError, from_dict
from wherevit.base.errors import InvalidRequest

__all__ = ["option", "coerce_options"]

T = TypeVar("T")
_MISSING: Any = dataclasses.MISSING


def option(default: Any = _MISSING, *, default_factory: Callable[[], Any] | Any = _MISSING, cli: str | bool | None = None,
           help: str = "", choices: tuple[Any, ...] | None = None, parse: Callable[[str], Any] | None = None,
           metavar: str | None = None) -> Any:
    """A dataclass field with its command-line declaration (see the module docstring)."""
    meta = {"help": help}
    if cli is not None:
        meta["cli"] = cli
    if choices is not None:
        meta["choices"] = tuple(choices)
    if parse is not None:
        meta["parse"] = parse
    if metavar is not None:
        meta["metavar"] = metavar
    return dataclasses.field(default=default, default_factory=default_factory, metadata=meta)


def coerce_options(cls: type[T], value: Any, where: str) -> T:
    """``value`` as an instance of the options dataclass ``cls``: the instance itself, a mapping of its
    fields (validated: an unknown or mistyped key names itself), or None for the defaults."""
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if isinstance(value, Mapping):
        try:
            return from_dict(cls, value, _path=where)
        except ConfigError as e:
            raise InvalidRequest(str(e)) from e
    raise InvalidRequest(f"{where} must be a {cls.__name__} (or a mapping of its fields), got {type(value).__name__}")
