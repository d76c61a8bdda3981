"""RMIA variants on one audit's stored logits: raypriv's default against its earlier variant and the authors' settings.

Zarifzadeh et al. (ICML 2024) run RMIA with a trimmed mean over the
reference models (0.2), a softmax temperature (1 or 2), gamma = 2 and a
per-query vote (``raypriv.attacks.rmia``).  This scores the ``real``
paradigm of a finished run (default: a 16-model default audit, trained here
with ``raypriv audit --models 16`` when ``--run`` is not given) with:

* raypriv's RMIA before 2026-12-05 (plain mean, T = 1, gamma = 1, queries
  pooled before the ratio), the new default (trim 0.2, T = 1, gamma = 1,
  vote), the authors' CIFAR-10 configuration (trim 0.2, T = 2, gamma = 2,
  vote), their CIFAR-100 one (T = 1), and each knob alone;
* every variant through the audit's own path (``load_attack_inputs`` and
  ``score_attacks`` from the stored logits, as ``raypriv audit`` scores);
* the default and the old variant again through
  :func:`raypriv.attacks.reference.rmia_attack` (float64 logits, explicit
  reference lists, ``scipy.stats.trim_mean``, products of ratios, a vote per
  pair), reporting the largest difference of any score and of AUC and TPR.

Run: ``python benchmarks/rmia_variants.py OUT_DIR [--run RUN_DIR ...]``; writes
``OUT_DIR/rmia_variants.csv`` and the section ``benchmarks/results/rmia_variants.md``
(``--section``) that ``run_all.py`` assembles into ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import datetime
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from raypriv.attacks import RmiaOptions, score_attacks
from raypriv.attacks.reference import label_probabilities, rmia_attack
from raypriv.metrics import roc_metrics
from raypriv.reader import load_run
from raypriv.scoring import ScoringPlan
from raypriv.scoring.read import load_attack_inputs, read_logits

HERE = Path(__file__).resolve().parent

PARADIGM = "real"
VARIANTS = {  # name -> options
    "before 2026-12-05 (mean, T 1, gamma 1, pooled)": RmiaOptions(gamma=1.0, trim=0.0, temperature=1.0, queries="pool"),
    "default (trim 0.2, T 1, gamma 1, vote)": RmiaOptions(),
    "authors CIFAR-10 (trim 0.2, T 2, gamma 2, vote)": RmiaOptions(gamma=2.0, trim=0.2, temperature=2.0, queries="vote"),
    "authors CIFAR-100 (trim 0.2, T 1, gamma 2, vote)": RmiaOptions(gamma=2.0, trim=0.2, temperature=1.0, queries="vote"),
    "trim 0.2 only": RmiaOptions(gamma=1.0, trim=0.2, temperature=1.0, queries="pool"),
    "T 2 only": RmiaOptions(gamma=1.0, trim=0.0, temperature=2.0, queries="pool"),
    "gamma 2 only": RmiaOptions(gamma=2.0, trim=0.0, temperature=1.0, queries="pool"),
    "trim 0.2, T 2, gamma 1": RmiaOptions(gamma=1.0, trim=0.2, temperature=2.0, queries="vote"),
}
CHECKED = ("before 2026-12-05 (mean, T 1, gamma 1, pooled)", "default (trim 0.2, T 1, gamma 1, vote)",
           "authors CIFAR-10 (trim 0.2, T 2, gamma 2, vote)")
KEYS = ("auc", "tpr@1%fpr", "tpr@0.1%fpr")


def train(out: Path) -> Path:
    """A 16-model default audit (``raypriv audit --models 16``) under ``out``; its run directory."""
    run_dir = out / "audit16"
    if not (run_dir / "metrics.json").exists():
        subprocess.run([sys.executable, "-m", "raypriv.cli", "audit", "--models", "16", "--out", str(run_dir)], check=True)
    return run_dir


def measure(run_dir: Path) -> pd.DataFrame:
    run = load_run(str(run_dir))
    config = run.config
    keep = np.asarray(run.keep, dtype=bool)
    labels = run.audit["label"].to_numpy()
    if config.audit.n_population:
        raise SystemExit("this benchmark compares z = the other audit samples; give a run without audit.n_population")
    n_models, n_audit = keep.shape
    logits = read_logits(run.store, PARADIGM, n_models, n_audit, len(config.queries))
    rows = []
    for name, options in VARIANTS.items():
        plan = ScoringPlan(name=config.name, paradigms=(PARADIGM,), attacks=("rmia", "rmia_offline"), keep=keep,
                           audit_labels=labels, population_labels=np.zeros(0, np.int64), n_queries=len(config.queries),
                           recipe_hashes={}, rmia=options)
        start = time.perf_counter()
        scores, _ = load_attack_inputs(plan, run.store, PARADIGM)  # the audit's own read pass
        result = score_attacks(scores, None, keep, plan.attacks, rmia=options)
        seconds = time.perf_counter() - start
        for attack, score in result.items():
            metrics = roc_metrics(keep, score)[0]
            row = {"run": f"{run_dir} ({n_models} models)", "variant": name, "attack": attack,
                   **{k: metrics[k] for k in KEYS}, "seconds": seconds}
            if attack == "rmia" and name in CHECKED:  # the authors' formula, independently, on the float64 logits
                probs = label_probabilities(logits, labels, options.temperature, pooled=not options.per_query)
                reference = rmia_attack(probs, keep, options.gamma, options.trim)
                expected = roc_metrics(keep, reference)[0]
                row["max |score - reference|"] = float(np.abs(score - reference).max())
                row["max |metric - reference|"] = max(abs(metrics[k] - expected[k]) for k in KEYS)
            rows.append(row)
    return pd.DataFrame(rows)


def markdown(frame: pd.DataFrame) -> str:
    lines = ["| variant | attack | AUC | TPR@1%FPR | TPR@0.1%FPR | vs reference (score / metrics) |", "|---|---|---|---|---|---|"]
    for r in frame.to_dict("records"):
        check = r.get("max |score - reference|", np.nan)
        versus = "" if pd.isna(check) else f"{check:.1e} / {r['max |metric - reference|']:.1e}"
        lines.append(f"| {r['variant']} | {r['attack']} | {r['auc']:.4f} | {100 * r['tpr@1%fpr']:.2f}% | "
                     f"{100 * r['tpr@0.1%fpr']:.2f}% | {versus} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--run", type=Path, nargs="*", default=None,
                        help="finished run directories (default: train a 16-model default audit)")
    parser.add_argument("--section", type=Path, default=HERE / "results" / "rmia_variants.md")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    runs = args.run or [train(args.out)]
    frames = [measure(run_dir) for run_dir in runs]
    frame = pd.concat(frames, ignore_index=True)
    frame.to_csv(args.out / "rmia_variants.csv", index=False)
    today = datetime.date.today().isoformat()
    text = ["## RMIA as its authors run it (issue 24)", "",
            f"`python benchmarks/rmia_variants.py OUT --run {' '.join(map(str, runs))}`, {today}.  The `real` paradigm of "
            "each run (the default digits recipe: 200 mislabeled canaries, one query, z = the other audit samples), "
            "every variant scored from the same stored logits through the audit's read and attack path.  The last "
            "column is the largest difference from `raypriv.attacks.reference.rmia_attack` (the authors' formula on "
            "the float64 logits) of any score, and of AUC and both TPRs.", ""]
    for part in frames:
        text += [f"### {part['run'].iloc[0]}", "", markdown(part), ""]
    args.section.parent.mkdir(parents=True, exist_ok=True)
    args.section.write_text("\n".join(text))
    print("\n".join(text))


if __name__ == "__main__":
    main()
