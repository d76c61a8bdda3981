"""raypriv's ``release_density`` against the DOMIAS package's density ratio, on one run's stored synthetic sets.

    .venv/bin/python benchmarks/release_domias.py RUN_DIR PARADIGM [--json FILE]

For every shadow pipeline ``m`` of ``PARADIGM`` in the finished run
``RUN_DIR``, both attacks score the same audit samples (members: those IN
for ``m``; non-members: those OUT) against the same synthetic set (the
stored ``synthetic/<PARADIGM>/model-<m>.npz``) and the same reference set
(the run's population set, else the dataset's test split: what raypriv
uses).  The pairs of all pipelines are pooled, as raypriv's metrics pool
them, and each attack's AUC and TPR at 1% FPR come from
:func:`raypriv.metrics.roc_metrics`.

* **raypriv** ``release_density``: :func:`raypriv.release.model_statistics`
  (isotropic Gaussian KDEs, Scott's factor, on records standardised by the
  reference set; images: standardised random-ConvNet features).
* **DOMIAS** (``pip install domias``, van Breugel et al., AISTATS 2023): its
  KDE density estimator, ``density_estimator="kde"`` in
  ``domias.evaluator.evaluate_performance``, which fits
  ``scipy.stats.gaussian_kde`` (full covariance, Scott's rule) to the
  synthetic and the reference set and scores ``p_G(x) / (p_R(x) + 1e-10)``.
  That function also trains its own generator, so it cannot take a stored
  set; the two ``gaussian_kde`` fits and the ratio are its lines 233-236 and
  300-307 (domias 0.0.5), run here on raypriv's arrays.  The package's BNAF
  estimator (a flow trained per set, the paper's choice) is not run: domias
  0.0.5's trainer does not run on torch 2.14 (it passes ``verbose=`` to
  ``ReduceLROnPlateau``, removed in torch 2.7, and calls its private
  ``is_better``; tried 2026-12-05).  When ``gaussian_kde``
  cannot fit a set (a singular covariance: fewer records than dimensions, or
  a constant column), that pipeline's peer scores are missing and the
  script says how many.

Both run in the density space of raypriv (standardised records, or features
for images); ``gaussian_kde`` is affine-invariant, so standardising changes
nothing for the peer on tabular data.  Timings are wall-clock seconds for
all pipelines, excluding reading the sets.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import sys
import time

import numpy as np

import raypriv
from raypriv.config import load
from raypriv.data import load_dataset
from raypriv.errors import RayprivError
from raypriv.metrics import roc_metrics
from raypriv.release import ReleaseInputs, as_records, model_statistics, read_set
from raypriv.release.features import pixel_images
from raypriv.run.store import RunStore
from raypriv.scoring.plan import release_fields
from raypriv.split import make_audit_split


def release_inputs(run: raypriv.reader.Run) -> ReleaseInputs:
    """The run's release inputs exactly as its scoring plan builds them (:func:`raypriv.scoring.plan.release_fields`)."""
    config = run.config
    dataset = load_dataset(config.dataset)
    split = make_audit_split(dataset, config.audit.n_audit, config.audit.canary, config.n_models, config.seed,
                             config.audit.n_population)
    if not np.array_equal(split.keep, run.keep):
        raise RayprivError(f"{run.uri}: its keep.npy differs from the config's split; rescore the run first")
    fields = release_fields(config, split, dataset)
    if not fields:
        raise RayprivError(f"{run.uri}: no paradigm of the run releases a synthetic set")
    return fields["release_inputs"]


def domias_kde_scores(synthetic: np.ndarray, reference: np.ndarray, points: np.ndarray) -> np.ndarray:
    """The domias package's KDE DOMIAS score ``p_G(x) / (p_R(x) + 1e-10)`` (its evaluator's lines), ``(N,)``."""
    from scipy import stats

    density_gen = stats.gaussian_kde(synthetic.transpose(1, 0))
    density_data = stats.gaussian_kde(reference.transpose(1, 0))
    p_g = density_gen(points.transpose(1, 0))
    p_r = density_data(points.transpose(1, 0))
    return p_g / (p_r + 1e-10)


def summary(is_in: np.ndarray, score: np.ndarray) -> dict[str, float]:
    values, _ = roc_metrics(is_in, score)
    return {"auc": float(values["auc"]), "tpr@1%fpr": float(values["tpr@1%fpr"]), "n_in": int(values["n_in"]),
            "n_out": int(values["n_out"])}


def compare(run_dir: str, paradigm: str) -> dict:
    run = raypriv.load_run(run_dir)
    if paradigm not in run.results:
        raise RayprivError(f"{run_dir} has no paradigm {paradigm!r}; it has {list(run.results)}")
    load(run.raw_config)  # the config still loads (its paradigms are known)
    inputs = release_inputs(run)
    store = RunStore(run.uri)
    n_models = run.results[paradigm].n_models
    keep = run.keep[:n_models]
    ours = np.empty(keep.shape)
    peer = np.full(keep.shape, np.nan)
    ours_seconds = peer_seconds = 0.0
    failed = []
    for model_id in range(n_models):
        start = time.perf_counter()
        ours[model_id] = model_statistics(store, paradigm, model_id, inputs, ("density",))["density"]
        ours_seconds += time.perf_counter() - start
        x, _ = read_set(store, paradigm, model_id, inputs)
        if inputs.is_image:
            synthetic = inputs.feature_standardiser(np.asarray(inputs.embed(pixel_images(x)), dtype=np.float64))
        else:
            synthetic = inputs.standardiser(as_records(x))
        start = time.perf_counter()
        try:
            peer[model_id] = domias_kde_scores(synthetic, inputs.reference_density_points, inputs.audit_density_points)
        except np.linalg.LinAlgError as exc:
            failed.append(f"model {model_id}: {exc}")
        peer_seconds += time.perf_counter() - start
    fitted = ~np.isnan(peer).any(axis=1)
    result = {
        "run": run.uri, "paradigm": paradigm, "n_models": n_models, "n_audit": int(keep.shape[1]),
        "reference_size": int(len(inputs.reference_rows)),
        "raypriv_release_density": {**summary(keep, ours), "seconds": ours_seconds},
        "domias_kde": ({**summary(keep[fitted], peer[fitted]), "seconds": peer_seconds} if fitted.any() else None),
        "domias_kde_failed": failed,
        "raypriv_on_the_same_models": summary(keep[fitted], ours[fitted]) if fitted.any() and not fitted.all() else None,
        "domias_version": importlib.metadata.version("domias"),
        "raypriv_version": raypriv.__version__,
    }
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir")
    parser.add_argument("paradigm")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    try:
        importlib.metadata.version("domias")
        result = compare(args.run_dir, args.paradigm)
    except importlib.metadata.PackageNotFoundError:
        print("error: the domias package is not installed; pip install domias (or raypriv[peers])", file=sys.stderr)
        return 2
    except RayprivError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    ours, peer = result["raypriv_release_density"], result["domias_kde"]
    print(f"{result['paradigm']} in {result['run']}: {result['n_models']} pipelines x {result['n_audit']} audit samples, "
          f"reference set of {result['reference_size']}")
    print(f"  raypriv release_density: AUC {ours['auc']:.3f}, TPR@1%FPR {ours['tpr@1%fpr']:.2%} ({ours['seconds']:.2f}s)")
    if peer is None:
        print("  domias KDE: no set could be fitted")
    else:
        print(f"  domias KDE (domias {result['domias_version']}): AUC {peer['auc']:.3f}, TPR@1%FPR "
              f"{peer['tpr@1%fpr']:.2%} ({peer['seconds']:.2f}s)")
    for line in result["domias_kde_failed"]:
        print(f"  domias KDE could not fit {line}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
