# %% [markdown]
# # 3. Utility and cost
#
# Test accuracy (mean ± std over models) and the time each pipeline took,
# from `models.parquet`: one row per trained model.
#
# ```bash
# python analysis/03_utility_cost.py RUN_DIR [OUT_DIR]
# ```

# %%
import json
import sys
from pathlib import Path

import pandas as pd
import yaml

args = [] if "ipykernel" in sys.modules else sys.argv[1:]
RUN = Path(args[0]) if args else Path("runs/digits-quick")
OUT = Path(args[1]) if len(args) > 1 else RUN / "analysis"
OUT.mkdir(parents=True, exist_ok=True)

models = pd.read_parquet(RUN / "models.parquet")
config = yaml.safe_load((RUN / "config.yaml").read_text())

# %% [markdown]
# ## Utility

# %%
utility = models.groupby("paradigm", sort=False).test_acc.agg(["mean", "std", "min", "max", "count"])
utility.columns = ["test acc mean", "test acc std", "min", "max", "models"]
utility.to_csv(OUT / "utility.csv")
utility.round(4)

# %% [markdown]
# ## Cost
#
# Seconds per model for synthesis and training, and the total in hours by
# device.  CPU- and GPU-hours multiply worker time by the resources one
# worker held (`ray.num_cpus_per_actor`, `ray.num_gpus_per_actor`).

# %%
ray = config.get("ray", {}) or {}
models["seconds"] = models.synth_seconds + models.train_seconds
models["gpu"] = models.device.str.startswith("cuda")
cost = models.groupby("paradigm", sort=False).agg(
    models=("model_id", "count"),
    synthesis_s_mean=("synth_seconds", "mean"),
    synthesis_s_std=("synth_seconds", "std"),
    training_s_mean=("train_seconds", "mean"),
    training_s_std=("train_seconds", "std"),
    worker_hours=("seconds", lambda s: s.sum() / 3600),
)
cost["CPU-hours"] = models[~models.gpu].groupby("paradigm").seconds.sum().reindex(cost.index, fill_value=0) / 3600 \
    * float(ray.get("num_cpus_per_actor") or 1)
cost["GPU-hours"] = models[models.gpu].groupby("paradigm").seconds.sum().reindex(cost.index, fill_value=0) / 3600 \
    * float(ray.get("num_gpus_per_actor") or 1)
cost["devices"] = models.groupby("paradigm", sort=False).device.agg(lambda d: ", ".join(sorted(set(d))))
cost.to_csv(OUT / "cost.csv")
cost.round(4)

# %% [markdown]
# ## What each paradigm reported
#
# `info` is JSON per model (DP-SGD: the accounted `epsilon`, `delta`,
# `noise_multiplier`).  Expand it into columns:

# %%
info = pd.json_normalize(models["info"].map(json.loads).tolist())
info.insert(0, "paradigm", models.paradigm.to_numpy())
reported = info.groupby("paradigm", sort=False).mean(numeric_only=True)
reported.to_csv(OUT / "reported_info.csv")
print(utility.round(4).to_string(), cost.round(4).to_string(), reported.to_string(), sep="\n\n")
