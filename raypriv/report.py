"""What an audit prints, and the comparison report of finished runs.

:func:`format_summary` is the text block ``raypriv audit`` prints.  The rest
is ``raypriv report RUN_DIR [RUN_DIR ...]``: :func:`build_report` reads finished
run directories and computes, per paradigm, the privacy metrics with 95%
intervals, a worded verdict, utility and cost, paired comparisons between
paradigms, the most vulnerable audit samples beside their nearest synthetic
neighbours, and the plots; :func:`write_report` writes them as one
self-contained ``report.html`` and a ``report.md``.
"""

from __future__ import annotations

import base64
import io
import itertools
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from raypriv.config import ExperimentConfig
from raypriv.errors import RayprivError
from raypriv.metrics import (
    LOW_FPRS,
    bootstrap_roc_metrics,
    bootstrap_weights,
    paired_bootstrap_difference,
    percentile_interval,
    roc,
    tpr_interval,
)
from raypriv.seeding import numpy_rng
from raypriv.store import RunStore


def summary_frame(metrics: dict[str, Any]) -> pd.DataFrame:
    """One row per (paradigm, attack): AUC, TPR at 1% and 0.1% FPR, test accuracy."""
    rows = []
    for paradigm, entry in metrics.items():
        for attack, result in entry.items():
            if not (isinstance(result, dict) and "auc" in result):
                continue  # test_acc, timings, the paradigm's info
            rows.append(
                {
                    "paradigm": paradigm,
                    "attack": attack,
                    "AUC": result["auc"],
                    "TPR@1%FPR": result["tpr@1%fpr"],
                    "TPR@0.1%FPR": result["tpr@0.1%fpr"],
                    "bal.acc": result["balanced_acc"],
                    "test acc": entry["test_acc"],
                }
            )
    return pd.DataFrame(rows)


def format_summary(config: ExperimentConfig, metrics: dict[str, Any], models: pd.DataFrame, wall_seconds: float) -> str:
    """The text block ``raypriv audit`` prints at the end (also saved as summary.txt)."""
    frame = summary_frame(metrics)
    table = frame.to_string(
        index=False,
        formatters={
            "AUC": "{:.3f}".format,
            "TPR@1%FPR": "{:.2%}".format,
            "TPR@0.1%FPR": "{:.2%}".format,
            "bal.acc": "{:.3f}".format,
            "test acc": "{:.3f}".format,
        },
    )
    lines = [
        f"raypriv audit '{config.name}': {config.dataset.name}, {config.n_models} models x "
        f"{config.audit.n_audit} audit samples (canary={config.audit.canary}), queries={','.join(config.queries)}",
        "",
        table,
        "",
    ]
    for paradigm, entry in metrics.items():
        rows = models[models.paradigm == paradigm]
        info = entry.get("info", {})
        accounted = f"; accounted ε={info['epsilon']:.2f} (δ={info['delta']:.1e})" if "epsilon" in info else ""
        lines.append(
            f"{paradigm}: test acc {entry['test_acc']:.3f} ± {entry['test_acc_std']:.3f}; per model "
            f"{rows.synth_seconds.mean():.2f}s synthesis + {rows.train_seconds.mean():.2f}s training "
            f"({(rows.synth_seconds + rows.train_seconds).sum():.0f}s of worker time in all){accounted}"
        )
    lines.append(f"total time: {wall_seconds:.1f}s")
    return "\n".join(lines) + "\n"


# ============================================================ the comparison report
#
# ``raypriv report RUN_DIR [RUN_DIR ...]`` reads finished run directories (never
# the models) and writes ``report.html`` (self-contained: CSS inline, plots as
# base64 PNG) and ``report.md`` (the same tables; plots as PNG files beside it).
# Everything below is computed from scores.parquet, metrics.json,
# models.parquet, keep.npy, audit.parquet and the stored synthetic sets.

# The headline attack when --attack is not given: fixed in advance, not picked on the data
# (picking the best of five attacks on the same scores would inflate every verdict).
ATTACK_PREFERENCE = ("lira_online", "rmia", "lira_online_fixed", "lira_offline", "lira_offline_fixed", "loss")
HISTOGRAM_PREFERENCE = ("lira_online",)  # "per-sample LiRA scores", whatever the headline attack
MIN_MODELS = 16  # below this, LiRA has at most 7 shadows a side: too weak to call "no leakage"
MIN_FALSE_POSITIVES = 5.0  # an FPR level counts only where >= 5 OUT pairs may pass the threshold
MAX_UNDETECTED_MULTIPLE = 10.0  # a null result that cannot exclude a 10x-chance leak is not a result
TOP_SAMPLES = 20
_SCORE_KEYS = ("paradigm", "model_id", "sample_id", "is_in")


# ---------------------------------------------------------------- the verdict


@dataclass(frozen=True)
class LevelEvidence:
    """TPR measured at one FPR level, with its 95% interval."""

    fpr: float
    tpr: float
    low: float
    high: float


@dataclass(frozen=True)
class VerdictInput:
    """The numbers a verdict is worded from (see :func:`verdict`)."""

    n_models: int
    n_audit: int
    n_out: int  # OUT (model, sample) pairs the FPR is measured on
    attack: str
    levels: tuple[LevelEvidence, ...]
    accounted_epsilon: float | None = None
    accounted_delta: float | None = None
    eps_lower_bound: float | None = None


def _percent(value: float) -> str:
    if not np.isfinite(value):
        return "n/a"
    return f"{value:.1%}" if value >= 0.01 or value == 0 else f"{value:.2%}"


def _multiple(value: float) -> str:
    if not np.isfinite(value):
        return "n/a"
    return f"{value:.1f}×" if value < 10 else f"{value:.0f}×"


def _fpr_name(fpr: float) -> str:
    return f"TPR@{fpr:.1%}FPR".replace(".0%", "%")


def verdict(evidence: VerdictInput) -> tuple[str, str]:
    """One line per paradigm, worded from the numbers; returns ``(kind, text)``.

    ``kind`` is ``"leaks"``, ``"no-leak-detected"`` or ``"too-few"``.

    * **leaks** when, at an FPR level the audit can measure (at least one
      OUT pairs may pass its threshold), the lower end of the TPR's 95% interval lies above
      chance (TPR = FPR).  The lowest such level is quoted, as a multiple of
      chance.  A leak found with few models stands: a weak attack that still
      succeeds is evidence.
    * **too few models to conclude** when nothing is detected but the audit
      could not have detected much: fewer than :data:`MIN_MODELS` models, no
      measurable level, or an interval whose upper end still allows a
      :data:`MAX_UNDETECTED_MULTIPLE`-fold leak.
    * otherwise **no leakage detected above chance at this audit's power**,
      with the interval's upper end: what the audit rules out, no more.

    A paradigm with an accounted ε gets "DP with ε=…" beside it (and a warning
    if the empirical lower bound exceeds it).  The word "private" is never
    used: an audit can show leakage, not its absence.
    """
    power = f"{evidence.n_models} models × {evidence.n_audit} audit samples, {evidence.attack}"
    levels = sorted(evidence.levels, key=lambda level: level.fpr)
    measurable = [level for level in levels if level.fpr * evidence.n_out >= MIN_FALSE_POSITIVES]
    leaking = [level for level in measurable if np.isfinite(level.low) and level.low > level.fpr]
    if leaking:
        level = leaking[0]
        kind = "leaks"
        text = (
            f"leaks: {_fpr_name(level.fpr)} {_percent(level.tpr)} = {_multiple(level.tpr / level.fpr)} chance "
            f"(95% CI {_multiple(level.low / level.fpr)}–{_multiple(level.high / level.fpr)}; {power})"
        )
        if evidence.n_models < MIN_MODELS:
            text += f"; with under {MIN_MODELS} models the attack is weak, so the leak may be larger"
    else:
        widest = measurable[-1] if measurable else None
        if widest is None:
            kind = "too-few"
            text = (
                f"too few models to conclude: no leakage detected, but {evidence.n_out} OUT pairs cannot "
                f"measure {_fpr_name(levels[-1].fpr)} or below ({power})"
                if levels
                else f"too few models to conclude ({power})"
            )
        elif evidence.n_models < MIN_MODELS or widest.high / widest.fpr > MAX_UNDETECTED_MULTIPLE:
            kind = "too-few"
            text = (
                f"too few models to conclude: no leakage detected, but this audit cannot rule out "
                f"{_fpr_name(widest.fpr)} up to {_percent(widest.high)} = {_multiple(widest.high / widest.fpr)} "
                f"chance (95% CI upper bound; {power}); audit with ≥ {MIN_MODELS} models and more samples"
            )
        else:
            kind = "no-leak-detected"
            text = (
                f"no leakage detected above chance at this audit's power: {_fpr_name(widest.fpr)} "
                f"{_percent(widest.tpr)}, 95% CI upper bound {_percent(widest.high)} = "
                f"{_multiple(widest.high / widest.fpr)} chance ({power}); an empirical audit with these "
                "canaries, not a guarantee"
            )
    if evidence.accounted_epsilon is not None:
        delta = f", δ={evidence.accounted_delta:.1e}" if evidence.accounted_delta else ""
        text += f"; DP with ε={evidence.accounted_epsilon:.2f}{delta} (accounted)"
        if evidence.eps_lower_bound is not None:
            text += f", empirical ε lower bound {evidence.eps_lower_bound:.2f}"
            if evidence.eps_lower_bound > evidence.accounted_epsilon:
                text += " EXCEEDS the accounted ε: the DP training or its accounting is wrong"
    return kind, text


# ------------------------------------------------------------- loading runs


@dataclass
class RunData:
    """One finished run directory, as the report reads it."""

    uri: str
    name: str
    store: RunStore
    config: ExperimentConfig | None  # None if the stored config no longer validates
    raw_config: dict[str, Any]
    manifest: dict[str, Any]
    keep: np.ndarray
    audit: pd.DataFrame  # indexed by sample_id order
    models: pd.DataFrame
    metrics: dict[str, Any]


def load_run(run_dir: str) -> RunData:
    """Read what a report needs from a finished run (``raypriv audit``'s --out)."""
    import yaml

    from raypriv.config import config_from_dict

    store = RunStore(str(run_dir))
    if not store.exists("run.json"):
        raise RayprivError(f"{store.uri} holds no raypriv run (no run.json); give the --out of a finished audit")
    for name in ("metrics.json", "scores.parquet", "models.parquet", "keep.npy", "audit.parquet"):
        if not store.exists(name):
            raise RayprivError(
                f"{store.path(name)} is missing: the audit in {store.uri} has not finished scoring; "
                f"run `raypriv status {store.uri}` and rerun `raypriv audit` with its config and --out"
            )
    raw = yaml.safe_load(store.read_bytes("config.yaml")) if store.exists("config.yaml") else {}
    try:
        config = config_from_dict(raw or {})
    except RayprivError:
        config = None
    audit = store.read_table("audit.parquet").to_pandas().sort_values("sample_id").reset_index(drop=True)
    keep = store.read_npy("keep.npy")
    if len(audit) != keep.shape[1] or not np.array_equal(audit.sample_id.to_numpy(), np.arange(keep.shape[1])):
        raise RayprivError(f"{store.uri}: audit.parquet and keep.npy disagree on the audit samples; rerun the audit in a new --out")
    name = str(run_dir).rstrip("/").rsplit("/", 1)[-1] or str(run_dir)
    return RunData(
        uri=store.uri,
        name=name,
        store=store,
        config=config,
        raw_config=raw or {},
        manifest=store.read_json("run.json"),
        keep=keep,
        audit=audit,
        models=store.read_table("models.parquet").to_pandas(),
        metrics=store.read_json("metrics.json"),
    )


def attacks_of(metrics_entry: dict[str, Any]) -> list[str]:
    """Attack names of one paradigm's metrics.json entry (whatever attacks the run had)."""
    return [key for key, value in metrics_entry.items() if isinstance(value, dict) and "auc" in value]


def load_scores(run: RunData, paradigm: str, attacks: list[str]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``is_in`` and each attack's scores of one paradigm as ``(n_models, n_audit)`` matrices.

    Read by column name and placed by ``(model_id, sample_id)``, so neither
    the row order nor the row groups of scores.parquet matter.
    """
    import pyarrow.parquet as pq

    n_models, n_audit = run.keep.shape
    path = run.store.path("scores.parquet")
    available = pq.read_schema(path, filesystem=run.store.fs).names
    missing = [a for a in attacks if a not in available]
    if missing:
        raise RayprivError(f"{path} has no column for attack(s) {missing}; rerun `raypriv audit` to rescore")
    table = pq.read_table(
        path, filesystem=run.store.fs, columns=[*_SCORE_KEYS, *attacks], filters=[("paradigm", "==", paradigm)]
    )
    model = table.column("model_id").to_numpy().astype(np.int64)
    sample = table.column("sample_id").to_numpy().astype(np.int64)
    if len(model) != n_models * n_audit or model.min(initial=0) < 0 or model.max(initial=0) >= n_models \
            or sample.max(initial=0) >= n_audit:
        raise RayprivError(
            f"{path} holds {len(model)} rows for {paradigm}, expected {n_models} models × {n_audit} samples; "
            "rerun `raypriv audit` with the same config and --out to rescore"
        )
    filled = np.zeros((n_models, n_audit), dtype=bool)
    filled[model, sample] = True
    if not filled.all():
        raise RayprivError(f"{path}: some (model, sample) pairs of {paradigm} are missing or repeated; rescore the run")
    is_in = np.zeros((n_models, n_audit), dtype=bool)
    is_in[model, sample] = table.column("is_in").to_numpy(zero_copy_only=False)
    scores = {}
    for attack in attacks:
        matrix = np.empty((n_models, n_audit), dtype=np.float64)
        matrix[model, sample] = table.column(attack).to_numpy(zero_copy_only=False)
        scores[attack] = matrix
    return is_in, scores


def audit_split_mismatch(a: RunData, b: RunData) -> str | None:
    """Why two runs' audit samples cannot be paired, or None if they can (same samples, labels, membership)."""
    if a.uri == b.uri:
        return None
    if a.keep.shape != b.keep.shape:
        return f"keep.npy shapes differ ({a.keep.shape} vs {b.keep.shape})"
    if not np.array_equal(a.keep, b.keep):
        return "keep.npy differs (different seed or model count)"
    columns = ["sample_id", "dataset_index", "true_label", "label", "canary"]
    if not a.audit[columns].reset_index(drop=True).equals(b.audit[columns].reset_index(drop=True)):
        return "audit.parquet differs (different audit samples or canary labels)"
    dataset_a, dataset_b = a.raw_config.get("dataset"), b.raw_config.get("dataset")
    if dataset_a != dataset_b:
        return f"the datasets differ ({dataset_a} vs {dataset_b})"
    return None


# ------------------------------------------------------------ the computations


@dataclass
class ParadigmResult:
    """One paradigm of one run, with everything the report shows about it."""

    label: str
    run: RunData
    paradigm: str
    entry: dict[str, Any]  # its metrics.json entry
    is_in: np.ndarray
    scores: dict[str, np.ndarray]
    bootstrap: dict[str, np.ndarray] = field(default_factory=dict)  # headline attack replicates
    verdict_kind: str = ""
    verdict: str = ""

    @property
    def models(self) -> pd.DataFrame:
        return self.run.models[self.run.models.paradigm == self.paradigm]

    @property
    def accounted(self) -> tuple[float | None, float | None]:
        info = self.entry.get("info", {})
        return info.get("epsilon"), info.get("delta")


@dataclass
class Comparison:
    a: str
    b: str
    attack: str
    results: dict[str, dict[str, float]]  # metric -> paired_bootstrap_difference output

    def reading(self, metric: str = "tpr@1%fpr") -> str:
        result = self.results[metric]
        if not np.isfinite(result["low"]):
            return "not comparable"
        if result["low"] > 0:
            return f"{self.a} leaks more (significant)"
        if result["high"] < 0:
            return f"{self.b} leaks more (significant)"
        return "no significant difference"


@dataclass
class Report:
    runs: list[RunData]
    results: list[ParadigmResult]
    attack: str
    histogram_attack: str
    n_boot: int
    comparisons: list[Comparison]
    skipped_comparisons: list[str]
    vulnerable: dict[str, pd.DataFrame]
    figures: dict[str, bytes]  # name -> PNG
    figure_notes: dict[str, str]


def _labels(pairs: list[tuple[RunData, str]]) -> list[str]:
    """Paradigm names, or ``run:paradigm`` where two runs share a paradigm name."""
    run_names: dict[str, str] = {}
    for run, _ in pairs:
        if run.uri in run_names:
            continue
        candidate, suffix = run.name, 2
        while candidate in run_names.values():
            candidate, suffix = f"{run.name}#{suffix}", suffix + 1
        run_names[run.uri] = candidate
    counts = pd.Series([p for _, p in pairs]).value_counts()
    return [f"{run_names[run.uri]}:{p}" if counts[p] > 1 else p for run, p in pairs]


def choose_attack(results: list[ParadigmResult]) -> str:
    """The attack the report leads with: the first of :data:`ATTACK_PREFERENCE` every paradigm has.

    One attack for every paradigm keeps the comparison paired, and a choice
    made before looking at the scores keeps the verdicts' intervals honest.
    """
    common = [a for a in attacks_of(results[0].entry) if all(a in attacks_of(r.entry) for r in results)]
    if not common:
        raise RayprivError("the runs share no attack; rerun them with a common `attacks` list")
    return next((a for a in ATTACK_PREFERENCE if a in common), common[0])


def _evidence(result: ParadigmResult, attack: str) -> VerdictInput:
    metrics = result.entry[attack]
    levels = []
    for key, fpr in LOW_FPRS.items():
        low, high = percentile_interval(result.bootstrap[key]) if result.bootstrap else tpr_interval(metrics[key], metrics["n_in"])
        levels.append(LevelEvidence(fpr, metrics[key], low, high))
    epsilon, delta = result.accounted
    return VerdictInput(
        n_models=int(result.entry.get("n_models", result.is_in.shape[0])),
        n_audit=int(result.is_in.shape[1]),
        n_out=int(metrics["n_out"]),
        attack=attack,
        levels=tuple(levels),
        accounted_epsilon=epsilon,
        accounted_delta=delta,
        eps_lower_bound=metrics.get("eps_lower_bound"),
    )


def vulnerable_samples(result: ParadigmResult, attack: str, top: int = TOP_SAMPLES, fpr: float = 0.01) -> pd.DataFrame:
    """The audit samples this attack finds best, most vulnerable first.

    *Attack success* of a sample: the share of the models that trained on it
    (IN) in which the attack flags it at the paradigm's global threshold,
    the one that flags at most ``fpr`` of all OUT pairs.  Ties (common: many
    canaries are caught in every IN model) are broken by the mean score
    margin, mean over IN models minus mean over OUT models.
    """
    score, is_in = result.scores[attack], result.is_in
    out_scores = np.sort(score[~is_in])[::-1]
    allowed = int(np.floor(fpr * len(out_scores)))  # OUT pairs the threshold may let through
    threshold = out_scores[min(allowed, len(out_scores) - 1)]
    flagged = score > threshold
    n_in = is_in.sum(axis=0)
    n_out = (~is_in).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        success = (flagged & is_in).sum(axis=0) / n_in
        false_alarms = (flagged & ~is_in).sum(axis=0) / n_out
        margin = np.where(is_in, score, 0).sum(axis=0) / n_in - np.where(~is_in, score, 0).sum(axis=0) / n_out
    audit = result.run.audit
    frame = pd.DataFrame(
        {
            "sample_id": audit.sample_id.to_numpy(),
            "dataset_index": audit.dataset_index.to_numpy(),
            "true_label": audit.true_label.to_numpy(),
            "label": audit.label.to_numpy(),
            "canary": audit.canary.to_numpy(),
            "success": success,
            "flagged_out": false_alarms,
            "margin": margin,
            "n_in": n_in,
        }
    )
    frame = frame.sort_values(["success", "margin"], ascending=[False, False], kind="stable").head(top)
    return frame.reset_index(drop=True)


def _pixels(x: np.ndarray) -> np.ndarray:
    """Images in pixel scale 0..1 as float32 rows."""
    x = np.asarray(x)
    x = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)
    return x.reshape(len(x), -1)


def _squared_distances(queries: np.ndarray, points: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """``(n_queries, n_points)`` squared L2 distances in pixel space; ``points`` as stored (uint8 or float).

    Points are converted a chunk at a time, so a 50,000-image pool never
    exists as float32 all at once.
    """
    out = np.empty((len(queries), len(points)), dtype=np.float32)
    q_norm = (queries**2).sum(axis=1)[:, None]
    for start in range(0, len(points), chunk):
        block = _pixels(points[start : start + chunk])
        out[:, start : start + len(block)] = q_norm + (block**2).sum(axis=1)[None, :] - 2.0 * queries @ block.T
    return np.maximum(out, 0.0)


def nearest_neighbours(result: ParadigmResult, frame: pd.DataFrame, dataset: Any) -> tuple[pd.DataFrame, dict[int, np.ndarray], str]:
    """Add each sample's nearest image among the synthetic sets trained on while it was IN.

    L2 in pixel space (0..1).  Only the models where the sample was IN count:
    those are the sets its private copy could have leaked into.  For a
    paradigm that trains on the private set itself (``real``, DP-SGD) the
    neighbour is the sample itself.  Also adds ``nearest_real``: the distance
    to the closest *other* training-pool image, the scale a near-copy is
    judged against.  Returns the frame, the neighbour images by sample id,
    and a note on what was searched.
    """
    from raypriv.store import synthetic_path

    run, paradigm = result.run, result.paradigm
    frame = frame.copy()
    indices = frame.dataset_index.to_numpy()
    queries = _pixels(dataset.x_train[indices])
    real_distances = _squared_distances(queries, dataset.x_train)
    real_distances[np.arange(len(indices)), indices] = np.inf
    frame["nearest_real"] = np.sqrt(real_distances.min(axis=1))
    frame["neighbour_distance"] = np.nan
    frame["neighbour_model"] = -1
    frame["neighbour_label"] = -1
    images: dict[int, np.ndarray] = {}

    stored = run.store.list_files(f"synthetic/{paradigm}", ".npz")
    rows = result.models
    if not stored:
        if len(rows) and (rows.synthetic_size == rows.private_size).all():
            frame["neighbour_distance"] = 0.0
            frame["neighbour_label"] = frame.label
            for sample_id, index in zip(frame.sample_id, indices):
                images[int(sample_id)] = dataset.x_train[index]
            return frame, images, "trains on the private set itself: each sample's nearest training image is itself"
        return frame, images, "no synthetic sets stored for this paradigm: no neighbours to show"

    best = np.full(len(frame), np.inf)
    searched, skipped = 0, 0
    sample_ids = frame.sample_id.to_numpy()
    for model_id in range(run.keep.shape[0]):
        members = np.flatnonzero(run.keep[model_id, sample_ids])
        relative = synthetic_path(paradigm, model_id)
        if len(members) == 0 or not run.store.exists(relative):
            continue
        arrays = run.store.read_npz(relative)
        x = arrays["x"]
        if x.shape[1:] != dataset.x_train.shape[1:]:
            skipped += 1
            continue
        searched += 1
        distances = _squared_distances(queries[members], x)
        nearest = distances.argmin(axis=1)
        for position, (row, column) in enumerate(zip(members, nearest)):
            value = float(np.sqrt(distances[position, column]))
            if value < best[row]:
                best[row] = value
                y = arrays["y"][column]
                frame.loc[row, "neighbour_distance"] = value
                frame.loc[row, "neighbour_model"] = model_id
                frame.loc[row, "neighbour_label"] = int(np.argmax(y)) if np.ndim(y) else int(y)
                images[int(sample_ids[row])] = x[column]
    note = f"searched the synthetic sets of {searched} models (each sample: only the models where it was IN)"
    if skipped:
        note += f"; {skipped} sets of another shape skipped"
    return frame, images, note


# ------------------------------------------------------------------ plots


def _png(figure) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    return buffer.getvalue()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def roc_figure(curves: dict[str, tuple[np.ndarray, np.ndarray]], title: str):
    """All paradigms' ROC curves of one attack on one log-log figure."""
    plt = _pyplot()
    figure, ax = plt.subplots(figsize=(6.4, 5.2))
    floor = 1e-4
    colours = plt.get_cmap("tab10")
    for i, (label, (fpr, tpr)) in enumerate(curves.items()):
        auc = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1])) / 2.0)
        ax.plot(np.maximum(fpr, floor), np.maximum(tpr, floor), color=colours(i % 10), linewidth=1.5,
                label=f"{label} (AUC {auc:.3f})")
    ax.plot([floor, 1], [floor, 1], "k--", linewidth=0.8, label="chance")
    ax.set(xscale="log", yscale="log", xlim=(floor, 1), ylim=(floor, 1), title=title,
           xlabel="false positive rate", ylabel="true positive rate")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(True, which="major", linewidth=0.3)
    figure.tight_layout()
    return figure


def privacy_utility_figure(points: list[dict[str, Any]], attack: str):
    """TPR@0.1%FPR (95% bootstrap CI) against test accuracy (± std), one point per paradigm."""
    plt = _pyplot()
    figure, ax = plt.subplots(figsize=(6.4, 4.8))
    colours = plt.get_cmap("tab10")
    floor = 1e-4
    for i, point in enumerate(points):
        y = max(point["tpr"], floor)
        low, high = max(point["low"], floor), max(point["high"], floor)
        ax.errorbar(point["acc"], y, xerr=point["acc_std"], yerr=[[max(y - low, 0)], [max(high - y, 0)]],
                    fmt="o", color=colours(i % 10), capsize=3, label=point["label"])
    ax.axhline(0.001, color="k", linestyle="--", linewidth=0.8, label="chance (0.1%)")
    ax.set(yscale="log", ylim=(floor, 1), xlabel="test accuracy (mean ± std over models)",
           ylabel=f"TPR at 0.1% FPR ({attack})", title="privacy–utility: lower right is better")
    ax.margins(x=0.08)
    ax.grid(True, which="major", linewidth=0.3)
    ax.legend(fontsize=7, loc="best", framealpha=0.85)
    figure.tight_layout()
    return figure


def score_histogram_figure(panels: dict[str, tuple[np.ndarray, np.ndarray]], attack: str):
    """Per-sample scores of the IN and the OUT (model, sample) pairs, one panel per paradigm."""
    plt = _pyplot()
    columns = min(3, len(panels))
    rows = -(-len(panels) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.0 * rows), squeeze=False)
    for ax, (label, (score, is_in)) in zip(axes.flat, panels.items()):
        finite = score[np.isfinite(score)]
        low, high = np.percentile(finite, [0.5, 99.5]) if len(finite) else (0.0, 1.0)
        if high <= low:
            low, high = low - 0.5, high + 0.5
        middle = np.percentile(finite, [25, 75]) if len(finite) else (0.0, 1.0)
        spread = max(middle[1] - middle[0], 1e-12)
        # Likelihood ratios have tails hundreds of interquartile ranges long: a symmetric-log
        # axis shows the bulk and the tails together.
        symlog = (high - low) / spread > 40
        if symlog:
            scale = max(spread, 1e-3)
            to_axis = lambda v: np.sign(v) * np.log1p(np.abs(v) / scale)  # noqa: E731
            edges = np.linspace(to_axis(low), to_axis(high), 50)
            bins = np.sign(edges) * np.expm1(np.abs(edges)) * scale
        else:
            bins = np.linspace(low, high, 50)
        clipped = np.clip(score, low, high)
        for side, colour, name in ((~is_in, "tab:blue", "OUT"), (is_in, "tab:red", "IN")):
            values = clipped[side]
            # Share of pairs per bin (not density): bins are even on the axis as drawn.
            ax.hist(values, bins=bins, weights=np.full(len(values), 1.0 / max(1, len(values))), alpha=0.55,
                    color=colour, label=name)
        if symlog:
            ax.set_xscale("symlog", linthresh=scale)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel(f"{attack} score{' (symlog axis)' if symlog else ''}, clipped to 0.5–99.5%", fontsize=8)
        ax.set_ylabel("share of pairs", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    figure.tight_layout()
    return figure


def _show_image(ax, image: np.ndarray) -> None:
    image = np.asarray(image)
    image = image.astype(np.float32) / 255.0 if image.dtype == np.uint8 else image.astype(np.float32)
    image = np.clip(image, 0.0, 1.0)
    if image.ndim == 3 and image.shape[0] in (1, 3):
        image = image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)
    ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def neighbour_figure(frame: pd.DataFrame, dataset: Any, images: dict[int, np.ndarray]):
    """Each vulnerable sample (left) beside its nearest synthetic training image (right)."""
    plt = _pyplot()
    per_row = 4
    rows = max(1, -(-len(frame) // per_row))
    # Three columns per pair (sample, neighbour, a gap) so the pairs read as pairs.
    figure, axes = plt.subplots(rows, 3 * per_row - 1, figsize=(per_row * 2.3, rows * 1.45), squeeze=False,
                                gridspec_kw={"width_ratios": ([1, 1, 0.3] * per_row)[:-1]})
    for ax in axes.flat:
        ax.axis("off")
    for i, row in enumerate(frame.itertuples()):
        left, right = axes[i // per_row, 3 * (i % per_row)], axes[i // per_row, 3 * (i % per_row) + 1]
        left.axis("on")
        _show_image(left, dataset.x_train[row.dataset_index])
        left.set_title(f"#{row.sample_id} {row.true_label}→{row.label}\nsuccess {row.success:.0%}", fontsize=7)
        neighbour = images.get(int(row.sample_id))
        if neighbour is not None:
            right.axis("on")
            _show_image(right, neighbour)
            if row.neighbour_model < 0:
                title = "itself\n(private set)"
            else:
                copy = " copy" if row.neighbour_distance == 0 else ""
                title = f"L2 {row.neighbour_distance:.2f}{copy}\nm{row.neighbour_model} y={row.neighbour_label}"
            right.set_title(title, fontsize=7)
    figure.tight_layout(pad=0.4, h_pad=0.6, w_pad=0.3)
    return figure


# -------------------------------------------------------------- building it


def build_report(
    run_dirs: list[str],
    attack: str | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    compare: tuple[str, str] | None = None,
    top: int = TOP_SAMPLES,
    load_images: bool = True,
) -> Report:
    """Compute everything ``raypriv report`` shows for these runs.

    The bootstrap resamples audit samples (``n_boot`` replicates, drawn from
    ``seed``); runs with the same audit split share the replicates, so their
    paradigms compare paired.
    """
    if not run_dirs:
        raise RayprivError("give at least one run directory to report on")
    if n_boot < 100:
        raise RayprivError(f"--bootstrap {n_boot} is too few replicates for a 95% interval; use at least 100 (default 1000)")
    runs = [load_run(d) for d in run_dirs]
    pairs = [(run, p) for run in runs for p in run.metrics]
    if not pairs:
        raise RayprivError(f"{runs[0].uri}: metrics.json lists no paradigm; rerun `raypriv audit`")
    labels = _labels(pairs)
    results = []
    for label, (run, paradigm) in zip(labels, pairs):
        entry = run.metrics[paradigm]
        is_in, scores = load_scores(run, paradigm, attacks_of(entry))
        results.append(ParadigmResult(label, run, paradigm, entry, is_in, scores))
    if attack is None:
        attack = choose_attack(results)
    missing = [r.label for r in results if attack not in r.scores]
    if missing:
        known = sorted(set(a for r in results for a in r.scores))
        raise RayprivError(f"attack {attack!r} is not in the results of {missing}; choose one of {known}")

    # One set of replicates per audit-sample count: runs with the same split resample identically.
    weights: dict[int, np.ndarray] = {}
    for result in results:
        n_audit = result.is_in.shape[1]
        if n_audit not in weights:
            weights[n_audit] = bootstrap_weights(n_audit, n_boot, numpy_rng(seed, f"report/bootstrap/{n_audit}"))
        result.bootstrap = bootstrap_roc_metrics(result.is_in, result.scores[attack], weights[n_audit])
        result.verdict_kind, result.verdict = verdict(_evidence(result, attack))

    by_label = {r.label: r for r in results}
    if compare is not None:
        unknown = [name for name in compare if name not in by_label]
        if unknown:
            raise RayprivError(f"--compare: {unknown} not among the paradigms of these runs ({sorted(by_label)})")
        reason = audit_split_mismatch(by_label[compare[0]].run, by_label[compare[1]].run)
        if reason:
            raise RayprivError(
                f"--compare {compare[0]} {compare[1]}: the runs do not share their audit samples ({reason}), so a "
                "paired comparison is impossible; audit both paradigms in one run or with the same config seed, "
                "dataset, n_audit and n_models"
            )
        candidates = [compare]
    elif len(results) <= 6:
        candidates = list(itertools.combinations([r.label for r in results], 2))
    else:
        reference = "real" if "real" in by_label else results[0].label
        candidates = [(reference, r.label) for r in results if r.label != reference]
    comparisons, skipped = [], []
    for a, b in candidates:
        reason = audit_split_mismatch(by_label[a].run, by_label[b].run)
        if reason:
            skipped.append(f"{a} vs {b}: not paired ({reason})")
            continue
        comparisons.append(
            Comparison(
                a, b, attack,
                {
                    metric: paired_bootstrap_difference(
                        by_label[a].entry[attack][metric], by_label[b].entry[attack][metric],
                        by_label[a].bootstrap[metric], by_label[b].bootstrap[metric],
                    )
                    for metric in ("tpr@1%fpr", "tpr@0.1%fpr", "auc")
                },
            )
        )

    histogram_attack = next((a for a in HISTOGRAM_PREFERENCE if all(a in r.scores for r in results)), attack)
    figures = {
        "roc": _png(roc_figure({r.label: roc(r.is_in, r.scores[attack]) for r in results}, f"ROC, {attack} (log-log)")),
        "privacy_utility": _png(privacy_utility_figure(
            [
                {"label": r.label, "acc": r.entry["test_acc"], "acc_std": r.entry.get("test_acc_std", 0.0),
                 "tpr": r.entry[attack]["tpr@0.1%fpr"], **dict(zip(("low", "high"), percentile_interval(r.bootstrap["tpr@0.1%fpr"])))}
                for r in results
            ],
            attack,
        )),
        "scores": _png(score_histogram_figure({r.label: (r.scores[histogram_attack], r.is_in) for r in results}, histogram_attack)),
    }
    notes: dict[str, str] = {}
    vulnerable: dict[str, pd.DataFrame] = {}
    datasets: dict[str, Any] = {}
    for result in results:
        frame = vulnerable_samples(result, attack, top)
        dataset = None
        if load_images and result.run.config is not None:
            if result.run.uri not in datasets:
                try:
                    from raypriv.data import load_dataset

                    datasets[result.run.uri] = load_dataset(result.run.config.dataset)
                except (RayprivError, OSError, RuntimeError) as exc:
                    datasets[result.run.uri] = None
                    notes[f"dataset:{result.run.uri}"] = f"dataset not loaded ({exc}); no images"
            dataset = datasets[result.run.uri]
        if dataset is not None and dataset.is_image:
            frame, images, note = nearest_neighbours(result, frame, dataset)
            notes[f"neighbours:{result.label}"] = note
            figures[f"vulnerable:{result.label}"] = _png(neighbour_figure(frame, dataset, images))
        vulnerable[result.label] = frame
    return Report(runs, results, attack, histogram_attack, n_boot, comparisons, skipped, vulnerable, figures, notes)


# ------------------------------------------------------------------ tables


def privacy_table(report: Report) -> pd.DataFrame:
    """The summary: one row per paradigm, headline attack, bootstrap CIs, ε, utility, cost."""
    rows = []
    for r in report.results:
        m = r.entry[report.attack]
        epsilon, delta = r.accounted
        models = r.models
        rows.append(
            {
                "paradigm": r.label,
                "AUC": m["auc"],
                "AUC CI": percentile_interval(r.bootstrap["auc"]),
                "TPR@1%FPR": m["tpr@1%fpr"],
                "TPR@1%FPR CI": percentile_interval(r.bootstrap["tpr@1%fpr"]),
                "TPR@0.1%FPR": m["tpr@0.1%fpr"],
                "TPR@0.1%FPR CI": percentile_interval(r.bootstrap["tpr@0.1%fpr"]),
                "ε lower bound": m.get("eps_lower_bound", float("nan")),
                "accounted ε": epsilon if epsilon is not None else float("nan"),
                "δ": delta if delta is not None else float("nan"),
                "test acc": r.entry["test_acc"],
                "test acc std": r.entry.get("test_acc_std", float("nan")),
                "models": int(r.entry.get("n_models", len(models))),
                "synthesis s/model": float(models.synth_seconds.mean()) if len(models) else float("nan"),
                "training s/model": float(models.train_seconds.mean()) if len(models) else float("nan"),
            }
        )
    return pd.DataFrame(rows)


def attacks_table(report: Report) -> pd.DataFrame:
    """Every attack of every paradigm, with Clopper–Pearson intervals on the TPR counts."""
    rows = []
    for r in report.results:
        for attack in attacks_of(r.entry):
            m = r.entry[attack]
            rows.append(
                {
                    "paradigm": r.label,
                    "attack": attack,
                    "AUC": m["auc"],
                    "TPR@1%FPR": m["tpr@1%fpr"],
                    "TPR@1%FPR CP": tpr_interval(m["tpr@1%fpr"], m["n_in"]),
                    "TPR@0.1%FPR": m["tpr@0.1%fpr"],
                    "TPR@0.1%FPR CP": tpr_interval(m["tpr@0.1%fpr"], m["n_in"]),
                    "bal.acc": m.get("balanced_acc", float("nan")),
                    "ε lower bound": m.get("eps_lower_bound", float("nan")),
                    "IN/OUT pairs": f"{m['n_in']}/{m['n_out']}",
                }
            )
    return pd.DataFrame(rows)


def cost_table(report: Report) -> pd.DataFrame:
    """Seconds per model and the total device time, by device kind.

    The models table records the device each model trained on; worker-hours
    are summed synthesis + training seconds, and CPU- or GPU-hours multiply
    them by the resources one worker held (``ray.num_cpus_per_actor`` /
    ``num_gpus_per_actor`` of the run's config).
    """
    rows = []
    for r in report.results:
        models = r.models
        ray = r.run.raw_config.get("ray", {}) or {}
        seconds = models.synth_seconds + models.train_seconds
        gpu = models.device.astype(str).str.startswith("cuda")
        cpu_hours = float(seconds[~gpu].sum()) / 3600.0 * float(ray.get("num_cpus_per_actor", 1.0) or 1.0)
        gpu_hours = float(seconds[gpu].sum()) / 3600.0 * float(ray.get("num_gpus_per_actor", 1.0) or 1.0)
        rows.append(
            {
                "paradigm": r.label,
                "models": len(models),
                "synthesis s/model": f"{models.synth_seconds.mean():.2f} ± {models.synth_seconds.std(ddof=1) if len(models) > 1 else 0:.2f}",
                "training s/model": f"{models.train_seconds.mean():.2f} ± {models.train_seconds.std(ddof=1) if len(models) > 1 else 0:.2f}",
                "worker-hours": float(seconds.sum()) / 3600.0,
                "CPU-hours": cpu_hours,
                "GPU-hours": gpu_hours,
                "devices": ", ".join(sorted(set(models.device.astype(str)))),
            }
        )
    return pd.DataFrame(rows)


def comparison_table(report: Report) -> pd.DataFrame:
    rows = []
    for c in report.comparisons:
        row: dict[str, Any] = {"A": c.a, "B": c.b}
        for metric, name in (("tpr@1%fpr", "ΔTPR@1%FPR"), ("tpr@0.1%fpr", "ΔTPR@0.1%FPR"), ("auc", "ΔAUC")):
            result = c.results[metric]
            row[name] = result["difference"]
            row[f"{name} CI"] = (result["low"], result["high"])
            row[f"{name} p"] = result["p"]
        row["reading (TPR@1%FPR)"] = c.reading()
        rows.append(row)
    return pd.DataFrame(rows)


def format_comparison(comparison: Comparison) -> str:
    """A few lines for the terminal (``raypriv report --compare A B``)."""
    lines = [f"{comparison.a} vs {comparison.b} ({comparison.attack}, paired bootstrap over audit samples):"]
    for metric in ("tpr@1%fpr", "tpr@0.1%fpr", "auc"):
        r = comparison.results[metric]
        fmt = "{:+.3f}" if metric == "auc" else "{:+.2%}"
        lines.append(
            f"  Δ{metric.upper().replace('@', '@')}: {fmt.format(r['difference'])} "
            f"(95% CI {fmt.format(r['low'])} to {fmt.format(r['high'])}; {_p(r['p'], r['n_boot'])})"
        )
    lines.append(f"  reading: {comparison.reading()}")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ rendering


def _ci(interval: tuple[float, float], percent: bool = True) -> str:
    low, high = interval
    if not (np.isfinite(low) and np.isfinite(high)):
        return "n/a"
    return f"{_percent(low)}–{_percent(high)}" if percent else f"{low:.3f}–{high:.3f}"


def _number(value: float, digits: int = 2) -> str:
    return "–" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def _seconds(value: float) -> str:
    return "–" if not np.isfinite(value) else (f"{value:.1f}" if value >= 1 or value == 0 else f"{value:.2f}")


def _summary_rows(report: Report) -> tuple[list[str], list[list[str]]]:
    ci = "(95%\u00a0CI)"  # no break inside "95% CI" when a header wraps
    header = ["paradigm", f"AUC {ci}", f"TPR@1%FPR {ci}", f"TPR@0.1%FPR {ci}", "ε lower bound",
              "accounted ε", "test acc", "s/model (synthesis + training)"]
    rows = []
    for result, (_, row) in zip(report.results, privacy_table(report).iterrows()):
        n_out = result.entry[report.attack]["n_out"]
        mark = {fpr: "" if fpr * n_out >= MIN_FALSE_POSITIVES else " †" for fpr in LOW_FPRS.values()}
        rows.append([
            row["paradigm"],
            f"{row['AUC']:.3f} ({_ci(row['AUC CI'], False)})",
            f"{_percent(row['TPR@1%FPR'])} ({_ci(row['TPR@1%FPR CI'])}){mark[0.01]}",
            f"{_percent(row['TPR@0.1%FPR'])} ({_ci(row['TPR@0.1%FPR CI'])}){mark[0.001]}",
            _number(row["ε lower bound"]),
            _number(row["accounted ε"]),
            f"{row['test acc']:.3f} ± {row['test acc std']:.3f}",
            f"{_seconds(row['synthesis s/model'])} + {_seconds(row['training s/model'])}",
        ])
    return header, rows


def _summary_footnote(report: Report) -> str:
    """Explains the † of the summary table, if any level is too fine for its OUT pairs."""
    thin = sorted({r.entry[report.attack]["n_out"] for r in report.results
                   if any(f * r.entry[report.attack]["n_out"] < MIN_FALSE_POSITIVES for f in LOW_FPRS.values())})
    if not thin:
        return ""
    return (f"† fewer than {MIN_FALSE_POSITIVES:.0f} OUT pairs pass the threshold at this FPR "
            f"({', '.join(f'{n:,}' for n in thin)} OUT pairs): shown, but not used by the verdict.")


def _attack_rows(report: Report) -> tuple[list[str], list[list[str]]]:
    header = ["paradigm", "attack", "AUC", "TPR@1%FPR (CP 95%)", "TPR@0.1%FPR (CP 95%)", "bal.acc", "ε lower bound", "IN/OUT pairs"]
    rows = []
    for _, row in attacks_table(report).iterrows():
        rows.append([
            row["paradigm"], row["attack"], f"{row['AUC']:.3f}",
            f"{_percent(row['TPR@1%FPR'])} ({_ci(row['TPR@1%FPR CP'])})",
            f"{_percent(row['TPR@0.1%FPR'])} ({_ci(row['TPR@0.1%FPR CP'])})",
            _number(row["bal.acc"], 3), _number(row["ε lower bound"]), row["IN/OUT pairs"],
        ])
    return header, rows


def _p(p: float, n_boot: int) -> str:
    """A bootstrap p-value; 0 means below what ``n_boot`` resamples resolve."""
    if not np.isfinite(p):
        return "p=n/a"
    return f"p<{2.0 / n_boot:.3f}" if p == 0 else f"p={p:.3f}"


def _comparison_note(report: Report) -> str:
    """Paired-bootstrap method, and how many 'significant' readings chance alone would give."""
    note = f"Paired bootstrap over audit samples, {report.attack}; Δ = A − B."
    if len(report.comparisons) > 1:
        note += (f" {len(report.comparisons)} comparisons at 95% each: about {len(report.comparisons) / 20:.1f} "
                 "would read 'significant' by chance alone.")
    return note


def _comparison_rows(report: Report) -> tuple[list[str], list[list[str]]]:
    header = ["A vs B", "ΔTPR@1%FPR (95%\u00a0CI), p", "ΔTPR@0.1%FPR (95%\u00a0CI), p", "ΔAUC (95%\u00a0CI), p",
              "reading (TPR@1%FPR)"]
    rows = []
    for c in report.comparisons:
        cells = [f"{c.a} vs {c.b}"]
        for metric in ("tpr@1%fpr", "tpr@0.1%fpr", "auc"):
            r = c.results[metric]
            p = _p(r["p"], r["n_boot"])
            if metric == "auc":
                cells.append(f"{r['difference']:+.3f} ({r['low']:+.3f} to {r['high']:+.3f}), {p}")
            else:
                cells.append(f"{r['difference']:+.1%} ({r['low']:+.1%} to {r['high']:+.1%}), {p}")
        cells.append(c.reading())
        rows.append(cells)
    return header, rows


def _cost_rows(report: Report) -> tuple[list[str], list[list[str]]]:
    header = ["paradigm", "models", "synthesis s/model", "training s/model", "worker-hours", "CPU-hours", "GPU-hours", "devices"]
    rows = []
    for _, row in cost_table(report).iterrows():
        rows.append([row["paradigm"], str(row["models"]), row["synthesis s/model"], row["training s/model"],
                     f"{row['worker-hours']:.3f}", f"{row['CPU-hours']:.3f}", f"{row['GPU-hours']:.3f}", row["devices"]])
    return header, rows


def _vulnerable_rows(frame: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    header = ["rank", "sample", "dataset index", "class → trained label", "canary", "attack success",
              "OUT flagged", "score margin"]
    has_neighbours = "neighbour_distance" in frame
    if has_neighbours:
        header += ["nearest synthetic (L2)", "from model", "its label", "nearest other real (L2)"]
    rows = []
    for rank, row in enumerate(frame.itertuples(), start=1):
        cells = [str(rank), str(row.sample_id), str(row.dataset_index), f"{row.true_label} → {row.label}",
                 "yes" if row.canary else "no", f"{row.success:.0%} of {row.n_in}", f"{row.flagged_out:.0%}",
                 f"{row.margin:.2f}"]
        if has_neighbours:
            found = np.isfinite(row.neighbour_distance)
            cells += [
                _number(row.neighbour_distance) if found else "–",
                ("itself" if row.neighbour_model < 0 else str(row.neighbour_model)) if found else "–",
                str(row.neighbour_label) if found else "–",
                _number(row.nearest_real),
            ]
        rows.append(cells)
    return header, rows


def _runs_lines(report: Report) -> list[str]:
    lines = []
    for run in report.runs:
        config = run.raw_config
        audit = config.get("audit", {}) or {}
        lines.append(
            f"{run.name}: {run.uri} — {config.get('dataset', {}).get('name', '?')}, "
            f"{run.keep.shape[0]} models × {run.keep.shape[1]} audit samples (canary={audit.get('canary', '?')}), "
            f"model {config.get('model', {}).get('arch', '?')}, created {str(run.manifest.get('created_at', '?'))[:16].replace('T', ' ')} UTC"
        )
    return lines


METHOD_NOTES = [
    "Each attack scores every (target model, audit sample) pair leave-one-out: every model in turn is the target, "
    "all others its shadows. Chance is TPR = FPR.",
    "95% CIs in the summary and the comparisons: percentile bootstrap over audit samples ({n_boot} resamples with "
    "replacement; each resampled sample keeps all its models' scores; the models are held fixed). The threshold "
    "for each FPR is chosen again on every resample, on the same data it is scored on, so the interval includes "
    "the threshold's own noise. Pairs of one sample are correlated (a memorable canary is caught in every model "
    "it is IN), which this interval respects.",
    "CP (all-attacks table): exact Clopper–Pearson interval for the count round(TPR·n_in) out of n_in IN pairs at "
    "the threshold chosen at that FPR. It treats pairs as independent and the threshold as given, so it is "
    "narrower than the bootstrap; read it as the precision of the operating point, not of the audit.",
    "ε lower bound: the smallest ε any (ε, δ)-DP training could have and still give the ROC counts (one-sided "
    "Clopper–Pearson bounds at 95%, best threshold, δ the paradigm's own or 0). Taking the best threshold is "
    "optimistic, so values below about 1 on a chance-level curve are noise. It sits beside the accounted ε of a "
    "DP-SGD paradigm.",
    "Paired comparison: both paradigms are recomputed on the same resample of audit samples; the difference's "
    "95% interval and p (twice the smaller share of resampled differences on either side of zero) test 'no "
    "difference'. Different runs pair only when their audit samples, labels and keep matrix are identical.",
    "Attack success of a sample: the share of the models that trained on it (IN) in which the attack flags it at "
    "the paradigm's global 1%-FPR threshold; ties broken by the mean score margin (IN minus OUT). Nearest "
    "synthetic neighbour: L2 distance in pixel space (0..1) over the synthetic sets of the models where the "
    "sample was IN; 'nearest other real' is the distance to the closest other training-pool image, for scale.",
    "Verdicts: 'leaks' when the 95% interval of TPR at 0.1% or 1% FPR lies above chance at a level the OUT pairs "
    "can measure; 'too few models to conclude' when nothing is detected but the audit has under {min_models} "
    "models or cannot exclude a {max_multiple:.0f}× leak; otherwise 'no leakage detected above chance at this "
    "audit's power'. Only a paradigm with an accounted ε is called DP, and nothing is called private.",
]


def _notes(report: Report) -> list[str]:
    return [
        note.format(n_boot=report.n_boot, min_models=MIN_MODELS, max_multiple=MAX_UNDETECTED_MULTIPLE)
        for note in METHOD_NOTES
    ]


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    def cell(text: str) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _figure_file(name: str) -> str:
    """File name of a figure (``vulnerable:run:real`` -> ``vulnerable-run-real.png``)."""
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in name)
    return f"{safe}.png"


FIGURE_CAPTIONS = {
    "roc": "ROC curves of all paradigms ({attack}), log-log: the low-FPR end is what matters.",
    "privacy_utility": "Privacy–utility: TPR at 0.1% FPR ({attack}, 95% bootstrap CI) against test accuracy (± std over models); the dashed line is chance, and a TPR of 0 is drawn at 10⁻⁴.",
    "scores": "Per-sample {histogram_attack} scores of IN and OUT (model, sample) pairs, one panel per paradigm.",
}


def render_markdown(report: Report) -> str:
    """``report.md``: verdicts and every table; plots as the PNG files written beside it."""
    out = ["# raypriv report", ""]
    out += [f"- {line}" for line in _runs_lines(report)] + [""]
    out += ["## Verdicts", "", f"Attack: `{report.attack}` (chosen before looking at the scores; `--attack` picks another). 95% intervals: bootstrap over audit samples.", ""]
    out += [f"- **{r.label}**: {r.verdict}" for r in report.results] + [""]
    out += ["## Privacy, utility, cost", "", _md_table(*_summary_rows(report)), ""]
    if _summary_footnote(report):
        out += [_summary_footnote(report), ""]
    for name in ("roc", "privacy_utility", "scores"):
        caption = FIGURE_CAPTIONS[name].format(attack=report.attack, histogram_attack=report.histogram_attack)
        out += [f"![{caption}]({_figure_file(name)})", "", f"*{caption}*", ""]
    out += ["## Paired comparisons", ""]
    if report.comparisons:
        out += [_comparison_note(report), "", _md_table(*_comparison_rows(report)), ""]
    else:
        out += ["No pair of paradigms shares its audit samples.", ""]
    out += [f"- {line}" for line in report.skipped_comparisons]
    out += ["", "## All attacks", "", _md_table(*_attack_rows(report)), ""]
    out += ["## Cost", "", _md_table(*_cost_rows(report)), ""]
    out += [f"## Most vulnerable audit samples ({report.attack})", ""]
    for r in report.results:
        frame = report.vulnerable[r.label]
        out += [f"### {r.label}", ""]
        note = report.figure_notes.get(f"neighbours:{r.label}")
        if note:
            out += [f"Nearest synthetic neighbours: {note}.", ""]
        if f"vulnerable:{r.label}" in report.figures:
            out += [f"![{r.label}: samples beside their nearest synthetic neighbours]({_figure_file('vulnerable:' + r.label)})", ""]
        out += [_md_table(*_vulnerable_rows(frame)), ""]
    out += [note for key, note in report.figure_notes.items() if key.startswith("dataset:")]
    out += ["## How to read this", ""] + [f"- {note}" for note in _notes(report)] + [""]
    return "\n".join(out)


_CSS = """
:root { color-scheme: light; }
* { box-sizing: border-box; }
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; color: #1d2330;
       background: #f6f7f9; margin: 0; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 28px 48px; background: #fff; }
h1 { font-size: 26px; margin: 0 0 6px; }
h2 { font-size: 20px; margin: 34px 0 10px; padding-bottom: 4px; border-bottom: 1px solid #dde1e7; }
h3 { font-size: 16px; margin: 22px 0 8px; }
p, li { max-width: 92ch; }
.runs { color: #4a5263; font-size: 13px; padding-left: 18px; overflow-wrap: anywhere; }
.verdicts { list-style: none; padding: 0; }
.verdicts li { margin: 6px 0; padding: 8px 12px; border-left: 5px solid #8a93a6; background: #f3f4f7; max-width: none; }
.verdicts li.leaks { border-color: #c0392b; background: #fbeeee; }
.verdicts li.too-few { border-color: #d68910; background: #fdf5e6; }
.verdicts li.no-leak-detected { border-color: #5d6d7e; }
.verdicts b { margin-right: 6px; }
.scroll { overflow-x: auto; max-width: 100%; margin: 8px 0 14px; }
table { border-collapse: collapse; font-size: 13px; font-variant-numeric: tabular-nums; }
th, td { padding: 5px 9px; border-bottom: 1px solid #e3e6ec; text-align: right; white-space: nowrap; }
th { background: #eef1f5; font-weight: 600; white-space: normal; vertical-align: bottom; min-width: 7ch; }
td:first-child, th:first-child { text-align: left; }
td.text, th.text { text-align: left; white-space: normal; min-width: 14ch; }
figure { margin: 16px 0 22px; }
figure img { display: block; max-width: 100%; height: auto; border: 1px solid #e3e6ec; }
figcaption { font-size: 13px; color: #4a5263; margin-top: 4px; max-width: 92ch; }
.grid { display: flex; flex-wrap: wrap; gap: 18px; }
.grid figure { flex: 1 1 460px; min-width: 0; margin: 0; }
.note { font-size: 13px; color: #4a5263; }
.notes li { font-size: 13px; color: #39404f; margin: 4px 0; }
"""


def _html_table(header: list[str], rows: list[list[str]], text_columns: tuple[int, ...] = ()) -> str:
    from html import escape

    def cls(i: int) -> str:
        return ' class="text"' if i in text_columns else ""

    head = "".join(f"<th{cls(i)}>{escape(h)}</th>" for i, h in enumerate(header))
    body = "".join(
        "<tr>" + "".join(f"<td{cls(i)}>{escape(str(c))}</td>" for i, c in enumerate(row)) + "</tr>" for row in rows
    )
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _html_figure(png: bytes, caption: str) -> str:
    from html import escape

    data = base64.b64encode(png).decode("ascii")
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{escape(caption)}">'
        f"<figcaption>{escape(caption)}</figcaption></figure>"
    )


def render_html(report: Report) -> str:
    """``report.html``: one self-contained page (inline CSS, plots as base64 PNG, no script)."""
    from html import escape

    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>raypriv report: {escape(', '.join(run.name for run in report.runs))}</title>",
        f"<style>{_CSS}</style></head><body><main>",
        "<h1>raypriv report</h1>",
        '<ul class="runs">' + "".join(f"<li>{escape(line)}</li>" for line in _runs_lines(report)) + "</ul>",
        "<h2>Verdicts</h2>",
        f'<p class="note">Attack: <code>{escape(report.attack)}</code> (chosen before looking at the scores; '
        "<code>--attack</code> picks another). 95% intervals: bootstrap over audit samples.</p>",
        '<ul class="verdicts">'
        + "".join(f'<li class="{r.verdict_kind}"><b>{escape(r.label)}:</b>{escape(r.verdict)}</li>' for r in report.results)
        + "</ul>",
        "<h2>Privacy, utility, cost</h2>",
        _html_table(*_summary_rows(report)),
        f'<p class="note">{escape(_summary_footnote(report))}</p>' if _summary_footnote(report) else "",
        '<div class="grid">',
    ]
    for name in ("roc", "privacy_utility"):
        parts.append(_html_figure(report.figures[name], FIGURE_CAPTIONS[name].format(attack=report.attack, histogram_attack=report.histogram_attack)))
    parts.append("</div>")
    parts.append(_html_figure(report.figures["scores"], FIGURE_CAPTIONS["scores"].format(attack=report.attack, histogram_attack=report.histogram_attack)))
    parts.append("<h2>Paired comparisons</h2>")
    if report.comparisons:
        parts.append(f'<p class="note">{escape(_comparison_note(report))}</p>')
        parts.append(_html_table(*_comparison_rows(report), text_columns=(0, 4)))
    else:
        parts.append('<p class="note">No pair of paradigms shares its audit samples.</p>')
    if report.skipped_comparisons:
        parts.append('<ul class="note">' + "".join(f"<li>{escape(s)}</li>" for s in report.skipped_comparisons) + "</ul>")
    parts += ["<h2>All attacks</h2>", _html_table(*_attack_rows(report), text_columns=(0, 1))]
    parts += ["<h2>Cost</h2>", _html_table(*_cost_rows(report), text_columns=(0, 7))]
    parts.append(f"<h2>Most vulnerable audit samples ({escape(report.attack)})</h2>")
    for r in report.results:
        parts.append(f"<h3>{escape(r.label)}</h3>")
        note = report.figure_notes.get(f"neighbours:{r.label}")
        if note:
            parts.append(f'<p class="note">Nearest synthetic neighbours: {escape(note)}.</p>')
        figure = report.figures.get(f"vulnerable:{r.label}")
        if figure is not None:
            parts.append(_html_figure(figure, f"{r.label}: each vulnerable sample (left; class → trained label, attack success) beside its nearest synthetic training image (right; L2 distance, source model and label)."))
        parts.append(_html_table(*_vulnerable_rows(report.vulnerable[r.label])))
    for key, note in report.figure_notes.items():
        if key.startswith("dataset:"):
            parts.append(f'<p class="note">{escape(note)}</p>')
    parts.append("<h2>How to read this</h2>")
    parts.append('<ul class="notes">' + "".join(f"<li>{escape(n)}</li>" for n in _notes(report)) + "</ul>")
    parts.append("</main></body></html>")
    return "\n".join(parts) + "\n"


def write_report(report: Report, out_dir: str) -> dict[str, str]:
    """Write report.html, report.md and the plots as PNG; returns the paths written by name."""
    store = RunStore(str(out_dir))
    paths = {}
    store.write_bytes("report.html", render_html(report).encode())
    paths["html"] = store.path("report.html")
    store.write_bytes("report.md", render_markdown(report).encode())
    paths["md"] = store.path("report.md")
    for name, png in report.figures.items():
        file = _figure_file(name)
        store.write_bytes(file, png)
        paths[name] = store.path(file)
    return paths


def format_verdicts(report: Report) -> str:
    """The verdict lines, for the terminal."""
    lines = [f"attack: {report.attack}"]
    lines += [f"{r.label}: {r.verdict}" for r in report.results]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------ looking at it

_BROWSER_CHECK = """
<script>
window.addEventListener("load", () => {
  const width = document.documentElement.clientWidth;
  const images = [...document.images].map((img) => ({
    alt: img.alt.slice(0, 60), loaded: img.complete && img.naturalWidth > 0,
    right: img.getBoundingClientRect().right, shown: img.getBoundingClientRect().width,
  }));
  const overflowing = [];
  for (const el of document.querySelectorAll("main *")) {
    const box = el.getBoundingClientRect();
    if (box.width > 0 && box.right > width + 0.5 && !el.closest(".scroll")) {
      overflowing.push(el.tagName + (el.className ? "." + el.className : ""));
    }
  }
  const scrolled = [...document.querySelectorAll(".scroll")]
    .filter((el) => el.scrollWidth > el.clientWidth + 1)
    .map((el) => (el.querySelector("th") || {}).textContent || "table");
  const boxes = [...document.querySelectorAll("main img, main table, main .verdicts li")]
    .map((el) => [el.tagName, el.getBoundingClientRect()]);
  const overlaps = [];
  for (let i = 0; i < boxes.length; i++) for (let j = i + 1; j < boxes.length; j++) {
    const [a, b] = [boxes[i][1], boxes[j][1]];
    if (a.left < b.right - 0.5 && b.left < a.right - 0.5 && a.top < b.bottom - 0.5 && b.top < a.bottom - 0.5) {
      overlaps.push(boxes[i][0] + "/" + boxes[j][0]);
    }
  }
  const out = document.createElement("pre");
  out.id = "raypriv-browser-check";
  out.textContent = JSON.stringify({width, pageWidth: document.documentElement.scrollWidth, images,
                                    overflowing, scrolled, overlaps});
  document.body.appendChild(out);
});
</script>
"""


def find_chromium() -> str | None:
    """A Chromium or Chrome binary on PATH, or None."""
    import shutil

    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def browser_check(html_path: str, chromium: str | None = None, width: int = 1280, timeout: float = 60.0) -> dict[str, Any]:
    """Load a report in headless Chromium and measure its layout.

    A copy of the page with a small script (the report itself has none) is
    loaded at ``width`` pixels; the script records, after every image has
    loaded, whether each ``<img>`` decoded (``naturalWidth > 0``), which
    elements reach past the page's right edge (tables inside their
    scrolling box excepted), which tables need scrolling, and which images,
    tables or verdicts overlap.  Chromium's ``--dump-dom`` returns it.
    """
    import json
    import re
    import subprocess
    import tempfile
    from pathlib import Path

    chromium = chromium or find_chromium()
    if chromium is None:
        raise RayprivError("no Chromium found (chromium, chromium-browser, google-chrome); install Debian's `chromium` package")
    page = Path(html_path).read_text()
    with tempfile.TemporaryDirectory() as folder:
        probe = Path(folder) / "probe.html"
        probe.write_text(page.replace("</body>", _BROWSER_CHECK + "</body>"))
        command = [
            chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
            f"--user-data-dir={folder}/profile", f"--window-size={width},1000", "--virtual-time-budget=10000",
            "--dump-dom", probe.as_uri(),
        ]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    found = re.search(r'<pre id="raypriv-browser-check">(.*?)</pre>', done.stdout, re.S)
    if not found:
        raise RayprivError(f"Chromium did not run the layout check (exit {done.returncode}): {done.stderr[-500:]}")
    from html import unescape

    return json.loads(unescape(found.group(1)))


def screenshot(html_path: str, png_path: str, chromium: str | None = None, width: int = 1280, height: int = 4000, timeout: float = 60.0) -> None:
    """Render a report to a PNG with headless Chromium (for looking at it, and for the README)."""
    import subprocess
    import tempfile
    from pathlib import Path

    chromium = chromium or find_chromium()
    if chromium is None:
        raise RayprivError("no Chromium found (chromium, chromium-browser, google-chrome); install Debian's `chromium` package")
    with tempfile.TemporaryDirectory() as folder:
        subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
             f"--user-data-dir={folder}/profile", f"--window-size={width},{height}",
             f"--screenshot={Path(png_path).absolute()}", Path(html_path).absolute().as_uri()],
            capture_output=True, timeout=timeout, check=True,
        )
