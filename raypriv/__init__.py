"""raypriv: membership-inference audits of training on synthetic data, at cluster scale.

The public API, loaded on first use (importing ``raypriv`` or ``raypriv.config``
loads no other raypriv module, nor torch):

* ``raypriv.audit(config, **overrides)`` and ``raypriv.load_run(dir)`` give a
  :class:`Run` (:mod:`raypriv.api`, :mod:`raypriv.reader`);
* ``Paradigm``, ``ShadowContext``, ``LabeledSet`` and ``register``: what a
  paradigm plugin subclasses and uses (:mod:`raypriv.synth.base`, ``register`` :mod:`raypriv.synth.registry`);
* ``RayprivError``: the one exception type of bad input.
"""

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "audit": "raypriv.api",
    "load_run": "raypriv.api",
    "Run": "raypriv.reader",
    "Paradigm": "raypriv.synth.base",
    "ShadowContext": "raypriv.synth.base",
    "LabeledSet": "raypriv.synth.base",
    "register": "raypriv.synth.registry",
    "RayprivError": "raypriv.errors",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'raypriv' has no attribute {name!r}")
    module = importlib.import_module(_EXPORTS[name])
    return getattr(module, name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
