"""RMIA against LiRA with few models on the default digits audit (the README's table).

The paper's central claim (Zarifzadeh et al., ICML 2024): with a population
set and few reference models RMIA beats LiRA.  Each row is one audit of the
default config (``digits-quick``: 200 mislabeled canaries, the same recipe)
at ``--models`` models and ``audit.n_population`` test-split samples; all
attacks are scored from the same stored logits, leave-one-out.  LiRA needs
at least 8 models (2+ shadows per side after leave-one-out), so at 4 models
only RMIA runs.  RMIA runs with the config's defaults (``rmia.trim: 0.2``
since 2026-12-05; the table in docs/methods.md was measured with the plain
mean before).  Run: ``python benchmarks/rmia_few_models.py OUT_DIR [SEEDS]``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

import raypriv.config
from raypriv.attacks import RmiaOptions, score_attacks
from raypriv.data import load_dataset
from raypriv.driver import run_audit
from raypriv.metrics import roc_metrics
from raypriv.scoring import ScoringPlan
from raypriv.scoring.read import load_attack_inputs
from raypriv.split import make_audit_split

N_POPULATION = 300


def audit(out: Path, n_models: int, seed: int) -> list[dict]:
    lira = n_models >= 8
    attacks = ["loss"] + (["lira_online", "lira_offline"] if lira else []) + ["rmia", "rmia_offline"]
    config = raypriv.config.load(None, {"out_dir": str(out / f"m{n_models}-s{seed}"), "n_models": n_models, "seed": seed,
                                        "attacks": attacks, "audit.n_population": N_POPULATION})
    run = run_audit(config, use_ray=False, show_progress=False)
    split = make_audit_split(load_dataset(config.dataset), config.audit.n_audit, config.audit.canary, n_models, seed,
                             N_POPULATION)
    plan = ScoringPlan.from_config(config, split)  # the audit's own sizes and attacks
    assert plan.n_population == N_POPULATION and np.array_equal(plan.keep, run.keep)
    scores, loss = load_attack_inputs(plan, run.store, "real")  # the attacks include loss: both inputs
    population, _ = load_attack_inputs(plan, run.store, "real", population=True)  # RMIA's z: scores only
    rows = []
    variants = [(a, 1.0, "—") for a in attacks if not a.startswith("rmia")]
    variants += [(a, g, z) for a in ("rmia", "rmia_offline") for g in (1.0, 2.0) for z in ("audit", "population")]
    for attack, gamma, z in variants:
        result = score_attacks(scores, loss, split.keep, [attack], rmia=RmiaOptions(gamma=gamma),
                               population=population if z == "population" else None)[attack]
        metrics = roc_metrics(split.keep, result)[0]
        rows.append({"models": n_models, "seed": seed, "attack": attack, "gamma": gamma if attack.startswith("rmia") else None,
                     "z": z, "auc": metrics["auc"], "tpr@1%": metrics["tpr@1%fpr"], "tpr@0.1%": metrics["tpr@0.1%fpr"]})
    return rows


def main(out: Path, seeds: int = 3) -> None:
    rows = [row for n_models in (4, 8) for seed in range(seeds) for row in audit(out, n_models, seed)]
    frame = pd.DataFrame(rows)
    frame.to_csv(out / "rmia_few_models.csv", index=False)
    table = frame.groupby(["models", "attack", "gamma", "z"], dropna=False).agg(
        auc=("auc", "mean"), auc_sd=("auc", "std"), tpr1=("tpr@1%", "mean"), tpr01=("tpr@0.1%", "mean")).reset_index()
    print(f"| models | attack | γ | population z | AUC (mean ± sd over {seeds} seeds) | TPR@1%FPR | TPR@0.1%FPR |")
    print("|---|---|---|---|---|---|---|")
    for r in table.itertuples():
        gamma = "" if np.isnan(r.gamma) else f"{r.gamma:g}"
        print(f"| {r.models} | {r.attack} | {gamma} | {r.z} | {r.auc:.3f} ± {r.auc_sd:.3f} | {r.tpr1:.1%} | {r.tpr01:.1%} |")


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 3)
