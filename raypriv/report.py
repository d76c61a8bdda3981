"""The printed results table of an audit."""

from __future__ import annotations

from typing import Any

import pandas as pd

from raypriv.config import ExperimentConfig


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
