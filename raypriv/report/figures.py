"""The report's figures (matplotlib, Agg backend), each returned as PNG bytes by :func:`png_bytes`."""

from __future__ import annotations

import dataclasses
import io
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from raypriv.metrics import percentile_interval, roc_metrics
from raypriv.report.verdicts import is_frontier

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from raypriv.report.results import ParadigmResult
    from raypriv.run.store import RunStore


def png_bytes(figure: Figure) -> bytes:
    """A figure as PNG (100 dpi); closes it."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    return buffer.getvalue()


def literal(text: str) -> str:
    """``text`` drawn as written, never as mathtext: run names like ``r$\\x$`` would abort the plot."""
    return text.replace("$", r"\$")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def roc_figure(panels: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]], title: str) -> Figure:
    """Log-log ROC curves, ``panels[panel title][curve label] = (fpr, tpr)``: one panel each, up to 3 a row.

    The audit's roc.png has one panel per attack (a curve per paradigm) or,
    for a single paradigm, one panel with a curve per attack; the report draws
    one panel of its headline attack.
    """
    plt = _pyplot()
    columns = min(3, len(panels))
    rows = -(-len(panels) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.6 * columns, 4.4 * rows), dpi=110, squeeze=False)
    floor = 1e-4
    colours = plt.get_cmap("tab10")
    for ax, (panel, lines) in zip(axes.flat, panels.items(), strict=False):  # the grid's spare cells are blanked below
        for i, (label, (fpr, tpr)) in enumerate(lines.items()):
            auc = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1])) / 2.0)
            ax.plot(np.maximum(fpr, floor), np.maximum(tpr, floor), color=colours(i % 10), linewidth=1.4,
                    label=f"{label} (AUC {auc:.3f})")
        ax.plot([floor, 1], [floor, 1], "k--", linewidth=0.8, label="chance")
        ax.set(xscale="log", yscale="log", xlim=(floor, 1), ylim=(floor, 1), title=panel)
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.legend(fontsize=7, loc="lower right")
        ax.grid(True, which="major", linewidth=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    return figure


def privacy_utility_figure(points: list[dict[str, Any]], attack: str) -> Figure:
    """TPR@0.1%FPR (95% bootstrap CI) against test accuracy (± std), one point per paradigm."""
    plt = _pyplot()
    figure, ax = plt.subplots(figsize=(6.4, 4.8))
    colours = plt.get_cmap("tab10")
    floor = 1e-4
    frontier = sorted((p for p in points if p.get("frontier")), key=lambda p: p["acc"])
    if frontier:  # the DP-SGD points as one line: the yardstick the others are judged against
        ax.plot([p["acc"] for p in frontier], [max(p["tpr"], floor) for p in frontier], "-", color="0.35",
                linewidth=1.2, zorder=1, label="DP-SGD frontier")
    for i, point in enumerate(points):
        y = max(point["tpr"], floor)
        low, high = max(point["low"], floor), max(point["high"], floor)
        marker, colour = ("s", "0.35") if point.get("frontier") else ("o", colours(i % 10))
        ax.errorbar(point["acc"], y, xerr=point["acc_std"], yerr=[[max(y - low, 0)], [max(high - y, 0)]],
                    fmt=marker, color=colour, capsize=3, label=point["label"])
    ax.axhline(0.001, color="k", linestyle="--", linewidth=0.8, label="chance (0.1%)")
    ax.set(yscale="log", ylim=(floor, 1), xlabel="test accuracy (mean ± std over models)",
           ylabel=f"TPR at 0.1% FPR ({attack})", title="privacy–utility: lower right is better")
    ax.margins(x=0.08)
    ax.grid(True, which="major", linewidth=0.3)
    ax.legend(fontsize=7, loc="best", framealpha=0.85)
    figure.tight_layout()
    return figure


def _symlog_position(value: float, scale: float) -> float:
    """Where ``value`` lies on a symmetric-log axis of linear scale ``scale``: ``sign(v) * log1p(|v| / scale)``."""
    return np.sign(value) * np.log1p(np.abs(value) / scale)


def score_histogram_figure(panels: dict[str, tuple[np.ndarray, np.ndarray]], attack: str) -> Figure:
    """Per-sample scores of the IN and the OUT (model, sample) pairs, one panel per paradigm."""
    plt = _pyplot()
    columns = min(3, len(panels))
    rows = -(-len(panels) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.0 * rows), squeeze=False)
    for ax, (label, (score, is_in)) in zip(axes.flat, panels.items(), strict=False):  # spare cells blanked below
        finite = score[np.isfinite(score)]
        low, high = np.percentile(finite, [0.5, 99.5]) if len(finite) else (0.0, 1.0)
        if high <= low:
            low, high = low - 0.5, high + 0.5
        middle = np.percentile(finite, [25, 75]) if len(finite) else (0.0, 1.0)
        spread = max(middle[1] - middle[0], 1e-12)
        # Likelihood ratios have tails hundreds of interquartile ranges long: a symmetric-log
        # axis shows the bulk and the tails together.
        symlog = (high - low) / spread > 40
        if symlog:
            scale = max(spread, 1e-3)
            edges = np.linspace(_symlog_position(low, scale), _symlog_position(high, scale), 50)
            bins = np.sign(edges) * np.expm1(np.abs(edges)) * scale
        else:
            bins = np.linspace(low, high, 50)
        clipped = np.clip(score, low, high)
        for side, colour, name in ((~is_in, "tab:blue", "OUT"), (is_in, "tab:red", "IN")):
            values = clipped[side]
            # Share of pairs per bin (not density): bins are even on the axis as drawn.
            ax.hist(values, bins=bins, weights=np.full(len(values), 1.0 / max(1, len(values))), alpha=0.55,
                    color=colour, label=name)
        if symlog:
            ax.set_xscale("symlog", linthresh=scale)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel(f"{attack} score{' (symlog axis)' if symlog else ''}, clipped to 0.5–99.5%", fontsize=8)
        ax.set_ylabel("share of pairs", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    figure.tight_layout()
    return figure


def _show_image(ax, image: np.ndarray) -> None:
    image = np.asarray(image)
    image = image.astype(np.float32) / 255.0 if image.dtype == np.uint8 else image.astype(np.float32)
    image = np.clip(image, 0.0, 1.0)
    if image.ndim == 3 and image.shape[0] in (1, 3):
        image = image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)
    ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def neighbour_figure(frame: pd.DataFrame, dataset: Any, images: dict[int, np.ndarray]) -> Figure:
    """Each vulnerable sample (left) beside its nearest synthetic training image (right)."""
    plt = _pyplot()
    per_row = 4
    rows = max(1, -(-len(frame) // per_row))
    # Three columns per pair (sample, neighbour, a gap) so the pairs read as pairs.
    figure, axes = plt.subplots(rows, 3 * per_row - 1, figsize=(per_row * 2.3, rows * 1.45), squeeze=False,
                                gridspec_kw={"width_ratios": ([1, 1, 0.3] * per_row)[:-1]})
    for ax in axes.flat:
        ax.axis("off")
    for i, row in enumerate(frame.itertuples()):
        left, right = axes[i // per_row, 3 * (i % per_row)], axes[i // per_row, 3 * (i % per_row) + 1]
        left.axis("on")
        _show_image(left, dataset.x_train[row.dataset_index])
        left.set_title(f"#{row.sample_id} {row.true_label}→{row.label}\nsuccess {row.success:.0%}", fontsize=7)
        neighbour = images.get(int(row.sample_id))
        if neighbour is not None:
            right.axis("on")
            _show_image(right, neighbour)
            if row.neighbour_model < 0:
                title = "itself\n(private set)"
            else:
                copy = " copy" if row.neighbour_distance == 0 else ""
                title = f"L2 {row.neighbour_distance:.2f}{copy}\nm{row.neighbour_model} y={row.neighbour_label}"
            right.set_title(title, fontsize=7)
    figure.tight_layout(pad=0.4, h_pad=0.6, w_pad=0.3)
    return figure


def headline_figures(results: list[ParadigmResult], attack: str, histogram_attack: str) -> dict[str, bytes]:
    """The report's three headline plots as PNG: ROC, privacy–utility and the score histograms."""
    results = [dataclasses.replace(r, label=literal(r.label)) for r in results]
    curves = {r.label: roc_metrics(r.is_in, r.scores[attack])[1] for r in results}
    points = [
        {"label": r.label, "acc": r.entry.test_acc, "acc_std": r.entry.test_acc_std,
         "tpr": r.entry.attacks[attack]["tpr@0.1%fpr"], "frontier": is_frontier(r.paradigm),
         **dict(zip(("low", "high"), percentile_interval(r.bootstrap["tpr@0.1%fpr"]), strict=True))}
        for r in results
    ]
    histograms = {r.label: (r.scores[histogram_attack], r.is_in) for r in results}
    return {
        "roc": png_bytes(roc_figure({attack: curves}, f"ROC, {attack} (log-log)")),
        "privacy_utility": png_bytes(privacy_utility_figure(points, attack)),
        "scores": png_bytes(score_histogram_figure(histograms, histogram_attack)),
    }


def write_roc_png(store: RunStore, curves: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]], title: str) -> None:
    """A run's ``roc.png``: one paradigm gives a panel with a curve per attack; several, a panel per attack with a
    curve per paradigm.  ``curves``: paradigm -> attack -> (fpr, tpr), as scoring returns them."""
    attacks = list(dict.fromkeys(a for by_attack in curves.values() for a in by_attack))
    panels = curves if len(curves) == 1 else {a: {p: c[a] for p, c in curves.items() if a in c} for a in attacks}
    # Every text drawn as written: a config name holding "$" would otherwise be parsed as mathtext and abort.
    panels = {literal(panel): {literal(label): curve for label, curve in lines.items()} for panel, lines in panels.items()}
    store.write_bytes("roc.png", png_bytes(roc_figure(panels, literal(title))))
