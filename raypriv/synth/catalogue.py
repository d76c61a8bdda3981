"""The paradigm catalogue: every available paradigm with its description and options (``raypriv paradigms``).

Built-ins and entry points (group ``raypriv.paradigms``) are listed; a
``module:Class`` reference is described when named (``raypriv paradigms
mypkg.mix:MixupSynth``).  A paradigm's description is the first line of its
class docstring, else of its module's docstring; its options are the fields
of its ``Options`` dataclass.
"""

from __future__ import annotations

import dataclasses
import inspect
import sys
import typing
from typing import Any, Literal

from raypriv.synth.base import PARADIGMS, PLUGINS, Paradigm, load_entry_points, paradigm_class


def _docstring(cls: type[Paradigm]) -> str:
    doc = cls.__doc__ if "__doc__" in vars(cls) and cls.__doc__ else getattr(sys.modules.get(cls.__module__), "__doc__", "")
    return inspect.cleandoc(doc or "(no description)")


def _type_name(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return type(args[0]).__name__
    if origin is not None and args:
        if type(None) in args:
            return " | ".join(_type_name(a) for a in args if a is not type(None)) + " | None"
        return f"{getattr(origin, '__name__', str(origin))}[{', '.join(_type_name(a) for a in args)}]"
    return getattr(tp, "__name__", str(tp))


def option_rows(cls: type[Paradigm]) -> list[dict[str, Any]]:
    """One row per option: name, type, default, allowed values (a Literal's, else None)."""
    hints = typing.get_type_hints(cls.Options)
    rows = []
    for item in dataclasses.fields(cls.Options):
        if item.metadata.get("required"):  # a default that does not validate (e.g. external's empty command)
            default = "(required)"
        elif item.default is not dataclasses.MISSING:
            default = item.default
        elif item.default_factory is not dataclasses.MISSING:
            default = item.default_factory()
        else:
            default = "(required)"
        tp = hints[item.name]
        allowed = [a for a in typing.get_args(tp) if a is not type(None)] if typing.get_origin(tp) is Literal else None
        rows.append({"name": item.name, "type": _type_name(tp), "default": default, "allowed": allowed})
    return rows


def source(name: str) -> str:
    """Where paradigm ``name`` comes from: built-in, or the plugin's class and distribution version."""
    base = name.partition("@")[0]
    plugin = PLUGINS.get(base)
    if plugin is None:
        return "built-in"
    origin = " ".join(filter(None, (plugin["distribution"], plugin["version"]))) or "no distribution"
    kind = "module:Class" if ":" in base else "entry point"
    return f"{kind}, {plugin['class']} ({origin})"


def _options_block(cls: type[Paradigm]) -> list[str]:
    rows = option_rows(cls)
    if not rows:
        return ["    options: none"]
    lines = []
    for row in rows:
        allowed = f"; one of {row['allowed']}" if row["allowed"] else ""
        default = row["default"] if row["default"] == "(required)" else repr(row["default"])
        lines.append(f"    {row['name']}: {row['type']} = {default}{allowed}")
    return lines


def format_catalogue() -> str:
    """Every built-in and entry-point paradigm: name, source, one-line description, options."""
    load_entry_points()
    lines = []
    for name in sorted(PARADIGMS):
        cls = PARADIGMS[name]
        lines.append(f"{name} [{source(name)}]: {_docstring(cls).splitlines()[0]}")
        lines += _options_block(cls)
    lines.append("")
    lines.append("`raypriv paradigms NAME` shows one in full; a paradigm may also be a 'module:Class' reference in the "
                 "config, and any paradigm a variant 'NAME@tag' with its own options")
    return "\n".join(lines) + "\n"


def format_paradigm(name: str) -> str:
    """One paradigm (a name, variant or ``module:Class``) with its whole docstring and options."""
    cls = paradigm_class(name)
    body = _docstring(cls)
    module_doc = inspect.cleandoc(getattr(sys.modules.get(cls.__module__), "__doc__", None) or "")
    if module_doc and module_doc not in body:  # the module docstring holds the details
        body += "\n\n" + module_doc
    lines = [f"{name} [{source(name)}]", "", body, "", "options (paradigm_options." + name + "):"]
    return "\n".join(lines + _options_block(cls)) + "\n"
