# %% [markdown]
# # 6. Paired comparison of two paradigms
#
# Which paradigm leaks more, and is the difference significant?  Both were
# audited on the same audit samples (one run, or two runs with the same
# audit split), so resample the audit samples once and recompute both
# paradigms' metrics on the same resample: the difference's spread is then
# free of the per-sample difficulty both share.
#
# ```bash
# python analysis/06_paired_comparison.py RUN_DIR [OUT_DIR] [A B]
# ```

# %%
import itertools
import sys
from pathlib import Path

import numpy as np
import pandas as pd

import raypriv
from raypriv.metrics import bootstrap_roc_metrics, bootstrap_weights, paired_bootstrap_difference

args = [] if "ipykernel" in sys.modules else sys.argv[1:]
RUN = Path(args[0]) if args else Path("runs/digits-quick")
OUT = Path(args[1]) if len(args) > 1 else RUN / "analysis"
OUT.mkdir(parents=True, exist_ok=True)

scores = pd.read_parquet(RUN / "scores.parquet")
metrics = raypriv.load_run(RUN).results  # metrics.json, typed: paradigm -> ParadigmMetrics
attacks = [c for c in scores.columns if c not in ("paradigm", "model_id", "sample_id", "is_in")]
ATTACK = "lira_online" if "lira_online" in attacks else attacks[0]
paradigms = list(metrics)
PAIRS = [tuple(args[2:4])] if len(args) >= 4 else list(itertools.combinations(paradigms, 2))
N_BOOT = 1000

# %% [markdown]
# ## One set of resamples for every paradigm

# %%
n_audit = scores.sample_id.nunique()
weights = bootstrap_weights(n_audit, N_BOOT, np.random.default_rng(0))
replicates = {}
for paradigm, part in scores.groupby("paradigm", sort=False):
    is_in = part.pivot(index="model_id", columns="sample_id", values="is_in").to_numpy(dtype=bool)
    score = part.pivot(index="model_id", columns="sample_id", values=ATTACK).to_numpy(dtype=np.float64)
    replicates[paradigm] = bootstrap_roc_metrics(is_in, score, weights)

# %% [markdown]
# ## Differences A − B
#
# `p` is twice the smaller share of resampled differences on either side of
# zero: small when the difference keeps its sign on almost every resample.

# %%
rows = []
for a, b in PAIRS:
    for metric in ("tpr@1%fpr", "tpr@0.1%fpr", "auc"):
        result = paired_bootstrap_difference(
            metrics[a].attacks[ATTACK][metric], metrics[b].attacks[ATTACK][metric], replicates[a][metric],
            replicates[b][metric],
        )
        significant = result["low"] > 0 or result["high"] < 0
        leader = a if result["difference"] > 0 else b
        rows.append({"A": a, "B": b, "metric": metric, **result,
                     "reading": f"{leader} leaks more (significant)" if significant else "no significant difference"})
comparison = pd.DataFrame(rows)
comparison.to_csv(OUT / "paired_comparison.csv", index=False)
print(comparison.round(4).to_string(index=False))
