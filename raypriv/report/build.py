"""Reading finished runs and computing everything the report shows.

``raypriv report RUN_DIR [RUN_DIR ...]`` reads finished run directories (never
the models).  Everything is computed from scores.parquet, metrics.json,
models.parquet, keep.npy, audit.parquet and the stored synthetic sets:
:func:`build_report` gives, per paradigm, the privacy metrics with 95%
intervals, a worded verdict, utility and cost, paired comparisons between
paradigms, the most vulnerable audit samples beside their nearest synthetic
neighbours, and the plots.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pandas as pd

from raypriv.attacks import headline_order
from raypriv.errors import RayprivError
from raypriv.metrics import (
    LOW_FPRS,
    bootstrap_roc_metrics,
    bootstrap_tpr_at_fpr,
    bootstrap_weights,
    paired_bootstrap_difference,
    percentile_interval,
    roc_metrics,
    tpr_interval,
)
from raypriv.release import release_headline_order
from raypriv.report.figures import headline_figures, neighbour_figure, png_bytes, roc_figure
from raypriv.report.results import Comparison, FinishedRun, ParadigmResult, ReleaseView, Report
from raypriv.report.samples import TOP_SAMPLES, nearest_neighbours, vulnerable_samples
from raypriv.report.verdicts import (
    FrontierArm,
    LevelEvidence,
    VerdictInput,
    frontier_decision,
    frontier_verdict,
    is_frontier,
    lowest_measurable_fpr,
    verdict,
)
from raypriv.seeding import numpy_rng

HISTOGRAM_PREFERENCE = ("lira_online",)  # "per-sample LiRA scores", whatever the headline attack
_SCORE_KEYS = ("paradigm", "model_id", "sample_id", "is_in")


# ------------------------------------------------------------- loading runs


def load_scores(run: FinishedRun, paradigm: str, attacks: list[str]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``is_in`` and each attack's scores of one paradigm as ``(n_models, n_audit)`` matrices.

    Read by column name and placed by ``(model_id, sample_id)``, so neither
    the row order nor the row groups of scores.parquet matter.
    """
    import pyarrow as pa
    import pyarrow.dataset as pads
    import pyarrow.parquet as pq

    used = run.results[paradigm].n_models if paradigm in run.results else 0  # an until-decided paradigm's stop
    keep = run.keep[:used] if 0 < used < run.keep.shape[0] else run.keep
    n_models, n_audit = keep.shape
    path = run.store.path("scores.parquet")
    try:  # a file, or the Ray backend's folder
        available = pads.dataset(path, filesystem=run.store.fs, format="parquet").schema.names
        missing = [a for a in attacks if a not in available]
        if missing:
            raise RayprivError(f"{path} has no column for attack(s) {missing}; rerun `raypriv audit` to rescore")
        table = pq.read_table(
            path, filesystem=run.store.fs, columns=[*_SCORE_KEYS, *attacks], filters=[("paradigm", "==", paradigm)]
        )
    except (pa.ArrowException, OSError) as exc:  # empty or truncated (a run from before run.json's checksums)
        raise RayprivError(
            f"{path} is corrupt or truncated ({' '.join(str(exc).split())[:200]}); rerun `raypriv audit` with the "
            "run's config and --out to rescore"
        ) from None
    model = table.column("model_id").to_numpy().astype(np.int64)
    sample = table.column("sample_id").to_numpy().astype(np.int64)
    if len(model) != n_models * n_audit or model.min(initial=0) < 0 or model.max(initial=0) >= n_models \
            or sample.max(initial=0) >= n_audit:
        raise RayprivError(
            f"{path} holds {len(model)} rows for {paradigm}, expected {n_models} models × {n_audit} samples; "
            "rerun `raypriv audit` with the same config and --out to rescore"
        )
    filled = np.zeros((n_models, n_audit), dtype=bool)
    filled[model, sample] = True
    if not filled.all():
        raise RayprivError(f"{path}: some (model, sample) pairs of {paradigm} are missing or repeated; rescore the run")
    is_in = np.zeros((n_models, n_audit), dtype=bool)
    is_in[model, sample] = table.column("is_in").to_numpy(zero_copy_only=False)
    if not np.array_equal(is_in, keep):  # another run's scores, or a damaged is_in column
        raise RayprivError(
            f"{path}: the is_in column of {paradigm} disagrees with keep.npy on {int((is_in != keep).sum())} "
            "(model, sample) pairs (scores of another run, or damaged); rerun `raypriv audit` with the same config "
            "and --out to rescore"
        )
    scores = {}
    for attack in attacks:
        matrix = np.empty((n_models, n_audit), dtype=np.float64)
        matrix[model, sample] = table.column(attack).to_numpy(zero_copy_only=False)
        scores[attack] = matrix
    return is_in, scores


def audit_split_mismatch(a: FinishedRun, b: FinishedRun) -> str | None:
    """Why two runs' audit samples cannot be paired, or None if they can (same samples, labels, membership)."""
    if a.uri == b.uri:
        return None
    if a.keep.shape != b.keep.shape:
        return f"keep.npy shapes differ ({a.keep.shape} vs {b.keep.shape})"
    if not np.array_equal(a.keep, b.keep):
        return "keep.npy differs (different seed or model count)"
    columns = ["sample_id", "dataset_index", "true_label", "label", "canary"]
    if not a.audit[columns].reset_index(drop=True).equals(b.audit[columns].reset_index(drop=True)):
        return "audit.parquet differs (different audit samples or canary labels)"
    dataset_a, dataset_b = a.raw_config.get("dataset"), b.raw_config.get("dataset")
    if dataset_a != dataset_b:
        return f"the datasets differ ({dataset_a} vs {dataset_b})"
    return None


# ------------------------------------------------------------ the computations


def _labels(pairs: list[tuple[FinishedRun, str]]) -> list[str]:
    """Paradigm names, or ``run:paradigm`` where two runs share a paradigm name."""
    run_names: dict[str, str] = {}
    for run, _ in pairs:
        if run.uri in run_names:
            continue
        candidate, suffix = run.name, 2
        while candidate in run_names.values():
            candidate, suffix = f"{run.name}#{suffix}", suffix + 1
        run_names[run.uri] = candidate
    counts = pd.Series([p for _, p in pairs]).value_counts()
    return [f"{run_names[run.uri]}:{p}" if counts[p] > 1 else p for run, p in pairs]


def choose_attack(results: list[ParadigmResult]) -> str:
    """The attack the report leads with: the first of :func:`raypriv.attacks.headline_order` every paradigm has.

    One attack for every paradigm keeps the comparison paired, and a choice
    made before looking at the scores keeps the verdicts' intervals honest.
    """
    common = [a for a in results[0].entry.attacks if all(a in r.entry.attacks for r in results)]
    if not common:
        raise RayprivError("the runs share no attack; rerun them with a common `attacks` list")
    return next((a for a in headline_order() if a in common), common[0])


def _evidence(result: ParadigmResult, attack: str, bootstrap: dict[str, np.ndarray] | None = None) -> VerdictInput:
    """The verdict's input for ``attack`` on ``result``: its TPR levels with the bootstrap's intervals
    (``bootstrap``, default the headline attack's ``result.bootstrap``), else Clopper–Pearson's."""
    metrics = result.entry.attacks[attack]
    bootstrap = result.bootstrap if bootstrap is None else bootstrap
    levels = []
    for key, fpr in LOW_FPRS.items():
        if bootstrap:
            low, high = percentile_interval(bootstrap[key])
        else:
            low, high = tpr_interval(metrics[key], metrics["n_in"])
        levels.append(LevelEvidence(fpr, metrics[key], low, high))
    epsilon, delta = result.accounted
    return VerdictInput(
        n_models=result.entry.n_models,
        n_audit=int(result.is_in.shape[1]),
        n_out=metrics.n_out,
        attack=attack,
        levels=tuple(levels),
        accounted_epsilon=epsilon,
        accounted_delta=delta,
        eps_lower_bound=metrics.eps_lower_bound,
        accountant=result.accountant,
    )


# -------------------------------------------------------------- building it


def build_report(
    runs: list[FinishedRun],
    attack: str | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    compare: tuple[str, str] | None = None,
    top: int = TOP_SAMPLES,
    load_images: bool = True,
) -> Report:
    """Compute everything ``raypriv report`` shows for these runs (``raypriv.load_run(dir)`` opens one).

    The bootstrap resamples audit samples (``n_boot`` replicates, drawn from
    ``seed``); runs with the same audit split share the replicates, so their
    paradigms compare paired.
    """
    if not runs:
        raise RayprivError("give at least one run directory to report on")
    if n_boot < 100:
        raise RayprivError(f"--bootstrap {n_boot} is too few replicates for a 95% interval; use at least 100 (default 1000)")
    pairs = [(run, p) for run in runs for p in run.results]
    if not pairs:
        raise RayprivError(f"{runs[0].uri}: metrics.json lists no paradigm; rerun `raypriv audit`")
    labels = _labels(pairs)
    results = []
    for label, (run, paradigm) in zip(labels, pairs, strict=True):
        entry = run.results[paradigm]
        is_in, scores = load_scores(run, paradigm, list(entry.attacks))
        results.append(ParadigmResult(label, run, paradigm, entry, is_in, scores))
    if attack is None:
        attack = choose_attack(results)
    missing = [r.label for r in results if attack not in r.scores]
    if missing:
        known = sorted(set(a for r in results for a in r.scores))
        raise RayprivError(f"attack {attack!r} is not in the results of {missing}; choose one of {known}")

    # One set of replicates per audit-sample count: runs with the same split resample identically.
    weights: dict[int, np.ndarray] = {}
    for result in results:
        n_audit = result.is_in.shape[1]
        if n_audit not in weights:
            weights[n_audit] = bootstrap_weights(n_audit, n_boot, numpy_rng(seed, f"report/bootstrap/{n_audit}"))
        result.bootstrap = bootstrap_roc_metrics(result.is_in, result.scores[attack], weights[n_audit])
        result.verdict_kind, result.verdict = verdict(_evidence(result, attack))

    judge_against_frontier(results, attack, n_boot, seed)
    comparisons, skipped = _comparisons(results, attack, compare)
    histogram_attack = next((a for a in HISTOGRAM_PREFERENCE if all(a in r.scores for r in results)), attack)
    figures = headline_figures(results, attack, histogram_attack)
    datasets: dict[str, Any] = {}
    vulnerable, notes = _vulnerable(results, attack, top, load_images, figures, datasets)
    _release_views(results, attack, weights, top, figures, notes, datasets)
    return Report(runs, results, attack, histogram_attack, n_boot, comparisons, skipped, vulnerable, figures, notes)


def frontier_arm(
    result: ParadigmResult, attack: str, fpr: float | None, sample_weights: np.ndarray | None,
    model_weights: np.ndarray | None,
) -> FrontierArm:
    """A paradigm's evidence for the DP-SGD frontier decision: per-model accuracies, TPR at ``fpr`` of ``attack``
    from its scores, and that TPR's two-way bootstrap replicates under ``(sample_weights, model_weights)`` (rows of
    :func:`raypriv.metrics.two_way_bootstrap_weights`; pass the same to every arm of a run).  ``fpr`` None: no
    measurable level, no TPR."""
    entry = result.entry
    models = result.models.sort_values("model_id")
    accuracies = models.test_acc.to_numpy(dtype=np.float64)
    if fpr is None or sample_weights is None or model_weights is None:
        tpr, replicates = float("nan"), np.empty(0)
    else:
        is_in, score = result.is_in, result.scores[attack]
        tpr = float(bootstrap_tpr_at_fpr(is_in, score, np.ones((1, is_in.shape[1]), dtype=np.int32), fpr)[0])
        replicates = bootstrap_tpr_at_fpr(is_in, score, sample_weights, fpr, model_weights)
    epsilon, delta = result.accounted
    return FrontierArm(result.label, accuracies, tpr, replicates, entry.synth_seconds_mean + entry.train_seconds_mean,
                       epsilon=epsilon, delta=delta, accountant=result.accountant)


def judge_against_frontier(results: list[ParadigmResult], attack: str, n_boot: int = 1000, seed: int = 0) -> None:
    """Set each non-DP-SGD paradigm's frontier verdict against the DP-SGD points of its own run.

    The level is the run's lowest measurable FPR (:func:`raypriv.report.verdicts.lowest_measurable_fpr` of its
    OUT pairs); all paradigms of a run share one two-way bootstrap of ``n_boot`` replicates drawn from ``seed``
    (paired: same models, same samples), and :func:`raypriv.report.verdicts.frontier_decision` decides.
    """
    for run in {id(r.run): r.run for r in results}.values():
        members = [r for r in results if r.run is run]
        frontier = [r for r in members if is_frontier(r.paradigm)]
        candidates = [r for r in members if not is_frontier(r.paradigm)]
        if not frontier or not candidates:
            continue
        # An until-decided paradigm may stop early: it then has the first rows of the keep matrix.  The level must
        # be measurable for every arm, and arms with the same models share their model resamples (paired).
        n_audit = run.keep.shape[1]
        n_out = min(int((~r.is_in).sum()) for r in members)
        fpr = lowest_measurable_fpr(n_out)
        sample_weights, model_weights = None, {}
        if fpr is not None:
            sample_weights = bootstrap_weights(n_audit, n_boot, numpy_rng(seed, f"report/frontier/samples/{n_audit}"))
            for n_models in sorted({r.is_in.shape[0] for r in members}):
                rng = numpy_rng(seed, f"report/frontier/models/{n_models}")
                model_weights[n_models] = bootstrap_weights(n_models, n_boot, rng)
        arms = {id(r): frontier_arm(r, attack, fpr, sample_weights, model_weights.get(r.is_in.shape[0])) for r in members}
        points = [arms[id(d)] for d in frontier]
        for result in candidates:
            decision = frontier_decision(arms[id(result)], points, fpr, n_out)
            result.frontier_kind, result.frontier = frontier_verdict(decision)


def _comparisons(
    results: list[ParadigmResult], attack: str, compare: tuple[str, str] | None
) -> tuple[list[Comparison], list[str]]:
    """The paired comparisons, and the pairs skipped because their runs' audit samples differ.

    ``--compare A B`` gives one pair; otherwise every pair of up to six
    paradigms, or each paradigm against ``real`` (else the first).
    """
    by_label = {r.label: r for r in results}
    if compare is not None:
        unknown = [name for name in compare if name not in by_label]
        if unknown:
            raise RayprivError(f"--compare: {unknown} not among the paradigms of these runs ({sorted(by_label)})")
        reason = audit_split_mismatch(by_label[compare[0]].run, by_label[compare[1]].run)
        if reason:
            raise RayprivError(
                f"--compare {compare[0]} {compare[1]}: the runs do not share their audit samples ({reason}), so a "
                "paired comparison is impossible; audit both paradigms in one run or with the same config seed, "
                "dataset, n_audit and n_models"
            )
        candidates = [compare]
    elif len(results) <= 6:
        candidates = list(itertools.combinations([r.label for r in results], 2))
    else:
        reference = "real" if "real" in by_label else results[0].label
        candidates = [(reference, r.label) for r in results if r.label != reference]
    comparisons, skipped = [], []
    for a, b in candidates:
        reason = audit_split_mismatch(by_label[a].run, by_label[b].run)
        if reason:
            skipped.append(f"{a} vs {b}: not paired ({reason})")
            continue
        comparisons.append(
            Comparison(
                a, b, attack,
                {
                    metric: paired_bootstrap_difference(
                        by_label[a].entry.attacks[attack][metric], by_label[b].entry.attacks[attack][metric],
                        by_label[a].bootstrap[metric], by_label[b].bootstrap[metric],
                    )
                    for metric in ("tpr@1%fpr", "tpr@0.1%fpr", "auc")
                },
            )
        )
    return comparisons, skipped


def release_attack_of(result: ParadigmResult) -> str | None:
    """The paradigm's headline release attack (fixed order, :func:`raypriv.release.release_headline_order`), or None
    when it has no release attack (it releases no synthetic set)."""
    attacks = result.entry.attacks
    return next((a for a in release_headline_order() if a in attacks and attacks[a].threat_model == "release"), None)


def _release_views(results: list[ParadigmResult], attack: str, weights: dict[int, np.ndarray], top: int,
                   figures: dict[str, bytes], notes: dict[str, str], datasets: dict[str, Any]) -> None:
    """Each releasing paradigm's :class:`ReleaseView` (set on the result), the model-vs-release ROC figure
    (``release_roc``) and, for images, the release attack's vulnerable samples beside their nearest synthetic record
    (``release_vulnerable:<label>``).  ``attack``: the report's (model) headline attack, drawn beside."""
    panels = {}
    for result in results:
        release = release_attack_of(result)
        if release is None:
            continue
        bootstrap = bootstrap_roc_metrics(result.is_in, result.scores[release], weights[result.is_in.shape[1]])
        kind, text = verdict(_evidence(result, release, bootstrap))
        frame = vulnerable_samples(result, release, top)
        dataset = datasets.get(result.run.uri)
        if dataset is not None and dataset.is_image:
            frame, images, note = nearest_neighbours(result, frame, dataset)
            notes[f"release_neighbours:{result.label}"] = note
            figures[f"release_vulnerable:{result.label}"] = png_bytes(neighbour_figure(frame, dataset, images))
        result.release = ReleaseView(release, bootstrap, kind, text, frame)
        panels[result.label] = {f"model: {attack}": roc_metrics(result.is_in, result.scores[attack])[1],
                                f"release: {release}": roc_metrics(result.is_in, result.scores[release])[1]}
    if panels:
        figures["release_roc"] = png_bytes(roc_figure(panels, "model threat vs release threat"))


def _vulnerable(
    results: list[ParadigmResult], attack: str, top: int, load_images: bool, figures: dict[str, bytes],
    datasets: dict[str, Any] | None = None,
) -> tuple[dict[str, pd.DataFrame], dict[str, str]]:
    """Each paradigm's most vulnerable samples, with their nearest neighbours where the dataset is images.

    Adds each neighbour figure to ``figures``; returns the frames by label and
    the notes on what was searched (or why no dataset was loaded).
    ``datasets``: filled with each run's loaded dataset (or None), by uri.
    """
    notes: dict[str, str] = {}
    vulnerable: dict[str, pd.DataFrame] = {}
    datasets = {} if datasets is None else datasets
    for result in results:
        frame = vulnerable_samples(result, attack, top)
        dataset = None
        if load_images and result.run.config is not None:
            if result.run.uri not in datasets:
                try:
                    from raypriv.data import load_dataset

                    datasets[result.run.uri] = load_dataset(result.run.config.dataset)
                except (RayprivError, OSError, RuntimeError) as exc:
                    datasets[result.run.uri] = None
                    notes[f"dataset:{result.run.uri}"] = f"dataset not loaded ({exc}); no images"
            dataset = datasets[result.run.uri]
        if dataset is not None and dataset.is_image:
            frame, images, note = nearest_neighbours(result, frame, dataset)
            notes[f"neighbours:{result.label}"] = note
            figures[f"vulnerable:{result.label}"] = png_bytes(neighbour_figure(frame, dataset, images))
        vulnerable[result.label] = frame
    return vulnerable, notes
