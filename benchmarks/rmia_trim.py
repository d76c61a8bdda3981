"""RMIA with the plain mean against the trimmed mean over the reference models, per paradigm of a finished run.

    python benchmarks/rmia_trim.py RUN_DIR

Loads each paradigm's stored logits and scores them with the reference
implementation (``raypriv.attacks.reference.rmia_attack``, gamma 1) at trim 0
and 0.2; prints AUC and TPR at 1% FPR (interpolated).  benchmarks/RESULTS.md,
"The trimmed mean on synthetic pipelines, and the default", reads it.
"""

from __future__ import annotations

import sys

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

import raypriv
from raypriv.attacks.reference import label_probabilities, rmia_attack
from raypriv.run.store import RunStore
from raypriv.scoring.read import read_logits


def main(path: str) -> None:
    run, store = raypriv.load_run(path), RunStore(path)
    labels = run.audit.label.to_numpy()
    for paradigm, metrics in run.results.items():
        keep = run.keep[: metrics.n_models]
        logits = read_logits(store, paradigm, metrics.n_models, keep.shape[1], len(run.config.queries))
        probs = label_probabilities(logits, labels)
        cells = []
        for trim in (0.0, 0.2):
            score = rmia_attack(probs, keep, gamma=1.0, trim=trim)
            fpr, tpr, _ = roc_curve(keep.ravel(), score.ravel())
            auc = roc_auc_score(keep.ravel(), score.ravel())
            cells.append(f"trim {trim}: AUC {auc:.3f} TPR@1% {np.interp(0.01, fpr, tpr):.3f}")
        print(f"{paradigm:20s}", " | ".join(cells))


if __name__ == "__main__":
    main(sys.argv[1])
