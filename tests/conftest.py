import os

import pytest
import torch

from raypriv.experiment import config_from_dict

# Ray's local instance must not try to reach the network or grab every core for the dashboard.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Tests that call paradigms directly share 2 cores with Ray workers; oversubscribed
# small convolutions run many times slower, and one thread is deterministic.
torch.set_num_threads(1)


def tiny_config_dict(out_dir, **overrides):
    """A digits audit small enough to train in seconds."""
    raw = {
        "name": "tiny",
        "out_dir": str(out_dir),
        "n_models": 8,
        "audit": {"n_audit": 40, "canary": "mislabel"},
        "model": {"arch": "cnn_small", "width": 8},
        "train": {"epochs": 3, "batch_size": 256},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = {**raw[key], **value}
            continue
        node = raw
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return raw


def metric_values(metrics):
    """Every number of a metrics.json, keyed (paradigm, attack, metric), for exact comparisons."""
    return {(p, a, k): v for p, e in metrics.items() for a, m in e.items() if isinstance(m, dict) for k, v in m.items()}


@pytest.fixture
def tiny_config(tmp_path):
    return config_from_dict(tiny_config_dict(tmp_path / "run"))
