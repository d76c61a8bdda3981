"""The population set: drawn from the test split, logged by every model beside the audit samples, RMIA's z."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from raypriv.config import from_dict as config_from_dict
from raypriv.data import load_dataset
from raypriv.driver import run_audit
from raypriv.errors import RayprivError
from raypriv.run.fingerprints import protocol_hash
from raypriv.run.format import logits_path
from raypriv.split import make_audit_split
from tests.conftest import metric_values, tiny_config_dict


def test_population_comes_from_the_test_split_and_is_checked(tiny_config):
    dataset = load_dataset(tiny_config.dataset)
    split = make_audit_split(dataset, 40, "mislabel", 8, 0, n_population=30)
    assert len(set(split.population_index)) == 30 and split.population_index.max() < len(dataset.y_test)
    np.testing.assert_array_equal(split.population_labels, dataset.y_test[split.population_index])
    assert len(make_audit_split(dataset, 40, "mislabel", 8, 0).population_index) == 0
    with pytest.raises(RayprivError, match="larger than the test split"):
        make_audit_split(dataset, 40, "mislabel", 8, 0, n_population=len(dataset.y_test) + 1)
    with pytest.raises(RayprivError, match="audit.n_population must be 0"):
        config_from_dict({"audit": {"n_population": -1}})


def test_population_size_enters_the_protocol_only_when_set(tmp_path):
    base = config_from_dict(tiny_config_dict(tmp_path))
    explicit_zero = config_from_dict(tiny_config_dict(tmp_path, audit={"n_population": 0}))
    assert protocol_hash(base) == protocol_hash(explicit_zero)
    assert protocol_hash(base) != protocol_hash(config_from_dict(tiny_config_dict(tmp_path, audit={"n_population": 20})))


@pytest.mark.slow
def test_audit_with_a_population_set(tmp_path):
    attacks = ["loss", "lira_online", "rmia", "rmia_offline"]
    plain = run_audit(config_from_dict(tiny_config_dict(tmp_path / "plain", attacks=attacks)), use_ray=False, show_progress=False)
    config = config_from_dict(tiny_config_dict(tmp_path / "pop", attacks=attacks, audit={"n_population": 25}))
    result = run_audit(config, use_ray=False, show_progress=False)
    run = Path(result.run_dir)
    file = pq.ParquetFile(run / logits_path("real", 0))
    assert "population" in file.schema_arrow.names and file.metadata.num_rows == (40 + 25) * 1
    assert "population" not in pq.ParquetFile(Path(plain.run_dir) / logits_path("real", 0)).schema_arrow.names
    rows = file.read().to_pandas()
    assert rows.population.sum() == 25 and rows[rows.population].sample_id.tolist() == list(range(25))

    metrics = json.loads((run / "metrics.json").read_text())
    before = json.loads((Path(plain.run_dir) / "metrics.json").read_text())
    same = {k: v for k, v in metric_values(before).items() if k[1] in ("loss", "lira_online")}
    assert same == {k: v for k, v in metric_values(metrics).items() if k[1] in ("loss", "lira_online")}  # same models
    assert metrics["real"]["rmia"]["auc"] != before["real"]["rmia"]["auc"]  # z from the population now
    scores = pd.read_parquet(run / "scores.parquet")
    assert len(scores) == 8 * 40  # population samples are no audit rows
    again = run_audit(config, use_ray=False, show_progress=False)  # resumes: every stored model is complete
    assert again.trained_now == 0
