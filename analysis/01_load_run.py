# %% [markdown]
# # 1. Load a run and filter it
#
# Every table of a raypriv run directory, loaded with plain pandas, joined and
# filtered; the metrics through raypriv's typed reader.  Run headless:
#
# ```bash
# python analysis/01_load_run.py RUN_DIR [OUT_DIR]
# ```
#
# or open it as a notebook (VS Code, or `jupytext --to notebook`) and set
# `RUN` below.  OUT_DIR defaults to `RUN_DIR/analysis`.

# %%
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

import raypriv

args = [] if "ipykernel" in sys.modules else sys.argv[1:]
RUN = Path(args[0]) if args else Path("runs/digits-quick")
OUT = Path(args[1]) if len(args) > 1 else RUN / "analysis"
OUT.mkdir(parents=True, exist_ok=True)

# %% [markdown]
# ## The files
#
# `run.json` and `config.yaml` describe the run; `keep.npy` is the membership
# matrix (`keep[model_id, sample_id]`: that audit sample was in that model's
# private training set).

# %%
manifest = json.loads((RUN / "run.json").read_text())
config = yaml.safe_load((RUN / "config.yaml").read_text())
keep = np.load(RUN / "keep.npy")
print(f"{config['name']}: {config['dataset']['name']}, {keep.shape[0]} models x {keep.shape[1]} audit samples, "
      f"paradigms {config['paradigms']}")

# %% [markdown]
# One row per audit sample (`canary`: trained with a wrong label), one per
# trained model, one per (paradigm, target model, audit sample) score, and
# the raw logits (a `paradigm` column comes from the `paradigm=` folders).

# %%
audit = pd.read_parquet(RUN / "audit.parquet")
models = pd.read_parquet(RUN / "models.parquet")
scores = pd.read_parquet(RUN / "scores.parquet")
logits = pd.read_parquet(RUN / "logits")
if "population" in logits.columns:  # runs with a population set (audit.n_population): audit rows only here
    logits = logits[~logits.population.fillna(False).astype(bool)].drop(columns="population")
metrics = raypriv.load_run(RUN).results  # metrics.json, typed: paradigm -> ParadigmMetrics

KEYS = ["paradigm", "model_id", "sample_id", "is_in"]
attacks = [c for c in scores.columns if c not in KEYS]
print("attacks:", attacks)
print(audit.head(), models[["paradigm", "model_id", "test_acc", "synth_seconds", "train_seconds", "device"]].head(), sep="\n\n")

# %% [markdown]
# `metrics.json` flattened: one row per (paradigm, attack).  Each paradigm's
# `attacks` holds every attack the run scored (`AttackMetrics`; `to_json()`
# gives its numbers by their metrics.json names), so new attacks appear
# without changing this code.

# %%
metric_rows = [
    {"paradigm": paradigm, "attack": attack, **values.to_json(), "test_acc": entry.test_acc, "n_models": entry.n_models}
    for paradigm, entry in metrics.items()
    for attack, values in entry.attacks.items()
]
metrics_frame = pd.DataFrame(metric_rows)
metrics_frame.to_csv(OUT / "metrics_flat.csv", index=False)
print(metrics_frame.to_string(index=False))

# %% [markdown]
# ## Joins
#
# Scores carry `sample_id`; the audit table says which class each sample is
# and whether it is a canary.  Never rely on row order: join on the keys.

# %%
scored = scores.merge(audit, on="sample_id", how="left", validate="many_to_one")
assert len(scored) == len(scores)
print(scored.head().to_string(index=False))

# %% [markdown]
# ## Filters
#
# The same frame, cut three ways: one paradigm, one true class, canaries only.

# %%
first = config["paradigms"][0]
one_paradigm = scored[scored.paradigm == first]
one_class = scored[scored.true_label == 3]
canaries = scored[scored.canary]
print(f"{first}: {len(one_paradigm)} pairs; class 3: {len(one_class)} pairs; canaries: {len(canaries)} pairs")

# Mean score IN vs OUT per paradigm and class (the attack separates them where the gap is large).
attack = "lira_online" if "lira_online" in attacks else attacks[0]
gap = scored.pivot_table(index=["paradigm", "true_label"], columns="is_in", values=attack, aggfunc="median")
gap.columns = ["OUT median", "IN median"]
gap.to_csv(OUT / "median_score_by_class.csv")
print(gap.head(12).to_string())

# %% [markdown]
# Logits are long format: one row per (model, sample, query).  Here, the
# probability each model gives the training label, IN against OUT.

# %%
first_query = logits[logits.query_id == 0].copy()
stacked = np.stack(first_query.logits.to_numpy())
stacked = stacked - stacked.max(axis=1, keepdims=True)
probabilities = np.exp(stacked) / np.exp(stacked).sum(axis=1, keepdims=True)
first_query["p_label"] = probabilities[np.arange(len(first_query)), first_query.label.to_numpy()]
first_query["is_in"] = keep[first_query.model_id.to_numpy(), first_query.sample_id.to_numpy()]
confidence = first_query.groupby(["paradigm", "is_in"]).p_label.describe()[["count", "mean", "50%"]]
confidence.to_csv(OUT / "label_confidence.csv")
print(confidence.to_string())

# %%
overview = pd.DataFrame(
    {
        "table": ["audit", "models", "scores", "logits"],
        "rows": [len(audit), len(models), len(scores), len(logits)],
        "columns": [", ".join(map(str, t.columns)) for t in (audit, models, scores, logits)],
    }
)
overview.to_csv(OUT / "overview.csv", index=False)
print(overview.to_string(index=False))
