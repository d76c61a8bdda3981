"""The report's tables: as data frames (:func:`privacy_table` and co.), and as rows of display text.

The frames hold numbers (for notebooks and the analysis scripts); the
``*_rows`` functions format them into ``(header, rows)`` of strings, the
cells both renderers show.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from raypriv.metrics import LOW_FPRS, percentile_interval, tpr_interval
from raypriv.report.build import Comparison, Report
from raypriv.report.verdicts import MIN_FALSE_POSITIVES, percent


def privacy_table(report: Report) -> pd.DataFrame:
    """The summary: one row per paradigm, headline attack, bootstrap CIs, ε, utility, cost."""
    rows = []
    for r in report.results:
        m = r.entry.attacks[report.attack]
        epsilon, delta = r.accounted
        models = r.models
        rows.append(
            {
                "paradigm": r.label,
                "AUC": m.auc,
                "AUC CI": percentile_interval(r.bootstrap["auc"]),
                "TPR@1%FPR": m["tpr@1%fpr"],
                "TPR@1%FPR CI": percentile_interval(r.bootstrap["tpr@1%fpr"]),
                "TPR@0.1%FPR": m["tpr@0.1%fpr"],
                "TPR@0.1%FPR CI": percentile_interval(r.bootstrap["tpr@0.1%fpr"]),
                "ε lower bound": m.eps_lower_bound,
                "accounted ε": epsilon if epsilon is not None else float("nan"),
                "δ": delta if delta is not None else float("nan"),
                "accountant": r.accountant,
                "test acc": r.entry.test_acc,
                "test acc std": r.entry.test_acc_std,
                "models": r.entry.n_models,
                "synthesis s/model": float(models.synth_seconds.mean()) if len(models) else float("nan"),
                "training s/model": float(models.train_seconds.mean()) if len(models) else float("nan"),
            }
        )
    return pd.DataFrame(rows)


def attacks_table(report: Report) -> pd.DataFrame:
    """Every attack of every paradigm, with Clopper–Pearson intervals on the TPR counts."""
    rows = []
    for r in report.results:
        for attack, m in r.entry.attacks.items():
            rows.append(
                {
                    "paradigm": r.label,
                    "attack": attack,
                    "AUC": m.auc,
                    "TPR@1%FPR": m["tpr@1%fpr"],
                    "TPR@1%FPR CP": tpr_interval(m["tpr@1%fpr"], m.n_in),
                    "TPR@0.1%FPR": m["tpr@0.1%fpr"],
                    "TPR@0.1%FPR CP": tpr_interval(m["tpr@0.1%fpr"], m.n_in),
                    "bal.acc": m.balanced_acc,
                    "ε lower bound": m.eps_lower_bound,
                    "IN/OUT pairs": f"{m.n_in}/{m.n_out}",
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
                "synthesis s/model": _mean_and_std(models.synth_seconds),
                "training s/model": _mean_and_std(models.train_seconds),
                "worker-hours": float(seconds.sum()) / 3600.0,
                "CPU-hours": cpu_hours,
                "GPU-hours": gpu_hours,
                "devices": ", ".join(sorted(set(models.device.astype(str)))),
            }
        )
    return pd.DataFrame(rows)


def _mean_and_std(seconds: pd.Series) -> str:
    """``mean ± std`` of per-model seconds to 2 decimals; the std is 0 for a single model."""
    std = seconds.std(ddof=1) if len(seconds) > 1 else 0
    return f"{seconds.mean():.2f} ± {std:.2f}"


def comparison_table(report: Report) -> pd.DataFrame:
    """The paired comparisons: each difference, its 95% interval and p, and the reading."""
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


def _ci(interval: tuple[float, float], as_percent: bool = True) -> str:
    low, high = interval
    if not (np.isfinite(low) and np.isfinite(high)):
        return "n/a"
    return f"{percent(low)}–{percent(high)}" if as_percent else f"{low:.3f}–{high:.3f}"


def _number(value: float, digits: int = 2) -> str:
    return "–" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def _seconds(value: float) -> str:
    return "–" if not np.isfinite(value) else (f"{value:.1f}" if value >= 1 or value == 0 else f"{value:.2f}")


def _accounted(row: pd.Series) -> str:
    """``7.99 (δ=1.0e-05, rdp)``: the accounted ε with its δ and accountant; ``–`` without one."""
    if not np.isfinite(row["accounted ε"]):
        return "–"
    details = [f"δ={row['δ']:.1e}"] if np.isfinite(row["δ"]) and row["δ"] > 0 else []
    details += [row["accountant"]] if row["accountant"] else []
    return f"{row['accounted ε']:.2f}" + (f" ({', '.join(details)})" if details else "")


def summary_rows(report: Report) -> tuple[list[str], list[list[str]]]:
    """The summary table as shown: headline attack with bootstrap CIs; † where a level is too fine."""
    ci = "(95%\u00a0CI)"  # no break inside "95% CI" when a header wraps
    header = ["paradigm", f"AUC {ci}", f"TPR@1%FPR {ci}", f"TPR@0.1%FPR {ci}", "ε lower bound",
              "accounted ε", "test acc", "s/model (synthesis + training)"]
    rows = []
    for result, (_, row) in zip(report.results, privacy_table(report).iterrows(), strict=True):
        n_out = result.entry.attacks[report.attack].n_out
        mark = {fpr: "" if fpr * n_out >= MIN_FALSE_POSITIVES else " †" for fpr in LOW_FPRS.values()}
        rows.append([
            row["paradigm"],
            f"{row['AUC']:.3f} ({_ci(row['AUC CI'], False)})",
            f"{percent(row['TPR@1%FPR'])} ({_ci(row['TPR@1%FPR CI'])}){mark[0.01]}",
            f"{percent(row['TPR@0.1%FPR'])} ({_ci(row['TPR@0.1%FPR CI'])}){mark[0.001]}",
            _number(row["ε lower bound"]),
            _accounted(row),
            f"{row['test acc']:.3f} ± {row['test acc std']:.3f}",
            f"{_seconds(row['synthesis s/model'])} + {_seconds(row['training s/model'])}",
        ])
    return header, rows


def summary_footnote(report: Report) -> str:
    """Explains the † of the summary table, if any level is too fine for its OUT pairs."""
    thin = sorted({r.entry.attacks[report.attack].n_out for r in report.results
                   if any(f * r.entry.attacks[report.attack].n_out < MIN_FALSE_POSITIVES for f in LOW_FPRS.values())})
    if not thin:
        return ""
    return (f"† fewer than {MIN_FALSE_POSITIVES:.0f} OUT pairs pass the threshold at this FPR "
            f"({', '.join(f'{n:,}' for n in thin)} OUT pairs): shown, but not used by the verdict.")


def attack_rows(report: Report) -> tuple[list[str], list[list[str]]]:
    """The all-attacks table as shown, with Clopper–Pearson intervals."""
    header = [
        "paradigm", "attack", "AUC", "TPR@1%FPR (CP 95%)", "TPR@0.1%FPR (CP 95%)", "bal.acc", "ε lower bound", "IN/OUT pairs"
    ]
    rows = []
    for _, row in attacks_table(report).iterrows():
        rows.append([
            row["paradigm"], row["attack"], f"{row['AUC']:.3f}",
            f"{percent(row['TPR@1%FPR'])} ({_ci(row['TPR@1%FPR CP'])})",
            f"{percent(row['TPR@0.1%FPR'])} ({_ci(row['TPR@0.1%FPR CP'])})",
            _number(row["bal.acc"], 3), _number(row["ε lower bound"]), row["IN/OUT pairs"],
        ])
    return header, rows


def format_p(p: float, n_boot: int) -> str:
    """A bootstrap p-value; 0 means below what ``n_boot`` resamples resolve."""
    if not np.isfinite(p):
        return "p=n/a"
    return f"p<{2.0 / n_boot:.3f}" if p == 0 else f"p={p:.3f}"


def comparison_note(report: Report) -> str:
    """Paired-bootstrap method, and how many 'significant' readings chance alone would give."""
    note = f"Paired bootstrap over audit samples, {report.attack}; Δ = A − B."
    if len(report.comparisons) > 1:
        note += (f" {len(report.comparisons)} comparisons at 95% each: about {len(report.comparisons) / 20:.1f} "
                 "would read 'significant' by chance alone.")
    return note


def comparison_rows(report: Report) -> tuple[list[str], list[list[str]]]:
    """The paired comparisons as shown: each difference with its 95% interval and p."""
    header = ["A vs B", "ΔTPR@1%FPR (95%\u00a0CI), p", "ΔTPR@0.1%FPR (95%\u00a0CI), p", "ΔAUC (95%\u00a0CI), p",
              "reading (TPR@1%FPR)"]
    rows = []
    for c in report.comparisons:
        cells = [f"{c.a} vs {c.b}"]
        for metric in ("tpr@1%fpr", "tpr@0.1%fpr", "auc"):
            r = c.results[metric]
            p = format_p(r["p"], r["n_boot"])
            if metric == "auc":
                cells.append(f"{r['difference']:+.3f} ({r['low']:+.3f} to {r['high']:+.3f}), {p}")
            else:
                cells.append(f"{r['difference']:+.1%} ({r['low']:+.1%} to {r['high']:+.1%}), {p}")
        cells.append(c.reading())
        rows.append(cells)
    return header, rows


def cost_rows(report: Report) -> tuple[list[str], list[list[str]]]:
    """The cost table as shown."""
    header = ["paradigm", "models", "synthesis s/model", "training s/model", "worker-hours", "CPU-hours", "GPU-hours", "devices"]
    rows = []
    for _, row in cost_table(report).iterrows():
        rows.append([row["paradigm"], str(row["models"]), row["synthesis s/model"], row["training s/model"],
                     f"{row['worker-hours']:.3f}", f"{row['CPU-hours']:.3f}", f"{row['GPU-hours']:.3f}", row["devices"]])
    return header, rows


def vulnerable_rows(frame: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """One paradigm's most vulnerable samples as shown, with their neighbours where searched."""
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


def _threat_cell(metrics: Any, bootstrap: dict[str, np.ndarray], attack: str) -> str:
    """One threat model's cell: its attack, TPR at both FPRs and AUC with 95% bootstrap CIs, the ε lower bound."""
    return (f"{attack}: TPR@1%FPR {percent(metrics['tpr@1%fpr'])} ({_ci(percentile_interval(bootstrap['tpr@1%fpr']))}); "
            f"TPR@0.1%FPR {percent(metrics['tpr@0.1%fpr'])} ({_ci(percentile_interval(bootstrap['tpr@0.1%fpr']))}); "
            f"AUC {metrics.auc:.3f} ({_ci(percentile_interval(bootstrap['auc']), False)}); "
            f"ε lower bound {_number(metrics.eps_lower_bound)}")


NO_RELEASE = ("releases no synthetic set: the released data would be the private set itself, which any release "
              "attack identifies perfectly, so none is scored")


def release_rows(report: Report) -> tuple[list[str], list[list[str]]]:
    """The two-column privacy table: per paradigm, the model threat (the report's attack) beside the release threat
    (its headline release attack, :class:`raypriv.report.results.ReleaseView`), each with 95% bootstrap CIs."""
    header = ["paradigm", "model threat: the attacker queries the trained model",
              "release threat: the attacker reads the released synthetic set"]
    rows = []
    for r in report.results:
        model = _threat_cell(r.entry.attacks[report.attack], r.bootstrap, report.attack)
        release = r.release
        rows.append([r.label, model, _threat_cell(r.entry.attacks[release.attack], release.bootstrap, release.attack)
                     if release is not None else f"– ({NO_RELEASE})"])
    return header, rows


def runs_lines(report: Report) -> list[str]:
    """One line per run: where it is, its dataset, size, model and when it was made."""
    lines = []
    for run in report.runs:
        config = run.raw_config
        audit = config.get("audit", {}) or {}
        created = str(run.manifest.get("created_at", "?"))[:16].replace("T", " ")
        lines.append(
            f"{run.name}: {run.uri} — {config.get('dataset', {}).get('name', '?')}, "
            f"{run.keep.shape[0]} models × {run.keep.shape[1]} audit samples (canary={audit.get('canary', '?')}), "
            f"model {config.get('model', {}).get('arch', '?')}, created {created} UTC"
        )
    return lines


def format_comparison(comparison: Comparison) -> str:
    """A few lines for the terminal (``raypriv report --compare A B``)."""
    lines = [f"{comparison.a} vs {comparison.b} ({comparison.attack}, paired bootstrap over audit samples):"]
    for metric in ("tpr@1%fpr", "tpr@0.1%fpr", "auc"):
        r = comparison.results[metric]
        fmt = "{:+.3f}" if metric == "auc" else "{:+.2%}"
        lines.append(
            f"  Δ{metric.upper().replace('@', '@')}: {fmt.format(r['difference'])} "
            f"(95% CI {fmt.format(r['low'])} to {fmt.format(r['high'])}; {format_p(r['p'], r['n_boot'])})"
        )
    lines.append(f"  reading: {comparison.reading()}")
    return "\n".join(lines) + "\n"
