# %% [markdown]
# # 2. The privacy table, rebuilt from the scores
#
# Recomputes the report's summary (AUC, TPR at 0.1% and 1% FPR with 95%
# intervals, the empirical ε lower bound beside the accounted ε) from
# `scores.parquet`, then the same metrics on a subset: canaries only, and per
# true class.
#
# ```bash
# python analysis/02_privacy_table.py RUN_DIR [OUT_DIR]
# ```

# %%
import sys
from pathlib import Path

import numpy as np
import pandas as pd

import raypriv
from raypriv.metrics import (
    audit_epsilon_lower_bound,
    bootstrap_roc_metrics,
    bootstrap_weights,
    percentile_interval,
    roc_metrics,
    tpr_interval,
)

args = [] if "ipykernel" in sys.modules else sys.argv[1:]
RUN = Path(args[0]) if args else Path("runs/digits-quick")
OUT = Path(args[1]) if len(args) > 1 else RUN / "analysis"
OUT.mkdir(parents=True, exist_ok=True)
N_BOOT = 1000

scores = pd.read_parquet(RUN / "scores.parquet")
audit = pd.read_parquet(RUN / "audit.parquet")
metrics = raypriv.load_run(RUN).results  # metrics.json, typed: paradigm -> ParadigmMetrics
attacks = [c for c in scores.columns if c not in ("paradigm", "model_id", "sample_id", "is_in")]

# %% [markdown]
# ## Matrices
#
# The attacks' metrics take `(n_models, n_audit)` matrices.  A pivot on
# `(model_id, sample_id)` builds them whatever the row order.

# %%
def matrices(frame: pd.DataFrame, attack: str) -> tuple[np.ndarray, np.ndarray]:
    """``is_in`` and the attack's scores of one paradigm, rows = target models, columns = audit samples."""
    is_in = frame.pivot(index="model_id", columns="sample_id", values="is_in").to_numpy(dtype=bool)
    score = frame.pivot(index="model_id", columns="sample_id", values=attack).to_numpy(dtype=np.float64)
    return is_in, score


# %% [markdown]
# ## The summary
#
# Point estimates from `roc_metrics` (the same function the audit uses),
# Clopper–Pearson intervals on the TPR counts, and a bootstrap over audit
# samples: resample samples with replacement, keep all of a sample's models,
# choose the threshold again.  The bootstrap respects that one canary's pairs
# are correlated; Clopper–Pearson does not, and is narrower.

# %%
rng = np.random.default_rng(0)
rows = []
for paradigm, frame in scores.groupby("paradigm", sort=False):
    info = metrics[paradigm].info  # what the paradigm reported: DP's accounted epsilon and delta
    for attack in attacks:
        if frame[attack].isna().all():  # a release attack on a paradigm that releases no set: null in scores.parquet
            continue
        is_in, score = matrices(frame, attack)
        point, _ = roc_metrics(is_in, score)
        boot = bootstrap_roc_metrics(is_in, score, bootstrap_weights(is_in.shape[1], N_BOOT, rng))
        row = {"paradigm": paradigm, "attack": attack, "AUC": point["auc"]}
        row["AUC low"], row["AUC high"] = percentile_interval(boot["auc"])
        for key, name in (("tpr@1%fpr", "TPR@1%FPR"), ("tpr@0.1%fpr", "TPR@0.1%FPR")):
            row[name] = point[key]
            row[f"{name} low"], row[f"{name} high"] = percentile_interval(boot[key])
            row[f"{name} CP low"], row[f"{name} CP high"] = tpr_interval(point[key], point["n_in"])
        row["eps lower bound"] = audit_epsilon_lower_bound(is_in, score, metrics[paradigm].delta)  # as metrics.json
        row["accounted eps"] = info.get("epsilon", np.nan)
        row["test acc"] = metrics[paradigm].test_acc
        rows.append(row)
summary = pd.DataFrame(rows)
summary.to_csv(OUT / "privacy_summary.csv", index=False)
summary[["paradigm", "attack", "AUC", "TPR@1%FPR", "TPR@1%FPR low", "TPR@1%FPR high", "TPR@0.1%FPR",
         "eps lower bound", "accounted eps"]].round(4)

# %% [markdown]
# The recomputed numbers agree with `metrics.json`:

# %%
for row in summary.itertuples():
    stored = metrics[row.paradigm].attacks[row.attack]
    assert abs(row.AUC - stored.auc) < 1e-6, (row.paradigm, row.attack)

# %% [markdown]
# ## Filtered: canaries only, and per class
#
# Restrict the audit samples (columns) and recompute.  Each sample stays IN
# for half the models, so any subset of samples is still a balanced audit,
# only a smaller one: expect wider intervals.

# %%
attack = "lira_online" if "lira_online" in attacks else attacks[0]
labelled = scores.merge(audit[["sample_id", "true_label", "canary"]], on="sample_id")
by_class = []
for (paradigm, true_label), frame in labelled.groupby(["paradigm", "true_label"], sort=False):
    is_in, score = matrices(frame, attack)
    point, _ = roc_metrics(is_in, score)
    by_class.append({"paradigm": paradigm, "class": true_label, "samples": is_in.shape[1],
                     "AUC": point["auc"], "TPR@1%FPR": point["tpr@1%fpr"]})
by_class = pd.DataFrame(by_class).sort_values(["paradigm", "class"])
by_class.to_csv(OUT / "privacy_by_class.csv", index=False)

canary_rows = []
for paradigm, frame in labelled[labelled.canary].groupby("paradigm", sort=False):
    is_in, score = matrices(frame, attack)
    point, _ = roc_metrics(is_in, score)
    canary_rows.append({"paradigm": paradigm, "canaries": is_in.shape[1], "AUC": point["auc"],
                        "TPR@1%FPR": point["tpr@1%fpr"], "TPR@0.1%FPR": point["tpr@0.1%fpr"]})
canaries = pd.DataFrame(canary_rows, columns=["paradigm", "canaries", "AUC", "TPR@1%FPR", "TPR@0.1%FPR"])
canaries.to_csv(OUT / "privacy_canaries.csv", index=False)
print(by_class.round(3).to_string(index=False))
print(canaries.round(3).to_string(index=False))
