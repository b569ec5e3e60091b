"""Command-line options generated from extension points' ``Options`` dataclasses (``base/options.py``).

``wherevit export`` gets one option per field of every registered export format's ``Options`` and of
the INT8 step's ``QuantOptions``; a format that shares its ``Options`` class with another (``triton``,
``triton-engine``) shares the options too. The registries are imported only when the command is
used (``--help`` included), so ``wherevit --help`` and the torch-free commands stay torch-free.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from typing import Any, Callable

import click

from wherevit.base.errors import WherevitError

__all__ = ["LazyOptionsCommand", "OptionsGroup", "export_option_groups", "export_options_signature", "options_params",
           "collect_options"]


@dataclasses.dataclass
class OptionsGroup:
    """One ``Options`` dataclass on the command line: the keys it is stored under in ``format_options`` and its prefix."""

    keys: tuple[str, ...]  # format names (or "int8") that read these options
    cls: type
    prefix: str  # auto-generated option names: --<prefix>-<field>


def export_option_groups() -> list[OptionsGroup]:
    """Every export format's options (formats sharing a class share one group), then the INT8 step's."""
    from wherevit.export.formats import registered_formats
    from wherevit.export.quant_step import QuantizeStep
    from wherevit.export.quantize import QuantOptions

    groups: dict[type, OptionsGroup] = {}
    for name, fmt in registered_formats().items():
        if not dataclasses.fields(fmt.Options):
            continue
        g = groups.setdefault(fmt.Options, OptionsGroup((), fmt.Options, name))
        g.keys += (name,)
    return [*groups.values(), OptionsGroup((QuantizeStep.name,), QuantOptions, QuantizeStep.name)]


def export_options_signature() -> tuple:
    """What ``wherevit export``'s generated options depend on: the registered formats and their ``Options``."""
    from wherevit.export.formats import registered_formats

    return tuple((name, fmt.Options, fmt.help) for name, fmt in registered_formats().items())


def _param_name(group: OptionsGroup, field: dataclasses.Field) -> str:
    return re.sub(r"\W", "_", f"opt__{group.prefix}__{field.name}")


def _base_type(tp: Any) -> tuple[Any, bool]:
    """(type without None, whether None is allowed)."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, getattr(__import__("types"), "UnionType", typing.Union)) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else typing.Union[tuple(rest)]), True
    return tp, False


def _split(item_type: type) -> Callable[[str], tuple]:
    def parse(text: str) -> tuple:
        try:
            return tuple(item_type(v.strip()) for v in text.split(",") if v.strip())
        except ValueError:
            raise click.BadParameter(f"{text!r} is not a comma list of {item_type.__name__}") from None

    return parse


def _option(group: OptionsGroup, field: dataclasses.Field, tp: Any) -> list[click.Option]:
    """The click option(s) of one field: one option, or for a nested ``Options | None`` field a flag that
    turns it on plus one option per nested field (``--triton-images``, ``--triton-images-instance-count``)."""
    meta = field.metadata
    decl = meta.get("cli")
    if decl is False:
        return []
    decl = decl or f"--{group.prefix}-{field.name.replace('_', '-')}"
    default = field.default if field.default is not dataclasses.MISSING else field.default_factory()  # type: ignore[misc]
    base, _ = _base_type(tp)
    help_text = meta.get("help") or f"{'/'.join(group.keys)}: {field.name.replace('_', ' ')}."
    name = _param_name(group, field)
    if dataclasses.is_dataclass(base):  # nested options: off unless the flag or one of its fields is given
        opts = [click.Option([decl, name], is_flag=True, default=False, help=help_text)]
        hints = typing.get_type_hints(base)
        for sub in dataclasses.fields(base):
            sub_decl = sub.metadata.get("cli") or f"{decl}-{sub.name.replace('_', '-')}"
            if sub_decl is False:
                continue
            sub_help = sub.metadata.get("help") or f"{decl}: {sub.name.replace('_', ' ')} (default {sub.default}; implies {decl})."
            opts.append(_scalar_option(sub_decl, f"{name}__{sub.name}", None, _base_type(hints[sub.name])[0], sub.metadata,
                                       sub_help))
        return opts
    return [_scalar_option(decl, name, default, base, meta, help_text)]


def _scalar_option(decl: str, name: str, default: Any, base: Any, meta: Any, help_text: str) -> click.Option:
    if base is bool:
        if "/" in decl:
            return click.Option([decl, name], default=default, help=help_text)
        return click.Option([decl, name], is_flag=True, default=bool(default), help=help_text)
    parse = meta.get("parse")
    if parse is None and typing.get_origin(base) in (tuple, list):
        parse = _split(typing.get_args(base)[0] if typing.get_args(base) else str)
    if parse is not None:  # a string on the command line, parsed into the field's value (None: not given)
        def convert(ctx, param, value, parse=parse):
            try:
                return None if value is None else parse(value)
            except (WherevitError, ValueError) as e:
                raise click.BadParameter(str(e), ctx=ctx, param=param) from None

        return click.Option([decl, name], default=None, callback=convert, metavar=meta.get("metavar", "LIST"), help=help_text)
    choices = meta.get("choices")
    ctype = click.Choice([str(c) for c in choices]) if choices else {int: click.INT, float: click.FLOAT}.get(base, click.STRING)
    return click.Option([decl, name], type=ctype, default=default, show_default=default is not None,
                        metavar=meta.get("metavar"), help=help_text)


def options_params(groups: list[OptionsGroup]) -> list[click.Option]:
    """The click options of ``groups``; two fields claiming one option name is an error naming both."""
    params: list[click.Option] = []
    seen: dict[str, str] = {}
    for g in groups:
        hints = typing.get_type_hints(g.cls)
        for f in dataclasses.fields(g.cls):
            for opt in _option(g, f, hints[f.name]):
                for o in opt.opts + opt.secondary_opts:
                    if o in seen:
                        raise click.ClickException(f"option {o} is declared by {seen[o]} and by {g.cls.__name__}.{f.name}")
                    seen[o] = f"{g.cls.__name__}.{f.name}"
                params.append(opt)
    return params


def collect_options(groups: list[OptionsGroup], values: dict[str, Any]) -> dict[str, Any]:
    """Pop the generated options' values from ``values`` (a command's keyword arguments) and build each
    group's dataclass -> ``format_options`` (every key of a group gets the same instance)."""
    out: dict[str, Any] = {}
    for g in groups:
        kwargs = {}
        hints = typing.get_type_hints(g.cls)
        for f in dataclasses.fields(g.cls):
            nested = _base_type(hints[f.name])[0]
            if dataclasses.is_dataclass(nested):
                on = values.pop(_param_name(g, f), False)
                sub = {sf.name: v for sf in dataclasses.fields(nested)
                       if (v := values.pop(f"{_param_name(g, f)}__{sf.name}", None)) is not None}
                if on or sub:
                    try:
                        kwargs[f.name] = nested(**sub)
                    except (WherevitError, ValueError) as e:
                        raise click.ClickException(f"{type(e).__name__}: {e}") from e
                continue
            v = values.pop(_param_name(g, f), None)
            if v is None and f.default is not None:
                continue  # not given (or not on the command line): the dataclass default
            kwargs[f.name] = v
        try:
            inst = g.cls(**kwargs)
        except (WherevitError, ValueError) as e:
            raise click.ClickException(f"{type(e).__name__}: {e}") from e
        out.update({k: inst for k in g.keys})
    return out


class LazyOptionsCommand(click.Command):
    """A click command whose generated options (``params_factory()``) are added when it is used.

    ``signature()`` says what they were generated from (the registered formats and their ``Options``);
    a format registered later (a test, a plug-in loaded late) regenerates them on the next use."""

    def __init__(self, *args, params_factory: Callable[[], list[click.Parameter]] | None = None,
                 signature: Callable[[], Any] | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.params_factory, self.signature = params_factory, signature
        self._declared = list(self.params)
        self._generated_for: Any = object()

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        if self.params_factory is not None:
            sig = self.signature() if self.signature is not None else None
            if sig != self._generated_for:
                self.params = [*self._declared, *self.params_factory()]
                self._generated_for = sig
        return super().get_params(ctx)
