# %% [markdown]
# # Per-canary confidence IN vs OUT, at cluster scale (Ray Data)
#
# The per-sample mean confidence (softmax probability of the audit label, on
# the un-augmented query 0) over the models that trained on the sample (IN)
# and over those that did not (OUT).  The logits are never loaded into this
# process: `raypriv.scoring.logits_dataset.logits_dataset` is a `ray.data.Dataset` over
# the run's logits files, and the reduction runs on the cluster's workers.
# Run headless (a local Ray starts unless `RAY_ADDRESS` names a cluster):
#
# ```bash
# python analysis/cluster_canary_confidence.py RUN_DIR [OUT_DIR]
# ```
#
# Writes `canary_confidence.csv`: one row per (paradigm, sample) with
# `conf_in`, `conf_out`, their gap and the sample's `canary` flag.

# %%
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import ray

from raypriv.run.store import RunStore
from raypriv.scoring.logits_dataset import logits_dataset

args = [] if "ipykernel" in sys.modules else sys.argv[1:]
RUN = args[0] if args else "runs/digits-quick"
OUT = Path(args[1]) if len(args) > 1 else Path(RUN) / "analysis"
OUT.mkdir(parents=True, exist_ok=True)

# %% [markdown]
# ## Confidence per (model, sample), on the workers
#
# `keep.npy` (models x samples, small beside the logits) goes to the object
# store once; each batch of logit rows becomes (paradigm, sample, IN?, confidence).

# %%
store = RunStore(RUN)
dataset = logits_dataset(RUN)  # connects to RAY_ADDRESS, or starts a local Ray
keep_ref = ray.put(store.read_npy("keep.npy"))


def confidence(batch: pa.Table, keep_ref) -> pa.Table:
    keep = ray.get(keep_ref)
    batch = batch.filter(pa.compute.equal(batch["query_id"], 0))
    if "population" in batch.column_names:  # the population set has no membership
        batch = batch.filter(pa.compute.invert(batch["population"]))
    logits = batch["logits"].combine_chunks().flatten().to_numpy().reshape(len(batch), -1).astype(np.float64)
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    p /= p.sum(axis=1, keepdims=True)
    model, sample = batch["model_id"].to_numpy(), batch["sample_id"].to_numpy()
    label = batch["label"].to_numpy()
    return pa.table({"paradigm": batch["paradigm"], "sample_id": sample, "is_in": keep[model, sample],
                     "confidence": p[np.arange(len(batch)), label]})


per_pair = dataset.map_batches(confidence, fn_kwargs={"keep_ref": keep_ref}, batch_format="pyarrow", num_cpus=1)

# %% [markdown]
# ## Mean over IN and over OUT models, per sample
#
# The groupby runs on the cluster too; only (paradigms x samples x 2) means come back.

# %%
means = per_pair.groupby(["paradigm", "sample_id", "is_in"]).mean("confidence").to_pandas()
means = means.rename(columns={"mean(confidence)": "confidence"})
table = means.pivot_table(index=["paradigm", "sample_id"], columns="is_in", values="confidence").reset_index()
table = table.rename(columns={True: "conf_in", False: "conf_out"})
table.columns.name = None
table["gap"] = table.conf_in - table.conf_out
audit = store.read_table("audit.parquet").to_pandas()
table = table.merge(audit[["sample_id", "canary"]], on="sample_id").sort_values(["paradigm", "sample_id"])
table.to_csv(OUT / "canary_confidence.csv", index=False)
summary = table.groupby(["paradigm", "canary"])[["conf_in", "conf_out", "gap"]].mean()
print(summary.to_string(float_format=lambda v: f"{v:.3f}"))
