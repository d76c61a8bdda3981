"""The paradigm registry: every paradigm a config may name, its options, and its class.

A built-in paradigm is one entry of :data:`BUILTINS` plus its class: the
entry names the class as ``"module:Class"`` and its ``Options`` dataclass
likewise.  The options live in torch-free modules, so checking a config and
listing the paradigms (``raypriv paradigms``, ``raypriv status``) import no
torch; the class, whose module does, is imported when a paradigm is made
(:func:`paradigm_class`, :func:`make_paradigm`).

A paradigm from outside the package is an entry point in group
``raypriv.paradigms`` (loaded on first use, so that importing raypriv imports
no plugin), a ``module:Class`` reference written in the config, or a class
passed to :func:`register`.  An entry point or a reference records its class
and distribution version (:data:`PLUGINS`), which enter its recipe hash.

To audit one paradigm at several settings in one run, list variants
``base@tag`` with their own options (see :func:`paradigm_entry`).
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import inspect
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from raypriv.config import build_dataclass
from raypriv.errors import RayprivError
from raypriv.synth.base import NoOptions, Paradigm
from raypriv.synth.options import UNHASHED_AT

if TYPE_CHECKING:
    from raypriv.config import ExperimentConfig


@dataclass(frozen=True)
class ParadigmEntry:
    """One paradigm as the registry knows it: where its class is, and its options class.

    A built-in names both as ``"module:Class"`` (``options`` None: no
    options) and is imported on demand; a plugin's class is given (``cls``).
    """

    implementation: str  # "module:Class" of the Paradigm subclass
    options: str | None = None  # "module:Class" of its Options dataclass (a torch-free module); None: NoOptions
    cls: type[Paradigm] | None = None  # the class itself, for a plugin (a built-in's is imported by load())

    @property
    def qualified_name(self) -> str:
        """``module.Class`` of the paradigm (what a plugin's recipe hash records)."""
        return self.implementation.replace(":", ".")

    @property
    def Options(self) -> type:  # noqa: N802 - named like Paradigm.Options, which it is
        """The options dataclass, without importing the paradigm's class."""
        if self.cls is not None:
            return self.cls.Options
        if self.options is None:
            return NoOptions
        module, _, attribute = self.options.partition(":")
        return getattr(importlib.import_module(module), attribute)

    def check_raw_options(self, raw: dict[str, Any], where: str) -> None:
        """The paradigm's check of its options as written (:meth:`Paradigm.check_raw_options`)."""
        if self.cls is not None:
            self.cls.check_raw_options(raw, where)
        else:
            check = getattr(self.Options, "check_raw", None)
            if check is not None:
                check(raw, where)

    def load(self) -> type[Paradigm]:
        """The paradigm's class (a built-in's module is imported now: it imports torch)."""
        if self.cls is not None:
            return self.cls
        cls = _import_class(self.implementation, f"built-in paradigm {self.implementation}")
        if cls.Options is not self.Options:
            raise TypeError(f"{self.implementation}.Options is not {self.options}, which the registry names for it")
        return cls


# The built-in paradigms.  A new one is a Paradigm subclass in this package, its Options
# dataclass in a module that does not import torch, and one line here.
BUILTINS: dict[str, ParadigmEntry] = {
    "coreset": ParadigmEntry("raypriv.synth.coreset:Coreset", "raypriv.synth.options:CoresetOptions"),
    "dfkd": ParadigmEntry("raypriv.synth.dfkd:DataFreeKD", "raypriv.synth.options:DFKDOptions"),
    "diffusion": ParadigmEntry(
        "raypriv.synth.diffusion.paradigm:Diffusion", "raypriv.synth.diffusion.options:DiffusionOptions"
    ),
    "distill": ParadigmEntry("raypriv.synth.distill.matching:Distill", "raypriv.synth.distill.options:DistillOptions"),
    "dpgen-llm": ParadigmEntry("raypriv.synth.dpgen.llm:DPGenLLM", "raypriv.synth.dpgen.options:DPGenLLMOptions"),
    "dpgen-marginals": ParadigmEntry(
        "raypriv.synth.dpgen.marginals:DPGenMarginals", "raypriv.synth.dpgen.options:DPGenMarginalsOptions"
    ),
    "dpsgd": ParadigmEntry("raypriv.synth.dpsgd:DPSGD", "raypriv.synth.options:DPSGDOptions"),
    "external": ParadigmEntry("raypriv.synth.external:ExternalCommand", "raypriv.synth.options:ExternalOptions"),
    "real": ParadigmEntry("raypriv.synth.real:RealData"),
}

# Every paradigm known by name: the built-ins, then entry points (once loaded) and registered classes.
PARADIGMS: dict[str, ParadigmEntry] = dict(BUILTINS)


def qualified_name(cls: type) -> str:
    """``module.Class``: what a plugin's recipe hash records."""
    return f"{cls.__module__}.{cls.__qualname__}"


def _reference(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def register(cls: type[Paradigm]) -> type[Paradigm]:
    """Class decorator: make a paradigm available under ``cls.name``; a name another class holds is refused."""
    existing = PARADIGMS.get(cls.name)
    if existing is not None and existing.implementation != _reference(cls):
        raise RayprivError(
            f"paradigm name {cls.name!r} of {qualified_name(cls)} is already taken by {existing.qualified_name}; "
            "give the class another name"
        )
    PARADIGMS[cls.name] = ParadigmEntry(_reference(cls), cls=cls)
    return cls


# ------------------------------------------------------------------ plugins

ENTRY_POINT_GROUP = "raypriv.paradigms"
PLUGINS: dict[str, dict[str, Any]] = {}  # entry-point name or module:Class -> its identity (plugin_identity)
_REFERENCED: dict[str, ParadigmEntry] = {}  # module:Class -> its entry
_entry_points_loaded = False


def _distribution_version(cls: type, entry_point: importlib.metadata.EntryPoint | None = None) -> tuple[str | None, str | None]:
    """(distribution, version) that installed ``cls``; a bare module's ``__version__`` if none did."""
    dist = entry_point.dist if entry_point is not None else None
    if dist is None:
        top = cls.__module__.split(".")[0]
        names = importlib.metadata.packages_distributions().get(top, [])
        if names:
            dist = importlib.metadata.distribution(names[0])
    if dist is not None:
        return dist.metadata["Name"], dist.version
    version = getattr(importlib.import_module(cls.__module__), "__version__", None)
    return None, None if version is None else str(version)


def _import_class(reference: str, where: str) -> type[Paradigm]:
    """The :class:`Paradigm` subclass ``module:Class`` names, or an error naming what went wrong."""
    module_name, _, attribute = reference.partition(":")
    if not module_name or not attribute:
        raise RayprivError(f"{where}: {reference!r} must be 'module:Class' (e.g. 'mypkg.mix:MixupSynth')")
    try:
        target: Any = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - any error of user code is reported the same way
        raise RayprivError(
            f"{where}: module {module_name!r} does not import ({type(exc).__name__}: {exc}); install the package "
            "that provides it or put it on PYTHONPATH (on Ray: ship it with `ray job submit --working-dir` or "
            "runtime_env py_modules)"
        ) from None
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise RayprivError(f"{where}: module {module_name!r} has no attribute {attribute!r}; check the class name")
        target = getattr(target, part)
    if not (isinstance(target, type) and issubclass(target, Paradigm)):
        raise RayprivError(
            f"{where}: {reference} is not a subclass of raypriv.Paradigm (it is {target!r}); "
            "subclass raypriv.Paradigm and implement synthesize()"
        )
    if inspect.isabstract(target):
        raise RayprivError(f"{where}: {reference} does not implement {sorted(target.__abstractmethods__)}")
    return target


def load_entry_points() -> None:
    """Register the paradigms of group ``raypriv.paradigms`` (once); an entry point may not shadow a built-in."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = entry_point.dist
        source = f"{dist.metadata['Name']} {dist.version}" if dist is not None else "an unknown distribution"
        if entry_point.name in BUILTINS:
            raise RayprivError(
                f"entry point {entry_point.name!r} = {entry_point.value!r} in group {ENTRY_POINT_GROUP!r} (from "
                f"{source}) collides with the built-in paradigm {entry_point.name!r}; rename the entry point in that "
                "package's pyproject.toml, or uninstall it"
            )
        cls = _import_class(entry_point.value, f"entry point {entry_point.name!r} (from {source})")
        PARADIGMS[entry_point.name] = ParadigmEntry(_reference(cls), cls=cls)
        distribution, version = _distribution_version(cls, entry_point)
        PLUGINS[entry_point.name] = {"class": qualified_name(cls), "distribution": distribution, "version": version}
    _entry_points_loaded = True


def _resolve_base(base: str, name: str) -> ParadigmEntry | None:
    """The entry behind a base name: a built-in or registered one, an entry point, or a ``module:Class`` reference."""
    if ":" in base:
        if base not in _REFERENCED:
            cls = _import_class(base, f"paradigm {name!r}")
            distribution, version = _distribution_version(cls)
            _REFERENCED[base] = ParadigmEntry(_reference(cls), cls=cls)
            PLUGINS[base] = {"class": qualified_name(cls), "distribution": distribution, "version": version}
        return _REFERENCED[base]
    load_entry_points()
    return PARADIGMS.get(base)


def plugin_identity(name: str) -> dict[str, Any] | None:
    """The class and distribution version of plugin paradigm (or variant) ``name``; None for a built-in."""
    base = name.partition(VARIANT_SEPARATOR)[0]
    entry = _resolve_base(base, name)
    if entry is None or base not in PLUGINS:
        return None
    return dict(PLUGINS[base])


# ------------------------------------------------------------------ names and variants

# A variant of a paradigm: ``base@tag`` (e.g. ``dpgen-marginals@eps1``).
VARIANT_SEPARATOR = "@"
_VARIANT_TAG = re.compile(r"[A-Za-z0-9_.-]+")


def paradigm_names() -> list[str]:
    """Every paradigm known by name (built-ins, entry points, registered classes), sorted."""
    load_entry_points()
    return sorted(PARADIGMS)


def paradigm_entry(name: str) -> ParadigmEntry:
    """The registry's entry for ``name``: a known name, a ``module:Class`` reference, or a variant ``base@tag`` of one.

    A variant runs its base paradigm with its own options,
    ``paradigm_options["base@tag"]``, so one run can audit a paradigm at
    several settings over the same keep matrix (``dpgen-marginals@eps1`` and
    ``dpgen-marginals@eps8`` side by side in one table).  Everywhere else a
    variant is a paradigm of its own: its own recipe hash, results, random
    streams and row in the metrics.  The tag may hold letters, digits and
    ``_.-`` (it becomes part of file paths).  A built-in's class is not
    imported here.
    """
    base, separator, tag = name.partition(VARIANT_SEPARATOR)
    entry = _resolve_base(base, name)
    if entry is None:
        raise RayprivError(
            f"paradigm {name!r} is not known; choose from {sorted(PARADIGMS)} (or a variant "
            f"'<paradigm>{VARIANT_SEPARATOR}<tag>', e.g. 'dpgen-marginals{VARIANT_SEPARATOR}eps1')"
        )
    if separator and not _VARIANT_TAG.fullmatch(tag):
        raise RayprivError(
            f"paradigm {name!r}: the variant tag {tag!r} must be letters, digits, '_', '.' or '-' "
            f"(e.g. '{base}{VARIANT_SEPARATOR}eps1')"
        )
    return entry


def paradigm_class(name: str) -> type[Paradigm]:
    """The class of paradigm (or variant) ``name`` (see :func:`paradigm_entry`); a built-in's module is imported."""
    return paradigm_entry(name).load()


def is_known_paradigm(name: str) -> bool:
    """Whether ``name`` is a known paradigm or a well-formed variant of one."""
    try:
        paradigm_entry(name)
    except RayprivError:
        return False
    return True


def build_options(name: str, raw: dict | None) -> Any:
    """Validate the options of paradigm (or variant) ``name`` (from ``paradigm_options.<name>``)."""
    entry = paradigm_entry(name)
    entry.check_raw_options(raw or {}, f"paradigm_options.{name}")
    try:
        return build_dataclass(entry.Options, raw or {}, f"paradigm_options.{name}")
    except RayprivError as exc:
        # An Options class names its fields after its paradigm; a variant's error names the variant.
        base = name.partition(VARIANT_SEPARATOR)[0]
        own_name = getattr(entry.cls, "name", base) if entry.cls is not None else base
        base_prefix, own_prefix = f"paradigm_options.{own_name}.", f"paradigm_options.{name}."
        if name == own_name or base_prefix not in str(exc):
            raise
        raise RayprivError(str(exc).replace(base_prefix, own_prefix)) from None


def make_paradigm(config: ExperimentConfig, name: str) -> Paradigm:
    """The paradigm (or variant) ``name`` with the options the config gives it."""
    return paradigm_class(name)(build_options(name, config.paradigm_options.get(name)))


def resolved_options(config: ExperimentConfig, name: str) -> dict[str, Any]:
    """Paradigm ``name``'s options with defaults filled in (what its recipe hash covers).

    A field declared with ``metadata={UNHASHED_AT: value}`` is left out while
    it equals ``value`` (:data:`raypriv.synth.options.UNHASHED_AT`); any other value enters the
    hash as usual.
    """
    options = build_options(name, config.paradigm_options.get(name))
    resolved = dataclasses.asdict(options)
    for option in dataclasses.fields(options):
        if UNHASHED_AT in option.metadata and resolved[option.name] == option.metadata[UNHASHED_AT]:
            del resolved[option.name]
    return resolved
