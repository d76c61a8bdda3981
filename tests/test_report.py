"""The comparison report: verdict wording, intervals, paired comparisons, the files, and how they render."""

import base64
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from raypriv.attacks.reference import sklearn_metrics
from raypriv.cli import main
from raypriv.config import from_dict as config_from_dict
from raypriv.driver import run_audit
from raypriv.errors import RayprivError
from raypriv.metrics import (
    bootstrap_roc_metrics,
    bootstrap_weights,
    clopper_pearson,
    paired_bootstrap_difference,
    percentile_interval,
    tpr_interval,
)
from raypriv.reader import load_run
from raypriv.report import (
    LevelEvidence,
    VerdictInput,
    browser_check,
    build_report,
    find_chromium,
    load_scores,
    render_markdown,
    verdict,
    vulnerable_samples,
)
from raypriv.run.directory import RunDirectory
from raypriv.split import keep_digest
from tests.conftest import build_once, tiny_config_dict


def small_run_dir(tmp_path_factory) -> Path:
    """A tiny two-paradigm run (real and a random coreset), shared by this file and test_analysis.py.

    Built once per session (by whichever pytest-xdist worker asks first) and only read after: a test that
    changes it works on a copy.
    """
    def build(out):
        config = config_from_dict(
            tiny_config_dict(out, paradigms=["real", "coreset"], paradigm_options={"coreset": {"method": "random", "ipc": 10}})
        )
        run_audit(config, use_ray=False, show_progress=False)

    return build_once(tmp_path_factory, "report-small-run", build)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    return small_run_dir(tmp_path_factory)


@pytest.fixture(scope="module")
def report(small_run):
    return build_report([load_run(str(small_run))], n_boot=200)


@pytest.fixture(scope="module")
def written(small_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    assert main(["report", str(small_run), "--out", str(out), "--bootstrap", "200"]) == 0
    return out


# ------------------------------------------------------------------ verdicts


def evidence(n_models, n_audit, levels, **extra):
    return VerdictInput(
        n_models=n_models, n_audit=n_audit, n_out=n_models * n_audit // 2, attack="lira_online",
        levels=tuple(LevelEvidence(*level) for level in levels), **extra,
    )


def test_verdict_on_a_strong_leak_quotes_the_lowest_significant_fpr_as_a_multiple_of_chance():
    kind, text = verdict(evidence(64, 200, [(0.001, 0.012, 0.008, 0.016), (0.01, 0.30, 0.25, 0.35)]))
    assert kind == "leaks"
    assert text.startswith("leaks: TPR@0.1%FPR 1.2% = 12× chance (95% CI 8.0×–16×")
    assert "64 models × 200 audit samples, lira_online" in text
    assert "private" not in text and "DP" not in text


def test_verdict_at_chance_states_the_power_not_a_guarantee():
    kind, text = verdict(evidence(64, 200, [(0.001, 0.001, 0.0, 0.003), (0.01, 0.011, 0.004, 0.021)]))
    assert kind == "no-leak-detected"
    assert text.startswith("no leakage detected above chance at this audit's power: TPR@1%FPR 1.1%")
    assert "95% CI upper bound 2.1% = 2.1× chance" in text and "64 models × 200 audit samples" in text
    assert "not a guarantee" in text and "private" not in text


def test_verdict_with_too_few_models_says_so_even_when_nothing_is_detected():
    # Enough OUT pairs to measure 1% FPR, but only 8 models.
    kind, text = verdict(evidence(8, 400, [(0.001, 0.0, 0.0, 0.004), (0.01, 0.01, 0.002, 0.03)]))
    assert kind == "too-few"
    assert text.startswith("too few models to conclude: no leakage detected, but this audit cannot rule out TPR@1%FPR up to 3.0%")
    # Too few OUT pairs to measure even 1% FPR.
    kind, text = verdict(evidence(8, 40, [(0.001, 0.0, 0.0, 0.05), (0.01, 0.02, 0.0, 0.08)]))
    assert kind == "too-few" and "160 OUT pairs cannot measure TPR@1%FPR" in text
    # Many models, but an interval so wide it cannot exclude a 10x leak.
    kind, _ = verdict(evidence(64, 20, [(0.001, 0.0, 0.0, 0.01), (0.01, 0.03, 0.0, 0.15)]))
    assert kind == "too-few"


def test_verdict_ignores_levels_the_out_pairs_cannot_measure():
    # 16 x 100 / 2 = 800 OUT pairs: 0.1% FPR would rest on 0.8 false positives.
    kind, text = verdict(evidence(16, 100, [(0.001, 0.2, 0.1, 0.3), (0.01, 0.012, 0.005, 0.02)]))
    assert kind == "no-leak-detected" and "TPR@1%FPR" in text


def test_verdict_names_dp_only_with_an_accounted_epsilon_and_flags_a_violated_bound():
    levels = [(0.001, 0.001, 0.0, 0.003), (0.01, 0.01, 0.005, 0.02)]
    _, text = verdict(evidence(64, 200, levels, accounted_epsilon=8.0, accounted_delta=1e-5, eps_lower_bound=0.07))
    assert "DP with ε=8.00, δ=1.0e-05 (accounted), empirical ε lower bound 0.07" in text
    assert "EXCEEDS" not in text and "private" not in text
    _, text = verdict(evidence(64, 200, [(0.01, 0.2, 0.15, 0.25)], accounted_epsilon=1.0, eps_lower_bound=2.5))
    assert text.startswith("leaks:") and "EXCEEDS the accounted ε" in text


# ------------------------------------------------------------------ intervals


def synthetic_scores(n_models=16, n_audit=200, signal=1.0, seed=0):
    rng = np.random.default_rng(seed)
    keep = np.zeros((n_models, n_audit), dtype=bool)
    for column in range(n_audit):
        keep[rng.permutation(n_models)[: n_models // 2], column] = True
    score = rng.normal(size=(n_models, n_audit)) + keep * signal * rng.exponential(1.0, size=n_audit)
    return keep, np.round(score, 1)  # rounding makes ties, which the weighted ROC must keep together


def test_bootstrap_metrics_with_unit_weights_equal_attack_metrics():
    keep, score = synthetic_scores()
    expected = sklearn_metrics(keep, score)
    got = bootstrap_roc_metrics(keep, score, np.ones((1, keep.shape[1])))
    for key in ("auc", "tpr@1%fpr", "tpr@0.1%fpr"):
        assert got[key][0] == pytest.approx(expected[key], abs=1e-12), key


def test_bootstrap_weights_equal_duplicating_the_resampled_samples():
    keep, score = synthetic_scores(n_models=8, n_audit=60, seed=1)
    weights = bootstrap_weights(60, 3, np.random.default_rng(0))
    assert weights.shape == (3, 60) and (weights.sum(axis=1) == 60).all()
    got = bootstrap_roc_metrics(keep, score, weights)
    for r in range(3):
        columns = np.repeat(np.arange(60), weights[r])
        expected = sklearn_metrics(keep[:, columns], score[:, columns])
        for key in ("auc", "tpr@1%fpr", "tpr@0.1%fpr"):
            assert got[key][r] == pytest.approx(expected[key], abs=1e-12)


def leak_and_chance_replicates():
    """A leaking and a chance-level attack on the same models, bootstrapped on the same 400 resamples."""
    weights = bootstrap_weights(200, 400, np.random.default_rng(0))
    keep, leak = synthetic_scores(signal=2.0)
    _, null = synthetic_scores(signal=0.0, seed=3)
    return keep, leak, bootstrap_roc_metrics(keep, leak, weights), bootstrap_roc_metrics(keep, null, weights)


def test_bootstrap_interval_covers_the_estimate_and_separates_leak_from_chance():
    keep, leak, leaky, chance = leak_and_chance_replicates()
    low, high = percentile_interval(leaky["tpr@1%fpr"])
    assert low <= sklearn_metrics(keep, leak)["tpr@1%fpr"] <= high and low > 0.01
    low, high = percentile_interval(chance["tpr@1%fpr"])
    assert low <= 0.01 <= high
    assert percentile_interval(chance["auc"])[0] < 0.5 < percentile_interval(chance["auc"])[1]


def test_clopper_pearson_matches_the_closed_forms():
    low, high = clopper_pearson(0, 10)
    assert low == 0.0 and high == pytest.approx(1 - 0.025 ** (1 / 10))
    low, high = clopper_pearson(10, 10)
    assert high == 1.0 and low == pytest.approx(0.025 ** (1 / 10))
    low, high = tpr_interval(0.5, 100)
    assert low == pytest.approx(0.3983, abs=1e-4) and high == pytest.approx(0.6017, abs=1e-4)


def test_paired_difference_is_zero_for_identical_paradigms_and_significant_for_a_real_gap():
    _, _, a, b = leak_and_chance_replicates()
    same = paired_bootstrap_difference(0.3, 0.3, a["auc"], a["auc"])
    assert same["difference"] == 0 and same["low"] == same["high"] == 0 and same["p"] == 1.0
    gap = paired_bootstrap_difference(1.0, 0.5, a["auc"], b["auc"])
    assert gap["low"] > 0 and gap["p"] < 0.01 and gap["n_boot"] == 400


# ------------------------------------------------------------------ the report


def test_scores_are_placed_by_model_and_sample_not_by_row_order(small_run, tmp_path):
    run = load_run(str(small_run))
    is_in, scores = load_scores(run, "real", ["lira_online"])
    np.testing.assert_array_equal(is_in, run.keep)
    # The same table written shuffled, as float32 in row groups, reads back the same.
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(small_run / "scores.parquet")
    order = np.random.default_rng(0).permutation(table.num_rows)
    shuffled = table.take(pa.array(order))
    shuffled = shuffled.set_column(
        shuffled.schema.get_field_index("lira_online"), "lira_online",
        pa.array(shuffled.column("lira_online").to_numpy().astype(np.float32)),
    )
    copy = tmp_path / "run"
    shutil.copytree(small_run, copy)
    pq.write_table(shuffled, copy / "scores.parquet", row_group_size=37)
    RunDirectory(str(copy)).record_outputs()  # as a writer of this layout would record it in run.json
    is_in2, scores2 = load_scores(load_run(str(copy)), "real", ["lira_online"])
    np.testing.assert_array_equal(is_in2, is_in)
    np.testing.assert_allclose(scores2["lira_online"], scores["lira_online"], rtol=1e-6)


def test_report_files_are_self_contained_and_hold_every_section(written):
    html = (written / "report.html").read_text()
    markdown = (written / "report.md").read_text()
    assert not re.search(r"""(src|href)=["'](?!data:)""", html), "the HTML must not load anything"
    assert "<script" not in html and "<link" not in html
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    # ROC, privacy-utility, score histograms, two neighbour grids; the release threat's ROC and coreset's release grid
    assert len(images) == 7
    for data in images:
        assert base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n"
    for section in ("Verdicts", "Privacy, utility, cost", "Paired comparisons", "All attacks", "Cost",
                    "Most vulnerable audit samples", "How to read this"):
        assert section in html and section in markdown
    for line in ("**real**: too few models to conclude", "**coreset**: too few models to conclude", "| real vs coreset |"):
        assert line in markdown
    assert "**real, release threat**: releases no synthetic set" in markdown
    for name in ("roc.png", "privacy_utility.png", "scores.png", "vulnerable-real.png", "vulnerable-coreset.png",
                 "release_roc.png", "release_vulnerable-coreset.png"):
        assert (written / name).read_bytes()[:4] == b"\x89PNG" and f"]({name})" in markdown
    verdicts = markdown.split("## Verdicts")[1].split("## Privacy")[0]
    assert "private" not in verdicts


def test_report_numbers_match_the_run(small_run, report):
    metrics = load_run(str(small_run)).metrics_json
    assert report.attack == "lira_online" and [r.label for r in report.results] == ["real", "coreset"]
    for result in report.results:
        expected = metrics[result.paradigm]["lira_online"]
        # The bootstrap recomputes the point estimate it resamples around.
        point = bootstrap_roc_metrics(result.is_in, result.scores["lira_online"], np.ones((1, result.is_in.shape[1])))
        assert point["tpr@1%fpr"][0] == pytest.approx(expected["tpr@1%fpr"]) and point["auc"][0] == pytest.approx(expected["auc"])
        assert result.verdict_kind == "too-few"  # 8 models x 40 samples
    (comparison,) = report.comparisons
    assert (comparison.a, comparison.b) == ("real", "coreset")
    assert comparison.results["auc"]["difference"] == pytest.approx(
        metrics["real"]["lira_online"]["auc"] - metrics["coreset"]["lira_online"]["auc"]
    )
    markdown = render_markdown(report)
    assert f"{metrics['coreset']['lira_online']['auc']:.3f} (" in markdown


def test_vulnerable_samples_rank_by_the_share_of_in_models_caught(small_run, report):
    real = report.results[0]
    frame = vulnerable_samples(real, "lira_online", top=40)
    score, is_in = real.scores["lira_online"], real.is_in
    threshold = np.sort(score[~is_in])[::-1][int(0.01 * (~is_in).sum())]
    for row in frame.head(5).itertuples():
        column = row.sample_id
        assert row.success == pytest.approx((score[is_in[:, column], column] > threshold).mean())
    assert list(frame.success) == sorted(frame.success, reverse=True)
    # real trains on its private set: each sample's nearest training image is itself.
    shown = report.vulnerable["real"]
    assert (shown.neighbour_distance == 0).all() and (shown.neighbour_label == shown.label).all()
    # coreset: the neighbour comes from a model where the sample was IN; a stored set holds it verbatim
    # exactly when the distance is 0.
    keep = load_run(str(small_run)).keep
    coreset = report.vulnerable["coreset"]
    for row in coreset.itertuples():
        assert keep[row.neighbour_model, row.sample_id]
        assert row.nearest_real > 0


def test_two_runs_of_one_split_are_labelled_and_paired_and_other_splits_are_refused(small_run, tmp_path):
    twin = tmp_path / "twin"
    shutil.copytree(small_run, twin, ignore=shutil.ignore_patterns("report"))
    report = build_report([load_run(str(small_run)), load_run(str(twin))], n_boot=100, load_images=False)
    labels = [r.label for r in report.results]
    assert labels == ["report-small-run:real", "report-small-run:coreset", "twin:real", "twin:coreset"]
    assert len(report.comparisons) == 6 and not report.skipped_comparisons
    twin_real = next(c for c in report.comparisons if (c.a, c.b) == ("report-small-run:real", "twin:real"))
    assert twin_real.results["tpr@1%fpr"]["difference"] == 0 and twin_real.results["tpr@1%fpr"]["p"] == 1.0

    other = tmp_path / "other"
    shutil.copytree(small_run, other, ignore=shutil.ignore_patterns("report"))
    keep = np.load(other / "keep.npy")
    np.save(other / "keep.npy", keep[:, ::-1])
    manifest = json.loads((other / "run.json").read_text())  # another split, not a corrupt one: its own hash
    RunDirectory(str(other)).write_manifest({**manifest, "keep_sha256": keep_digest(keep[:, ::-1])})
    # ... and scores whose membership column is that split's, as its own audit would have written them.
    import pyarrow as pa
    import pyarrow.parquet as pq

    scores = pq.read_table(other / "scores.parquet")
    is_in = keep[:, ::-1][scores.column("model_id").to_numpy(), scores.column("sample_id").to_numpy()]
    pq.write_table(scores.set_column(scores.schema.get_field_index("is_in"), "is_in", pa.array(is_in)),
                   other / "scores.parquet")
    RunDirectory(str(other)).record_outputs()
    with pytest.raises(RayprivError, match="do not share their audit samples.*keep.npy differs"):
        build_report([load_run(str(small_run)), load_run(str(other))], n_boot=100,
                     compare=("report-small-run:real", "other:real"), load_images=False)
    report = build_report([load_run(str(small_run)), load_run(str(other))], n_boot=100, load_images=False)
    assert len(report.comparisons) == 2 and len(report.skipped_comparisons) == 4


def test_cli_report_errors_name_the_problem(small_run, capsys, tmp_path):
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "holds no raypriv run" in capsys.readouterr().err
    assert main(["report", str(small_run), "--attack", "nope", "--out", str(tmp_path / "r")]) == 2
    assert "attack 'nope'" in capsys.readouterr().err
    assert main(["report", str(small_run), "--compare", "real", "dpsgd", "--out", str(tmp_path / "r")]) == 2
    assert "--compare: ['dpsgd'] not among" in capsys.readouterr().err
    assert main(["report", str(small_run), "--compare", "real", "coreset", "--bootstrap", "100",
                 "--out", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert "real vs coreset (lira_online, paired bootstrap over audit samples)" in out and "reading:" in out


# ------------------------------------------------------------------ rendering


@pytest.mark.skipif(find_chromium() is None, reason="no Chromium on PATH (Debian: apt-get install chromium); "
                    "the manual check is in analysis/README.md")
def test_report_renders_in_chromium_with_every_image_loaded_and_nothing_overflowing(written):
    wide = browser_check(str(written / "report.html"), width=1280)
    assert len(wide["images"]) == 7 and all(image["loaded"] for image in wide["images"]), wide["images"]
    assert wide["pageWidth"] <= wide["width"] and not wide["overflowing"], wide
    assert not wide["scrolled"], f"tables need scrolling at 1280 px: {wide['scrolled']}"
    assert not wide["overlaps"], wide["overlaps"]
    assert all(image["right"] <= wide["width"] for image in wide["images"])
    # On a narrow window wide tables scroll inside their own box; the page itself never does.
    narrow = browser_check(str(written / "report.html"), width=700)
    assert narrow["pageWidth"] <= narrow["width"] and not narrow["overflowing"], narrow
    assert not narrow["overlaps"]
