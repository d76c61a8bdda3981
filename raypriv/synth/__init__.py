"""Paradigms: how a shadow pipeline turns a private set into a trained model.

The interface (:class:`Paradigm`, :class:`ShadowContext`, :class:`LabeledSet`,
:func:`register`, option checks) is in :mod:`raypriv.synth.base`; every other
module of this package is one paradigm, imported here so that it registers.
A new paradigm is one new file here: a :class:`Paradigm` subclass decorated
with :func:`register`.  Paradigms from outside the package (an entry point in
group ``raypriv.paradigms``, or a ``module:Class`` reference in the config)
are resolved by :func:`paradigm_class`; :mod:`raypriv.synth.catalogue`
describes them all for ``raypriv paradigms``.
"""

from __future__ import annotations

import importlib
import pkgutil

from raypriv.synth.base import (
    ENTRY_POINT_GROUP,
    PARADIGMS,
    PLUGINS,
    VARIANT_SEPARATOR,
    LabeledSet,
    NoOptions,
    Paradigm,
    ShadowContext,
    build_options,
    is_known_paradigm,
    load_entry_points,
    make_paradigm,
    paradigm_class,
    plugin_identity,
    qualified_name,
    register,
    resolved_options,
)

__all__ = [
    "PARADIGMS", "VARIANT_SEPARATOR", "LabeledSet", "NoOptions", "Paradigm", "ShadowContext", "build_options",
    "is_known_paradigm", "make_paradigm", "paradigm_class", "register", "resolved_options",
    "ENTRY_POINT_GROUP", "PLUGINS", "load_entry_points", "plugin_identity", "qualified_name",
]

_SHARED_MODULES = {"base", "catalogue", "diffusion_sd", "distill_common", "distill_mtt", "dpgen_common", "language_models"}  # helpers, not paradigms


def _import_paradigm_modules() -> None:
    """Import every paradigm module of this package; each registers its paradigm."""
    for module in pkgutil.iter_modules(__path__):
        if module.name not in _SHARED_MODULES:
            importlib.import_module(f"{__name__}.{module.name}")


_import_paradigm_modules()
