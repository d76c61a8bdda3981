"""The analysis/ scripts run headless on a small run and rebuild the report's tables and plots."""

import runpy
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import pytest

import raypriv
from raypriv.report import build_report
from tests.test_report import small_run_dir

ANALYSIS = Path(__file__).resolve().parents[1] / "analysis"
SCRIPTS = sorted(p.name for p in ANALYSIS.glob("[0-9][0-9]_*.py"))


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    return small_run_dir(tmp_path_factory)


@pytest.fixture(scope="module")
def outputs(small_run, tmp_path_factory):
    """Run every script once, headless, as ``python analysis/NN_x.py RUN OUT`` would: the file as ``__main__``
    with that ``sys.argv``.  In this process: a fresh interpreter per script spent ~8 s importing the stack."""
    out = tmp_path_factory.mktemp("analysis")
    for script in SCRIPTS:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(sys, "argv", [str(ANALYSIS / script), str(small_run), str(out)])
            patch.setenv("MPLBACKEND", "Agg")
            runpy.run_path(str(ANALYSIS / script), run_name="__main__")
        plt.close("all")
    return out


@pytest.fixture(scope="module")
def report(small_run):
    return build_report([raypriv.load_run(str(small_run))], n_boot=100)


def test_every_script_is_percent_format_and_documented():
    assert SCRIPTS == ["01_load_run.py", "02_privacy_table.py", "03_utility_cost.py", "04_plots.py",
                       "05_vulnerable_samples.py", "06_paired_comparison.py"]
    readme = (ANALYSIS / "README.md").read_text()
    for script in SCRIPTS:
        text = (ANALYSIS / script).read_text()
        assert text.startswith("# %% [markdown]") and text.count("# %%") >= 3, script
        assert script in readme, script


def test_load_run_joins_and_filters(outputs, small_run):
    overview = pd.read_csv(outputs / "overview.csv").set_index("table")
    assert overview.loc["scores", "rows"] == 2 * 8 * 40 and overview.loc["audit", "rows"] == 40
    flat = pd.read_csv(outputs / "metrics_flat.csv")
    metrics = raypriv.load_run(small_run).results
    assert len(flat) == sum(len(e.attacks) for e in metrics.values())
    assert set(zip(flat.paradigm, flat.attack, strict=True)) == {(p, a) for p, e in metrics.items() for a in e.attacks}
    assert set(pd.read_csv(outputs / "label_confidence.csv").paradigm) == {"real", "coreset"}
    assert {"OUT median", "IN median"} <= set(pd.read_csv(outputs / "median_score_by_class.csv").columns)


def test_privacy_table_matches_the_report(outputs, report):
    summary = pd.read_csv(outputs / "privacy_summary.csv")
    for result in report.results:  # every attack the run scored on each paradigm (release attacks: coreset only)
        assert set(summary[summary.paradigm == result.paradigm].attack) == set(result.scores), result.paradigm
    for result in report.results:
        row = summary[(summary.paradigm == result.paradigm) & (summary.attack == report.attack)].iloc[0]
        expected = result.entry.attacks[report.attack]
        assert row["AUC"] == pytest.approx(expected["auc"]) and row["TPR@1%FPR"] == pytest.approx(expected["tpr@1%fpr"])
        assert row["eps lower bound"] == pytest.approx(expected["eps_lower_bound"])
        assert row["TPR@1%FPR low"] <= row["TPR@1%FPR"] <= row["TPR@1%FPR high"]
    by_class = pd.read_csv(outputs / "privacy_by_class.csv")
    assert set(by_class.paradigm) == {"real", "coreset"} and by_class.groupby("paradigm").samples.sum().eq(40).all()
    assert pd.read_csv(outputs / "privacy_canaries.csv").canaries.eq(40).all()  # every audit sample is a canary here


def test_utility_and_cost_match_the_models_table(outputs, small_run):
    models = pd.read_parquet(small_run / "models.parquet")
    utility = pd.read_csv(outputs / "utility.csv", index_col=0)
    assert utility.loc["real", "test acc mean"] == pytest.approx(models[models.paradigm == "real"].test_acc.mean())
    cost = pd.read_csv(outputs / "cost.csv", index_col=0)
    assert cost.loc["coreset", "models"] == 8 and cost["GPU-hours"].eq(0).all()
    seconds = models.synth_seconds + models.train_seconds
    assert cost["worker_hours"].sum() == pytest.approx(seconds.sum() / 3600)


def test_plots_are_written(outputs):
    for name in ("roc.png", "privacy_utility.png", "scores.png", "roc_canaries.png"):
        assert (outputs / name).read_bytes()[:4] == b"\x89PNG", name
    assert list(outputs.glob("roc_class*.png"))
    points = pd.read_csv(outputs / "privacy_utility.csv")
    assert list(points.paradigm) == ["real", "coreset"] and (points.low <= points.high).all()


def test_vulnerable_samples_match_the_report(outputs, report):
    for label in ("real", "coreset"):
        table = pd.read_csv(outputs / f"vulnerable_{label}.csv")
        shown = report.vulnerable[label]
        assert list(table.sample_id) == list(shown.sample_id)
        assert table.success.to_numpy() == pytest.approx(shown.success.to_numpy())
        assert table.neighbour_distance.to_numpy() == pytest.approx(shown.neighbour_distance.to_numpy(), abs=1e-5)
        assert (outputs / f"vulnerable_{label}.png").read_bytes()[:4] == b"\x89PNG"


def test_paired_comparison_matches_the_report(outputs, report):
    table = pd.read_csv(outputs / "paired_comparison.csv")
    (comparison,) = report.comparisons
    for metric in ("tpr@1%fpr", "auc"):
        row = table[(table.A == "real") & (table.B == "coreset") & (table.metric == metric)].iloc[0]
        assert row["difference"] == pytest.approx(comparison.results[metric]["difference"])
        assert row["low"] <= row["high"] and 0 <= row["p"] <= 1
