"""Paradigms: how a shadow pipeline turns a private set into a trained model.

The interface (:class:`Paradigm`, :class:`ShadowContext`, :class:`LabeledSet`)
is in :mod:`raypriv.synth.base`; the registry (the table of built-ins
:data:`BUILTINS`, :func:`register`, option checks, plugins and variants) in
:mod:`raypriv.synth.registry`; :mod:`raypriv.synth.catalogue` describes every
paradigm for ``raypriv paradigms``.  Each built-in paradigm is a module
(``real``, ``coreset``, ``dfkd``, ``dpsgd``, ``external``, their options in
:mod:`raypriv.synth.options`) or a family of modules (``distill/``,
``diffusion/``, ``dpgen/``, each with its own ``options`` module).

Importing this package imports no paradigm's implementation, nor torch: the
registry names each built-in's class as ``module:Class`` and imports it when
the paradigm is made.
"""

from __future__ import annotations

from raypriv.synth.base import LabeledSet, NoOptions, Paradigm, ShadowContext
from raypriv.synth.registry import (
    BUILTINS,
    ENTRY_POINT_GROUP,
    PARADIGMS,
    PLUGINS,
    VARIANT_SEPARATOR,
    ParadigmEntry,
    build_options,
    is_known_paradigm,
    load_entry_points,
    make_paradigm,
    paradigm_class,
    paradigm_entry,
    paradigm_names,
    plugin_identity,
    qualified_name,
    register,
    resolved_options,
)

__all__ = [
    "PARADIGMS", "VARIANT_SEPARATOR", "LabeledSet", "NoOptions", "Paradigm", "ShadowContext", "build_options",
    "is_known_paradigm", "make_paradigm", "paradigm_class", "register", "resolved_options",
    "ENTRY_POINT_GROUP", "PLUGINS", "load_entry_points", "plugin_identity", "qualified_name",
    "BUILTINS", "ParadigmEntry", "paradigm_entry", "paradigm_names",
]
