# %% [markdown]
# # 4. The report's plots, and re-plotting a subset
#
# Log-log ROC curves of all paradigms on one figure, the privacy–utility
# scatter, the per-sample LiRA scores IN against OUT; then the ROC again on
# one class only, to show how a filter changes the picture.
#
# ```bash
# python analysis/04_plots.py RUN_DIR [OUT_DIR] [ATTACK]
# ```

# %%
import sys
from pathlib import Path

import matplotlib

if "ipykernel" not in sys.modules:
    matplotlib.use("Agg")  # headless
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

import raypriv
from raypriv.metrics import bootstrap_roc_metrics, bootstrap_weights, percentile_interval, roc_metrics

args = [] if "ipykernel" in sys.modules else sys.argv[1:]
RUN = Path(args[0]) if args else Path("runs/digits-quick")
OUT = Path(args[1]) if len(args) > 1 else RUN / "analysis"
OUT.mkdir(parents=True, exist_ok=True)

scores = pd.read_parquet(RUN / "scores.parquet")
audit = pd.read_parquet(RUN / "audit.parquet")
metrics = raypriv.load_run(RUN).results  # metrics.json, typed: paradigm -> ParadigmMetrics
attacks = [c for c in scores.columns if c not in ("paradigm", "model_id", "sample_id", "is_in")]
ATTACK = args[2] if len(args) > 2 else ("lira_online" if "lira_online" in attacks else attacks[0])
paradigms = list(metrics)
FLOOR = 1e-4  # log axes cannot show 0


def matrices(frame: pd.DataFrame, attack: str) -> tuple[np.ndarray, np.ndarray]:
    is_in = frame.pivot(index="model_id", columns="sample_id", values="is_in").to_numpy(dtype=bool)
    score = frame.pivot(index="model_id", columns="sample_id", values=attack).to_numpy(dtype=np.float64)
    return is_in, score


def plot_roc(frame: pd.DataFrame, title: str, path: Path) -> None:
    """One log-log ROC curve per paradigm of ``frame``."""
    fig, ax = plt.subplots(figsize=(6, 5))
    for paradigm, part in frame.groupby("paradigm", sort=False):
        _, (fpr, tpr) = roc_metrics(*matrices(part, ATTACK))
        auc = np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1])) / 2
        ax.plot(np.maximum(fpr, FLOOR), np.maximum(tpr, FLOOR), label=f"{paradigm} (AUC {auc:.3f})")
    ax.plot([FLOOR, 1], [FLOOR, 1], "k--", linewidth=0.8, label="chance")
    ax.set(xscale="log", yscale="log", xlim=(FLOOR, 1), ylim=(FLOOR, 1), title=title,
           xlabel="false positive rate", ylabel="true positive rate")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


# %% [markdown]
# ## ROC curves, all paradigms

# %%
plot_roc(scores, f"ROC, {ATTACK}", OUT / "roc.png")

# %% [markdown]
# ## Privacy–utility
#
# TPR at 0.1% FPR (95% bootstrap interval over audit samples) against test
# accuracy (± std over models).  Lower right is better.

# %%
rng = np.random.default_rng(0)
points = []
for paradigm, part in scores.groupby("paradigm", sort=False):
    is_in, score = matrices(part, ATTACK)
    boot = bootstrap_roc_metrics(is_in, score, bootstrap_weights(is_in.shape[1], 1000, rng))
    low, high = percentile_interval(boot["tpr@0.1%fpr"])
    entry = metrics[paradigm]
    points.append({"paradigm": paradigm, "acc": entry.test_acc, "acc_std": entry.test_acc_std,
                   "tpr": entry.attacks[ATTACK].tpr["tpr@0.1%fpr"], "low": low, "high": high})
points = pd.DataFrame(points)
points.to_csv(OUT / "privacy_utility.csv", index=False)

fig, ax = plt.subplots(figsize=(6, 4.5))
for row in points.itertuples():
    y = max(row.tpr, FLOOR)
    ax.errorbar(row.acc, y, xerr=row.acc_std, yerr=[[y - max(row.low, FLOOR)], [max(row.high, FLOOR) - y]],
                fmt="o", capsize=3, label=row.paradigm)
ax.axhline(0.001, color="k", linestyle="--", linewidth=0.8, label="chance")
ax.set(yscale="log", ylim=(FLOOR, 1), xlabel="test accuracy", ylabel=f"TPR at 0.1% FPR ({ATTACK})")
ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(OUT / "privacy_utility.png", dpi=100)

# %% [markdown]
# ## Per-sample LiRA scores, IN against OUT
#
# Clipped to the 0.5–99.5% range: likelihood ratios have long tails.

# %%
score_attack = "lira_online" if "lira_online" in attacks else ATTACK
fig, axes = plt.subplots(1, len(paradigms), figsize=(4 * len(paradigms), 3), squeeze=False)
# One panel per paradigm: scores.parquet and metrics.json hold the same paradigms.
for ax, (paradigm, part) in zip(axes[0], scores.groupby("paradigm", sort=False), strict=True):
    low, high = part[score_attack].quantile([0.005, 0.995])
    bins = np.linspace(low, high, 50)
    for is_in, colour in ((False, "tab:blue"), (True, "tab:red")):
        values = part.loc[part.is_in == is_in, score_attack].clip(low, high)
        ax.hist(values, bins=bins, alpha=0.55, color=colour, label="IN" if is_in else "OUT",
                weights=np.full(len(values), 1 / len(values)))
    ax.set(title=paradigm, xlabel=f"{score_attack} score", ylabel="share of pairs")
    ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(OUT / "scores.png", dpi=100)

# %% [markdown]
# ## Re-plot a subset
#
# Any filter on the joined frame gives a new ROC: here one class, and the
# canaries only (they are all canaries under `canary: mislabel`).

# %%
labelled = scores.merge(audit[["sample_id", "true_label", "canary"]], on="sample_id")
chosen_class = int(labelled.true_label.mode()[0])
plot_roc(labelled[labelled.true_label == chosen_class], f"ROC, {ATTACK}, class {chosen_class} only",
         OUT / f"roc_class{chosen_class}.png")
if labelled.canary.any():
    plot_roc(labelled[labelled.canary], f"ROC, {ATTACK}, canaries only", OUT / "roc_canaries.png")
print("wrote", sorted(p.name for p in OUT.glob("*.png")))
