# %% [markdown]
# # 5. The most vulnerable audit samples, and what the model trained on
#
# *Attack success* of a sample: the share of the models that trained on it
# (IN) in which the attack flags it, at the paradigm's global threshold that
# flags at most 1% of the OUT pairs.  Ties are broken by the mean score
# margin (IN minus OUT).  For image data each top sample is shown beside its
# nearest image (L2 in pixel space) among the synthetic sets of the models
# where it was IN: the "visual memorization" view.
#
# ```bash
# python analysis/05_vulnerable_samples.py RUN_DIR [OUT_DIR] [PARADIGM]
# ```

# %%
import sys
from pathlib import Path

import matplotlib

if "ipykernel" not in sys.modules:
    matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import yaml

import raypriv
from raypriv.config import from_dict
from raypriv.data import load_dataset

args = [] if "ipykernel" in sys.modules else sys.argv[1:]
RUN = Path(args[0]) if args else Path("runs/digits-quick")
OUT = Path(args[1]) if len(args) > 1 else RUN / "analysis"
OUT.mkdir(parents=True, exist_ok=True)

scores = pd.read_parquet(RUN / "scores.parquet")
audit = pd.read_parquet(RUN / "audit.parquet")
models = pd.read_parquet(RUN / "models.parquet")
keep = np.load(RUN / "keep.npy")
metrics = raypriv.load_run(RUN).results  # metrics.json, typed: paradigm -> ParadigmMetrics
attacks = [c for c in scores.columns if c not in ("paradigm", "model_id", "sample_id", "is_in")]
ATTACK = "lira_online" if "lira_online" in attacks else attacks[0]
PARADIGMS = [args[2]] if len(args) > 2 else list(metrics)
TOP = 20

# %% [markdown]
# ## Attack success per sample, with pandas

# %%
def per_sample(frame: pd.DataFrame, attack: str, fpr: float = 0.01) -> pd.DataFrame:
    out_scores = frame.loc[~frame.is_in, attack].sort_values(ascending=False).to_numpy()
    threshold = out_scores[min(int(np.floor(fpr * len(out_scores))), len(out_scores) - 1)]
    flagged = frame.assign(flagged=frame[attack] > threshold)
    table = flagged.groupby(["sample_id", "is_in"]).agg(flagged=("flagged", "mean"), score=(attack, "mean")).unstack()
    result = pd.DataFrame({
        "success": table[("flagged", True)],
        "flagged_out": table[("flagged", False)],
        "margin": table[("score", True)] - table[("score", False)],
    }).reset_index()
    return result.merge(audit, on="sample_id").sort_values(["success", "margin"], ascending=False, kind="stable")


vulnerable = {p: per_sample(scores[scores.paradigm == p], ATTACK).head(TOP).reset_index(drop=True) for p in PARADIGMS}
for paradigm, table in vulnerable.items():
    table.to_csv(OUT / f"vulnerable_{paradigm}.csv", index=False)
    print(paradigm, table[["sample_id", "true_label", "label", "success", "margin"]].head(5).to_string(index=False), sep="\n")

# %% [markdown]
# Filter before ranking to ask narrower questions, e.g. the most vulnerable
# samples of one class:

# %%
first = PARADIGMS[0]
ranked = per_sample(scores[scores.paradigm == first], ATTACK)
ranked[ranked.true_label == ranked.true_label.mode()[0]].head(5)

# %% [markdown]
# ## Nearest synthetic neighbours (image data)
#
# The dataset loads from the run's own `config.yaml`; `dataset_index` is the
# row of its training split.  Synthetic sets are `synthetic/<paradigm>/model-<id>.npz`
# (`x`: uint8 0..255 or float 0..1, `y`: labels or class probabilities).
# Paradigms that train on the private set itself store none: a sample's
# nearest training image is then itself.

# %%
dataset = load_dataset(from_dict(yaml.safe_load((RUN / "config.yaml").read_text())).dataset)


def pixels(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)
    return x.reshape(len(x), -1)


def nearest(paradigm: str, table: pd.DataFrame) -> pd.DataFrame:
    table = table.copy()
    queries = pixels(dataset.x_train[table.dataset_index.to_numpy()])
    table["neighbour_distance"], table["neighbour_model"], table["neighbour_index"] = np.inf, -1, -1
    folder = RUN / "synthetic" / paradigm
    if not folder.exists():
        trains_on_private = (models[models.paradigm == paradigm].synthetic_size
                             == models[models.paradigm == paradigm].private_size).all()
        if trains_on_private:
            table["neighbour_distance"] = 0.0  # itself
        return table
    for model_id in range(keep.shape[0]):
        members = np.flatnonzero(keep[model_id, table.sample_id.to_numpy()])
        path = folder / f"model-{model_id:06d}.npz"
        if len(members) == 0 or not path.exists():
            continue
        x = pixels(np.load(path)["x"])
        if x.shape[1] != queries.shape[1]:
            continue
        q = queries[members]
        # |q - x|^2 = |q|^2 + |x|^2 - 2 q.x: memory (samples x set size), not (samples x set size x pixels).
        distances = np.sqrt(np.maximum((q**2).sum(1)[:, None] + (x**2).sum(1)[None, :] - 2.0 * q @ x.T, 0.0))
        for row, column, value in zip(members, distances.argmin(1), distances.min(1), strict=True):
            if value < table.loc[row, "neighbour_distance"]:
                table.loc[row, ["neighbour_distance", "neighbour_model", "neighbour_index"]] = [value, model_id, column]
    return table


def show(ax, image: np.ndarray, title: str) -> None:
    image = image.astype(np.float32) / 255.0 if image.dtype == np.uint8 else image
    image = np.clip(image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0), 0, 1)
    ax.imshow(image, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_title(title, fontsize=7)
    ax.axis("off")


if dataset.is_image:
    for paradigm, table in vulnerable.items():
        table = nearest(paradigm, table)
        table.to_csv(OUT / f"vulnerable_{paradigm}.csv", index=False)
        columns = 10  # each block of two rows: samples above, their neighbours below
        blocks = -(-len(table) // columns)
        fig, axes = plt.subplots(2 * blocks, columns, figsize=(1.1 * columns, 2.9 * blocks), squeeze=False)
        for ax in axes.flat:
            ax.axis("off")
        for i, row in enumerate(table.itertuples()):
            top, bottom = axes[2 * (i // columns), i % columns], axes[2 * (i // columns) + 1, i % columns]
            show(top, dataset.x_train[row.dataset_index], f"#{row.sample_id}\nsuccess {row.success:.0%}")
            if row.neighbour_distance == 0 and row.neighbour_model < 0:
                show(bottom, dataset.x_train[row.dataset_index], "itself")
            elif row.neighbour_model >= 0:
                x = np.load(RUN / "synthetic" / paradigm / f"model-{row.neighbour_model:06d}.npz")["x"]
                show(bottom, x[row.neighbour_index], f"L2 {row.neighbour_distance:.2f}")
        fig.suptitle(f"{paradigm}: top samples (top) and nearest synthetic neighbours (bottom)", fontsize=9)
        fig.tight_layout()
        fig.savefig(OUT / f"vulnerable_{paradigm}.png", dpi=100)
        plt.close(fig)
print("wrote", sorted(p.name for p in OUT.glob("vulnerable_*")))
