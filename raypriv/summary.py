"""What ``raypriv audit`` prints at the end: one row per (paradigm, attack) and a line per paradigm.

:func:`format_summary` is the text block the audit driver prints (and saves
as summary.txt); the comparison report of finished runs is
:mod:`raypriv.report`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping

import pandas as pd

if TYPE_CHECKING:
    from raypriv.config import ExperimentConfig
    from raypriv.results import ParadigmMetrics


def summary_frame(metrics: Mapping[str, ParadigmMetrics]) -> pd.DataFrame:
    """One row per (paradigm, attack): AUC, TPR at 1% and 0.1% FPR, balanced accuracy, test accuracy."""
    rows = [
        {
            "paradigm": paradigm,
            "attack": attack,
            "AUC": result.auc,
            "TPR@1%FPR": result.tpr["tpr@1%fpr"],
            "TPR@0.1%FPR": result.tpr["tpr@0.1%fpr"],
            "bal.acc": result.balanced_acc,
            "test acc": entry.test_acc,
        }
        for paradigm, entry in metrics.items()
        for attack, result in entry.attacks.items()
    ]
    return pd.DataFrame(rows)


TIDY_METRICS = ("auc", "tpr@0.1%fpr", "tpr@1%fpr", "balanced_acc", "eps_lower_bound")


def tidy_metrics(metrics: Mapping[str, ParadigmMetrics]) -> pd.DataFrame:
    """The metrics as one row per (paradigm, attack, metric): columns paradigm, attack, threat_model, metric, value,
    ci_low, ci_high.

    ``threat_model``: ``model`` or ``release`` (:mod:`raypriv.release`) for
    an attack's rows, None for the per-paradigm numbers.

    TPR rows carry the 95% Clopper-Pearson interval of the TPR count on the
    attack's IN pairs (:func:`raypriv.metrics.tpr_interval`: pairs treated as
    independent, so narrower than the report's bootstrap over audit
    samples); other rows have no interval (NaN).  Per-paradigm numbers
    (``test_acc``, ``test_acc_std``, ``n_models``, the paradigm's reported
    ``info`` such as an accounted ``epsilon``) have attack None.
    """
    from raypriv.metrics import tpr_interval

    nan = float("nan")
    rows = []
    for paradigm, entry in metrics.items():
        scalars = {"test_acc": entry.test_acc, "test_acc_std": entry.test_acc_std, "n_models": entry.n_models, **entry.info}
        rows += [(paradigm, None, None, name, float(value), nan, nan) for name, value in scalars.items()
                 if not isinstance(value, str)]  # a reported string (the accountant) is no metric
        for attack, result in entry.attacks.items():
            for name in TIDY_METRICS:
                value = result.value(name)
                low, high = tpr_interval(value, result.n_in) if name.startswith("tpr@") else (nan, nan)
                rows.append((paradigm, attack, result.threat_model, name, value, low, high))
    return pd.DataFrame(rows, columns=["paradigm", "attack", "threat_model", "metric", "value", "ci_low", "ci_high"])


def format_summary(config: ExperimentConfig, metrics: Mapping[str, ParadigmMetrics], models: pd.DataFrame,
                   wall_seconds: float) -> str:
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
        info = entry.info
        accountant = f", {info['accountant']}" if isinstance(info.get("accountant"), str) else ""
        accounted = (f"; accounted ε={info['epsilon']:.2f} (δ={info.get('delta', 0.0):.1e}{accountant})"
                     if "epsilon" in info else "")
        lines.append(
            f"{paradigm}: test acc {entry.test_acc:.3f} ± {entry.test_acc_std:.3f}; per model "
            f"{rows.synth_seconds.mean():.2f}s synthesis + {rows.train_seconds.mean():.2f}s training "
            f"({(rows.synth_seconds + rows.train_seconds).sum():.0f}s of worker time in all){accounted}"
        )
    lines.append(f"total time: {wall_seconds:.1f}s")
    return "\n".join(lines) + "\n"
