"""Streaming scoring: the Parquet reader, the bounded ROC metrics and scores.parquet in row groups."""

from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raypriv.attacks import ATTACKS, run_attacks, score_attacks
from raypriv.attacks.reference import roc, sklearn_metrics
from raypriv.errors import RayprivError
from raypriv.metrics import roc_metrics
from raypriv.run.format import SCHEMA_VERSION, logits_path, logits_table, scores_schema, scores_write_options
from raypriv.run.store import RunStore, iter_logits, write_model_result
from raypriv.scoring import ScoringPlan
from raypriv.scoring.local import write_scores
from raypriv.scoring.read import load_attack_inputs, read_logits
from raypriv.split import balanced_keep


def row(model_id):
    return {
        "paradigm": "real", "model_id": model_id, "seed": 0, "recipe_hash": "abc", "in_count": 2,
        "private_size": 10, "synthetic_size": 10, "test_acc": 0.5, "synth_seconds": 0.0, "train_seconds": 1.0,
        "device": "cpu", "info": "{}", "status": "ok", "finished_at": datetime.now(timezone.utc),
    }


def stored_run(tmp_path, n_models=10, n_audit=700, n_queries=2, n_classes=4, seed=0):
    """A run directory of synthetic logits with a membership signal, written as the workers write them."""
    rng = np.random.default_rng(seed)
    keep = balanced_keep(n_models, n_audit, seed)
    labels = rng.integers(0, n_classes, n_audit)
    base = rng.normal(size=(1, n_audit, n_queries, n_classes)) * 3  # per-sample difficulty, shared by all models
    logits = (base + rng.normal(size=(n_models, n_audit, n_queries, n_classes)) * 0.5).astype(np.float32)
    logits[np.arange(n_models)[:, None], np.arange(n_audit)[None, :], :, labels[None, :]] += 1.5 * keep[:, :, None]
    store = RunStore(str(tmp_path))
    for model_id in range(n_models):
        write_model_result(store, row(model_id), logits[model_id], labels)
    return store, logits, labels, keep


def plan_of(keep, labels, n_queries, attacks=tuple(ATTACKS)):
    """A scoring plan over a hand-made run: its keep matrix, labels and query count."""
    return ScoringPlan(name="test", paradigms=("real",), attacks=attacks, keep=keep, audit_labels=labels,
                       population_labels=np.empty(0, dtype=np.int64), n_queries=n_queries, recipe_hashes={})


@pytest.mark.parametrize("workers", [1, 2])
def test_streamed_scoring_equals_the_in_memory_path(tmp_path, workers):
    store, logits, labels, keep = stored_run(tmp_path)
    n_models, n_audit, n_queries, _ = logits.shape
    timings = {}
    # A small batch size: several row batches per model file.
    scores, log_p = load_attack_inputs(
        plan_of(keep, labels, n_queries), store, "real", workers=workers, timings=timings, batch_elements=1000
    )
    assert scores.dtype == log_p.dtype == np.float32 and scores.shape == (n_models, n_audit, n_queries)
    assert timings["read_seconds"] > 0 and timings["reduce_seconds"] > 0
    streamed = score_attacks(scores, log_p, keep, list(ATTACKS), workers=workers, block_elements=5000)
    in_memory = run_attacks(read_logits(store, "real", n_models, n_audit, n_queries), labels, keep, list(ATTACKS))
    for attack in ATTACKS:
        np.testing.assert_array_equal(streamed[attack], in_memory[attack], err_msg=attack)
    assert roc_metrics(keep, streamed["lira_online"])[0]["auc"] > 0.8  # the planted signal is found
    only_loss = load_attack_inputs(plan_of(keep, labels, n_queries, attacks=("loss",)), store, "real")
    assert only_loss[0] is None and np.array_equal(only_loss[1], log_p)


def test_reader_refuses_incomplete_or_inconsistent_files(tmp_path):
    store, logits, labels, _ = stored_run(tmp_path, n_models=2, n_audit=5)
    table = logits_table(0, logits[0], labels)
    duplicated = table.set_column(1, "sample_id", pa.array(np.zeros(table.num_rows, dtype=np.int64)))
    store.write_table(logits_path("real", 0), duplicated)
    with pytest.raises(RayprivError, match="every .sample, query. pair exactly once"):
        list(iter_logits(store, "real", 0, 5, 2))
    outside = table.set_column(1, "sample_id", pa.array(np.arange(table.num_rows, dtype=np.int64)))
    store.write_table(logits_path("real", 0), outside)
    with pytest.raises(RayprivError, match="ids outside"):
        list(iter_logits(store, "real", 0, 5, 2))
    with pytest.raises(RayprivError, match="has 10 rows, expected 12"):
        list(iter_logits(store, "real", 1, 6, 2))
    store.write_table(logits_path("real", 0), table)
    with pytest.raises(RayprivError, match="model 2 of real has no logits"):
        load_attack_inputs(plan_of(balanced_keep(4, 5, 0)[:3], labels, 2), store, "real")
    (tmp_path / logits_path("real", 1)).write_bytes(b"PAR1 not parquet")
    with pytest.raises(RayprivError, match="corrupt or truncated"):
        list(iter_logits(store, "real", 1, 5, 2))


def test_roc_metrics_equal_attack_metrics():
    rng = np.random.default_rng(3)
    for trial in range(24):
        n = int(rng.integers(20, 3000))
        is_in = rng.random(n) < rng.uniform(0.2, 0.8)
        is_in[:2] = [True, False]
        score = rng.normal(size=n) + rng.uniform(0, 4) * is_in
        if trial % 2:
            score = np.round(score, 1)  # many ties
        score = score.astype(np.float32)
        expected = sklearn_metrics(is_in, score)
        for chunk in (5, 1 << 22):
            for dtype in (np.float32, np.float64):
                got, (fpr, tpr) = roc_metrics(is_in, score.astype(dtype), chunk=chunk)
                assert list(got) == list(expected)
                assert got["auc"] == pytest.approx(expected["auc"], abs=1e-12)
                assert {k: v for k, v in got.items() if k != "auc"} == {k: v for k, v in expected.items() if k != "auc"}
                full_fpr, full_tpr = roc(is_in, score)
                np.testing.assert_array_equal(fpr, full_fpr)
                np.testing.assert_array_equal(tpr, full_tpr)


def test_roc_metrics_keep_a_plot_sized_curve_of_exact_points():
    rng = np.random.default_rng(4)
    is_in = rng.random(300_000) < 0.5
    score = (rng.normal(size=300_000) + is_in).astype(np.float32)
    metrics, (fpr, tpr) = roc_metrics(is_in, score, chunk=50_000, max_curve_points=1000)
    full_fpr, full_tpr = roc(is_in, score)
    assert 2000 < len(fpr) < 20_000 < len(full_fpr)
    on_curve = {(a, b) for a, b in zip(full_fpr.tolist(), full_tpr.tolist(), strict=True)}
    assert all((a, b) in on_curve for a, b in zip(fpr.tolist(), tpr.tolist(), strict=True))
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0) and (np.diff(fpr) >= 0).all()
    assert np.trapezoid(tpr, fpr) == pytest.approx(metrics["auc"], abs=1e-4)


def test_scores_parquet_in_row_groups(tmp_path):
    store = RunStore(str(tmp_path))
    keep = balanced_keep(6, 5, 0)
    rng = np.random.default_rng(0)
    scores = {"loss": rng.normal(size=(6, 5)).astype(np.float32), "rmia": rng.random((6, 5)).astype(np.float32)}
    with store.table_writer("scores.parquet", scores_schema(list(scores)), **scores_write_options(list(scores))) as writer:
        write_scores(writer, "real", keep, scores, rows_per_group=10)  # two models per row group
        write_scores(writer, "coreset", keep, scores, rows_per_group=10)
    parquet = pq.ParquetFile(tmp_path / "scores.parquet")
    assert parquet.metadata.num_row_groups == 6 and parquet.metadata.num_rows == 60
    assert parquet.schema_arrow.field("loss").type == pa.float32()
    assert parquet.schema_arrow.metadata[b"raypriv_schema_version"] == str(SCHEMA_VERSION).encode()
    frame = pd.read_parquet(tmp_path / "scores.parquet")
    assert list(frame.columns) == ["paradigm", "model_id", "sample_id", "is_in", "loss", "rmia"]
    real = frame[frame.paradigm == "real"]
    np.testing.assert_array_equal(real.is_in.to_numpy().reshape(6, 5), keep)
    np.testing.assert_array_equal(real.rmia.to_numpy().reshape(6, 5), scores["rmia"])
    np.testing.assert_array_equal(real.model_id.to_numpy(), np.repeat(np.arange(6), 5))

    with pytest.raises(RuntimeError):
        with store.table_writer("other.parquet", scores_schema(["loss"])) as writer:
            raise RuntimeError("interrupted")
    assert not (tmp_path / "other.parquet").exists() and not list(tmp_path.glob(".tmp-*"))
