"""The paradigm catalogue: every available paradigm with its description and options (``raypriv paradigms``).

Built-ins and entry points (group ``raypriv.paradigms``) are listed; a
``module:Class`` reference is described when named (``raypriv paradigms
mypkg.mix:MixupSynth``).  A paradigm's description is the first line of its
class docstring, else of its module's docstring; its options are the fields
of its ``Options`` dataclass.  A built-in's docstrings are read from its
source (as :func:`pydoc.synopsis` does), not imported: the catalogue needs no
torch.  Docstrings are reStructuredText; the catalogue prints them as plain
text (:func:`plain_text`).
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import inspect
import re
import sys
import typing
from pathlib import Path
from typing import Any, Literal

from raypriv.synth.registry import PARADIGMS, PLUGINS, ParadigmEntry, paradigm_entry, paradigm_names

_ROLE = re.compile(r":[\w.:-]+:`([^`]*)`")  # :func:`x`, :mod:`~a.b`, :class:`title <target>`
_LITERAL = re.compile(r"``(.+?)``")
_STRONG = re.compile(r"\*\*(\S(?:.*?\S)?)\*\*")


def _role_text(match: re.Match) -> str:
    text = match.group(1)
    titled = re.fullmatch(r"(.*?)\s*<[^>]+>", text, flags=re.S)
    if titled:
        return titled.group(1)
    return text[1:].rsplit(".", 1)[-1] if text.startswith("~") else text


def plain_text(rst: str) -> str:
    """``rst`` with its inline markup as plain text: ````x```` and ``:role:`x``` become ``x``, ``**x**`` becomes ``x``.

    ``:role:`~a.b``` keeps the last part (``b``), ``:role:`title <target>``` the
    title, as Sphinx shows them.
    """
    return _STRONG.sub(r"\1", _LITERAL.sub(r"\1", _ROLE.sub(_role_text, rst)))


def _source_docstrings(reference: str) -> tuple[str | None, str | None]:
    """(class docstring, module docstring) of ``module:Class``, read from the module's source without importing it."""
    module, _, attribute = reference.partition(":")
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
        return None, None
    tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == attribute:
            return ast.get_docstring(node), ast.get_docstring(tree)
    return None, ast.get_docstring(tree)


def _docstrings(entry: ParadigmEntry) -> tuple[str, str]:
    """(the description: class docstring else module docstring, the module docstring), cleaned of indentation."""
    if entry.cls is None:  # a built-in
        class_doc, module_doc = _source_docstrings(entry.implementation)
    else:
        cls = entry.cls
        class_doc = cls.__doc__ if "__doc__" in vars(cls) else None
        module_doc = getattr(sys.modules.get(cls.__module__), "__doc__", None)
    module_doc = inspect.cleandoc(module_doc or "")
    return inspect.cleandoc(class_doc) if class_doc else (module_doc or "(no description)"), module_doc


def _summary(name: str, description: str) -> str:
    """The description's first line as plain text, without a leading ``name:`` (the catalogue shows the name)."""
    first = plain_text(description.splitlines()[0])
    base = name.partition("@")[0]
    return first[len(base) + 2:] if first.startswith(f"{base}: ") else first


def _type_name(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return type(args[0]).__name__
    if origin is not None and args:
        if type(None) in args:
            return " | ".join(_type_name(a) for a in args if a is not type(None)) + " | None"
        return f"{getattr(origin, '__name__', str(origin))}[{', '.join(_type_name(a) for a in args)}]"
    return getattr(tp, "__name__", str(tp))


def option_rows(options: type) -> list[dict[str, Any]]:
    """One row per field of an ``Options`` dataclass: name, type, default, allowed values (a Literal's, else None)."""
    hints = typing.get_type_hints(options)
    rows = []
    for item in dataclasses.fields(options):
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


def _options_block(entry: ParadigmEntry) -> list[str]:
    rows = option_rows(entry.Options)
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
    lines = []
    for name in paradigm_names():
        entry = PARADIGMS[name]
        lines.append(f"{name} [{source(name)}]: {_summary(name, _docstrings(entry)[0])}")
        lines += _options_block(entry)
    lines.append("")
    lines.append("`raypriv paradigms NAME` shows one in full; a paradigm may also be a 'module:Class' reference in the "
                 "config, and any paradigm a variant 'NAME@tag' with its own options")
    return "\n".join(lines) + "\n"


def format_paradigm(name: str) -> str:
    """One paradigm (a name, variant or ``module:Class``) with its whole docstring and options."""
    entry = paradigm_entry(name)
    body, module_doc = _docstrings(entry)
    if module_doc and module_doc not in body:  # the module docstring holds the details
        body += "\n\n" + module_doc
    lines = [f"{name} [{source(name)}]", "", plain_text(body), "", "options (paradigm_options." + name + "):"]
    return "\n".join(lines + _options_block(entry)) + "\n"
