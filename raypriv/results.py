"""Typed results: what an audit computes, as it crosses module boundaries and as ``metrics.json`` stores it.

* :class:`AttackMetrics`: one attack on one paradigm (AUC, TPR at low FPR,
  balanced accuracy, the ε lower bound, the pair counts).
* :class:`ParadigmMetrics`: one paradigm (utility, cost, what the paradigm
  reported, e.g. an accounted ε) and its attacks, in run order.
* :func:`metrics_to_json` / :func:`metrics_from_json`: the one place that
  defines ``metrics.json``'s layout.  The file keeps the layout of earlier
  runs (``{paradigm: {"test_acc": ..., "info": {...}, "<attack>": {...}}}``),
  so runs written before these types read back unchanged.

The reader of a finished run directory, :class:`raypriv.reader.Run`
(``raypriv.load_run``), hands these out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from raypriv.errors import RayprivError
from raypriv.metrics import LOW_FPRS

# metrics.json's one-run ε bounds (raypriv.epsilon): the loss attack's entry only; absent (None) elsewhere.
ONE_RUN_FIELDS = ("eps_one_run", "gdp_mu_bound", "eps_gdp_bound")
THREAT_MODELS = ("model", "release")  # an attack queries the trained model, or reads the released synthetic set
# metrics.json's per-paradigm numbers that come from the model rows; every other key but "info" is an attack.
PARADIGM_FIELDS = ("test_acc", "test_acc_std", "n_models", "synth_seconds_mean", "train_seconds_mean")


@dataclass(frozen=True)
class AttackMetrics:
    """One attack's numbers on one paradigm, over every (target model, audit sample) pair.

    ``tpr`` maps each read-out of :data:`raypriv.metrics.LOW_FPRS` (``"tpr@0.1%fpr"``,
    ``"tpr@1%fpr"``) to the TPR there.  ``n_in`` / ``n_out``: the IN and OUT
    pairs the ROC was computed on.  ``extra``: any further number a newer
    scorer wrote, kept so that a read-write round trip loses nothing.
    ``eps_one_run``, ``gdp_mu_bound``, ``eps_gdp_bound``: the one-run bounds
    (:mod:`raypriv.epsilon`), computed for the ``loss`` attack only; None for
    the other attacks and in a metrics.json written before 2026-12-05.
    ``tpr_readout``: how ``tpr`` was read off the ROC curve
    (:data:`raypriv.metrics.TPR_READOUTS`), or None in a metrics.json from
    before it was recorded (2026-12-05), which was read by linear
    interpolation (:attr:`readout`); None is written back as absent.
    ``threat_model``: ``"model"`` (the attack queries the trained model) or
    ``"release"`` (it reads the released synthetic set, :mod:`raypriv.release`);
    metrics.json stores it for release attacks only, so an entry without it
    (every file written before 2026-12-05) reads as ``"model"``.
    """

    auc: float
    balanced_acc: float
    tpr: Mapping[str, float]
    n_in: int
    n_out: int
    eps_lower_bound: float
    extra: Mapping[str, float] = field(default_factory=dict)
    tpr_readout: str | None = None
    eps_one_run: float | None = None
    gdp_mu_bound: float | None = None
    eps_gdp_bound: float | None = None
    threat_model: str = "model"

    def __post_init__(self) -> None:
        if self.threat_model not in THREAT_MODELS:
            raise RayprivError(f"threat_model={self.threat_model!r} is not known; choose one of {list(THREAT_MODELS)}")

    @property
    def readout(self) -> str:
        """The TPR read-out, ``"interpolate"`` where metrics.json did not record one."""
        return self.tpr_readout or "interpolate"

    def value(self, name: str) -> float:
        """A number by its metrics.json name (``"auc"``, ``"tpr@1%fpr"``, ``"eps_lower_bound"``, ...)."""
        flat = self.to_json()
        if name not in flat:
            raise KeyError(f"attack metrics have no {name!r}; they have {sorted(flat)}")
        return float(flat[name])

    __getitem__ = value  # metrics["tpr@1%fpr"]: the same number by its metrics.json name

    def to_json(self) -> dict[str, float | int | str]:
        return {
            "auc": self.auc,
            "balanced_acc": self.balanced_acc,
            **self.tpr,
            "n_in": self.n_in,
            "n_out": self.n_out,
            "eps_lower_bound": self.eps_lower_bound,
            **self.extra,
            **({"tpr_readout": self.tpr_readout} if self.tpr_readout is not None else {}),
            **{name: value for name in ONE_RUN_FIELDS if (value := getattr(self, name)) is not None},
            **({"threat_model": self.threat_model} if self.threat_model != "model" else {}),
        }

    def with_threat_model(self, threat_model: str) -> AttackMetrics:
        """These metrics marked as measured under ``threat_model``."""
        from dataclasses import replace

        return replace(self, threat_model=threat_model)

    @classmethod
    def from_json(cls, raw: Mapping[str, Any], where: str = "metrics.json") -> AttackMetrics:
        if not isinstance(raw, Mapping):
            raise RayprivError(f"{where}: an attack entry is {type(raw).__name__}, not a mapping; rerun the audit to rescore")
        try:
            known = {"auc", "balanced_acc", "n_in", "n_out", "eps_lower_bound", "tpr_readout", "threat_model", *LOW_FPRS,
                     *ONE_RUN_FIELDS}
            return cls(
                auc=float(raw["auc"]),
                balanced_acc=float(raw["balanced_acc"]),
                tpr={key: float(raw[key]) for key in LOW_FPRS},
                n_in=int(raw["n_in"]),
                n_out=int(raw["n_out"]),
                eps_lower_bound=float(raw["eps_lower_bound"]),
                extra={key: float(value) for key, value in raw.items() if key not in known},
                tpr_readout=None if raw.get("tpr_readout") is None else str(raw["tpr_readout"]),
                **{name: None if raw.get(name) is None else float(raw[name]) for name in ONE_RUN_FIELDS},
                threat_model=str(raw.get("threat_model", "model")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise RayprivError(f"{where}: an attack entry is malformed ({exc!r}); rerun the audit to rescore") from None


@dataclass(frozen=True)
class ParadigmMetrics:
    """One paradigm of a run: utility and cost from its model rows, what it reported, and its attacks.

    ``info``: the mean over models of the numbers the paradigm reported
    (``epsilon`` and ``delta`` for the DP paradigms), and the strings every
    model reported alike (the ``accountant`` beside ε).  ``attacks``: name ->
    :class:`AttackMetrics`, in the run's attack order.
    """

    test_acc: float
    test_acc_std: float
    n_models: int
    synth_seconds_mean: float
    train_seconds_mean: float
    info: Mapping[str, float | str] = field(default_factory=dict)
    attacks: Mapping[str, AttackMetrics] = field(default_factory=dict)

    @property
    def delta(self) -> float:
        """The δ the paradigm accounted (0 for one that claims no DP): the ε bound's δ."""
        return float(self.info.get("delta", 0.0))

    def with_attacks(self, attacks: Mapping[str, AttackMetrics]) -> ParadigmMetrics:
        return ParadigmMetrics(self.test_acc, self.test_acc_std, self.n_models, self.synth_seconds_mean,
                               self.train_seconds_mean, dict(self.info), dict(attacks))

    def to_json(self) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "test_acc": self.test_acc,
            "test_acc_std": self.test_acc_std,
            "n_models": self.n_models,
            "synth_seconds_mean": self.synth_seconds_mean,
            "train_seconds_mean": self.train_seconds_mean,
        }
        if self.info:
            entry["info"] = dict(self.info)
        entry.update({name: metrics.to_json() for name, metrics in self.attacks.items()})
        return entry

    @classmethod
    def from_json(cls, raw: Mapping[str, Any], where: str = "metrics.json") -> ParadigmMetrics:
        if not isinstance(raw, Mapping):
            raise RayprivError(f"{where}: a paradigm entry is {type(raw).__name__}, not a mapping; rerun the audit to rescore")
        try:
            info = {key: value if isinstance(value, str) else float(value) for key, value in (raw.get("info") or {}).items()}
            rows_part = cls(float(raw["test_acc"]), float(raw["test_acc_std"]), int(raw["n_models"]),
                            float(raw["synth_seconds_mean"]), float(raw["train_seconds_mean"]), info)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise RayprivError(f"{where}: a paradigm entry is malformed ({exc!r}); rerun the audit to rescore") from None
        return rows_part.with_attacks({
            name: AttackMetrics.from_json(value, f"{where} [{name}]")
            for name, value in raw.items()
            if name not in PARADIGM_FIELDS and name != "info"
        })


RunMetrics = dict[str, ParadigmMetrics]  # paradigm -> its metrics, in the run's paradigm order


def metrics_to_json(metrics: Mapping[str, ParadigmMetrics]) -> dict[str, Any]:
    """``metrics.json``'s mapping from typed metrics."""
    return {paradigm: entry.to_json() for paradigm, entry in metrics.items()}


def metrics_from_json(raw: Any, where: str = "metrics.json") -> RunMetrics:
    """Typed metrics from ``metrics.json``'s mapping; a malformed file is a RayprivError naming it."""
    if not isinstance(raw, Mapping):
        raise RayprivError(f"{where} holds {type(raw).__name__}, not a mapping of paradigms; rerun the audit to rescore")
    return {str(paradigm): ParadigmMetrics.from_json(entry, f"{where} [{paradigm}]") for paradigm, entry in raw.items()}

