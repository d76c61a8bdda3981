"""Packs of ``dfkd`` pipelines (``execution.pack``): ground truth is the same pipeline run alone.

DeepInversion packs are batched (:mod:`raypriv.synth.dfkd_packed`) and must
give the single run's bits (DeepInversion is chaotic, so anything less would
drift); DFAD keeps its student for ``train`` and runs one by one.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from raypriv.config import DatasetConfig
from raypriv.config import from_dict as config_from_dict
from raypriv.data import load_dataset
from raypriv.pipeline import ShadowTrainer, resolve_pack
from raypriv.run.format import synthetic_path
from raypriv.run.store import RunStore
from raypriv.split import make_audit_split
from raypriv.synth import LabeledSet, ShadowContext, make_paradigm
from raypriv.synth.base import Paradigm
from raypriv.synth.dfkd import BatchNormStatistics
from raypriv.synth.dfkd_packed import PackedStatistics, batch_sizes
from raypriv.training import Normalizer
from tests.conftest import tiny_config_dict

# A DeepInversion of about a second per pipeline: 3 teacher epochs, 4 batches of 16 inputs, 6 Adam steps.
TINY_DI = {"method": "deepinversion", "n_synthetic": 64, "batch_size": 16, "iterations": 6}
# Every draw and term on: jitter and flip draws, the L2 prior, batches of unequal size (70 = 18 + 18 + 17 + 17).
DRAWS_DI = {**TINY_DI, "n_synthetic": 70, "iterations": 12, "jitter": 2, "flip": True, "l2_weight": 0.01}
TINY_DFAD = {"method": "dfad", "n_synthetic": 40, "steps": 3, "student_steps": 2, "batch_size": 32,
             "generator_width": 8, "latent_dim": 16}
MODELS = (0, 5, 9)


@pytest.fixture(scope="module")
def data():
    return load_dataset(DatasetConfig())


def _paradigm_and_contexts(data, options: dict, dataset: str = "digits"):
    raw = tiny_config_dict("/tmp/unused", paradigms=["dfkd"], paradigm_options={"dfkd": options})
    if dataset != "digits":
        raw.update(dataset={"name": dataset}, model={"arch": "mlp", "width": 32})
    config = config_from_dict(raw)
    normalizer = Normalizer.fit(data.x_train)

    def context(model_id: int) -> ShadowContext:
        return ShadowContext(config, "dfkd", model_id, data.num_classes, data.input_shape, normalizer, torch.device("cpu"))

    return make_paradigm(config, "dfkd"), context


def _privates(data, count: int, size: int = 200) -> list[LabeledSet]:
    return [LabeledSet(torch.tensor(data.x_train[40 * p : 40 * p + size]), torch.tensor(data.y_train[40 * p : 40 * p + size]))
            for p in range(count)]


def _alone_and_packed(paradigm, context, privates):
    alone_contexts = [context(m) for m in MODELS[: len(privates)]]
    alone = [paradigm.synthesize(p, c) for p, c in zip(privates, alone_contexts, strict=True)]
    packed_contexts = [context(m) for m in MODELS[: len(privates)]]
    return alone, alone_contexts, paradigm.synthesize_pack(privates, packed_contexts), packed_contexts


@pytest.mark.parametrize("options", [TINY_DI, DRAWS_DI], ids=["defaults", "jitter-flip-l2-unequal-batches"])
def test_a_packed_deepinversion_pipeline_is_the_same_pipeline_alone(data, options):
    """Three pipelines (own private sets and model ids) as one pack: the single run's inputs, labels and record, bit for bit."""
    paradigm, context = _paradigm_and_contexts(data, options)
    assert paradigm.packs_synthesis()
    alone, alone_contexts, packed, packed_contexts = _alone_and_packed(paradigm, context, _privates(data, 3))
    for one, many, c1, c2 in zip(alone, packed, alone_contexts, packed_contexts, strict=True):
        assert isinstance(many, LabeledSet)
        assert torch.equal(one.x, many.x) and torch.equal(one.y, many.y)  # measured: bit for bit
        assert c1.info == c2.info  # teacher accuracy, BatchNorm loss at the first and last step, agreement
    assert not torch.equal(packed[0].x, packed[1].x)  # each pipeline is its own


def test_a_packed_tabular_deepinversion_pipeline_is_the_same_pipeline_alone():
    """Tabular inputs (an MLP teacher with BatchNorm1d, no image priors): the single run's bits too."""
    wine = load_dataset(DatasetConfig(name="wine"))
    paradigm, context = _paradigm_and_contexts(wine, {**TINY_DI, "n_synthetic": 48}, dataset="wine")
    alone, _, packed, _ = _alone_and_packed(paradigm, context, _privates(wine, 2, size=60))
    for one, many in zip(alone, packed, strict=True):
        assert torch.equal(one.x, many.x) and torch.equal(one.y, many.y)


def test_packed_statistics_are_each_batch_s_own():
    """R_feature of B batches in one forward pass equals BatchNormStatistics on each batch alone (same bits)."""
    torch.manual_seed(0)
    network = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                                  torch.nn.Conv2d(8, 16, 3), torch.nn.BatchNorm2d(16)).eval()
    for layer in network:
        if isinstance(layer, torch.nn.BatchNorm2d):
            layer.running_mean.uniform_(-1, 1)
            layer.running_var.uniform_(0.5, 2)
    x = torch.randn(4 * 12, 1, 8, 8)
    single = BatchNormStatistics(network)
    alone = []
    for batch in x.split(12):
        network(batch)
        alone.append(single.pop())
    single.close()
    packed = PackedStatistics(network, 4)
    network(x)
    assert torch.equal(packed.pop(), torch.stack(alone))
    packed.close()


@pytest.mark.parametrize("n, batch", [(2048, 128), (70, 16), (64, 16), (10, 128), (1001, 64)])
def test_batch_sizes_are_the_single_run_s_split(n, batch):
    expected = [len(part) for part in torch.tensor_split(torch.arange(n), max(1, n // batch))]
    assert batch_sizes(n, batch) == expected


def test_a_degenerate_private_set_fails_alone_in_its_pack(data):
    """An empty private set (the teacher's accuracy cannot be measured): the single run's error; the others are their
    single runs."""
    paradigm, context = _paradigm_and_contexts(data, TINY_DI)
    privates = _privates(data, 3)
    privates[1] = LabeledSet(privates[1].x[:0], privates[1].y[:0])
    with pytest.raises(ValueError) as alone_error:
        paradigm.synthesize(privates[1], context(1))
    packed = paradigm.synthesize_pack(privates, [context(m) for m in (0, 1, 2)])
    assert type(packed[1]) is ValueError and str(packed[1]) == str(alone_error.value)
    for p in (0, 2):
        assert torch.equal(paradigm.synthesize(privates[p], context(p)).x, packed[p].x)


def test_dfad_keeps_its_student_so_it_is_never_batched(data):
    """DFAD trains the student during synthesis (not separable): a pack runs it one by one, equal to the single run."""
    paradigm, context = _paradigm_and_contexts(data, TINY_DFAD)
    assert not paradigm.packs_synthesis() and not paradigm.separable_synthesis
    alone, _, packed, _ = _alone_and_packed(paradigm, context, _privates(data, 2))
    for one, many in zip(alone, packed, strict=True):
        assert torch.equal(one.x, many.x) and torch.equal(one.y, many.y)


def test_pack_memory_sizes_auto_and_refuses_what_does_not_fit(data):
    paradigm, _ = _paradigm_and_contexts(data, TINY_DI)
    config = config_from_dict(tiny_config_dict("/tmp/unused", paradigms=["dfkd"], paradigm_options={"dfkd": TINY_DI}))
    per_pipeline = paradigm.pack_memory_bytes((1, 8, 8), 10, 700)
    assert per_pipeline > Paradigm.pack_memory_bytes(paradigm, (1, 8, 8), 10, 700)  # the teacher's bound and more
    config.execution.pack_memory_gb = 3 * per_pipeline / 2**30
    assert resolve_pack(config, "dfkd", paradigm, torch.device("cpu"), (1, 8, 8), 10, 700) == 3  # what the budget holds


def _worker(root, data, split, pack: int) -> ShadowTrainer:
    raw = tiny_config_dict(root, paradigms=["dfkd"], paradigm_options={"dfkd": TINY_DI}, execution={"pack": pack})
    return ShadowTrainer(config_from_dict(raw).to_dict(), str(root), data, split)


@pytest.mark.slow
def test_packed_and_single_workers_store_the_same_deepinversion_sets(tmp_path, data):
    """In the worker (synthesize_group): a pack of 3 stores the sets of one-by-one synthesis, bit for bit.  With model 1's
    private set emptied, the pack raises model 1's own error and models 0 and 2 are stored, unchanged."""
    split = make_audit_split(data, 40, "mislabel", 8, 0)
    stored = {}
    for pack in (1, 3):
        records = _worker(tmp_path / f"pack{pack}", data, split, pack).synthesize_group("dfkd", [0, 1, 2])
        assert [r.get("status", "ok") for r in records] == ["ok"] * 3
        stored[pack] = [RunStore(str(tmp_path / f"pack{pack}")).read_npz(synthetic_path("dfkd", m)) for m in range(3)]
    for one, many in zip(stored[1], stored[3], strict=True):
        assert np.array_equal(one["x"], many["x"]) and np.array_equal(one["y"], many["y"])

    worker = _worker(tmp_path / "failing", data, split, 3)
    own = worker.private_set
    worker.private_set = lambda model_id: (LabeledSet(own(model_id).x[:0], own(model_id).y[:0]) if model_id == 1
                                           else own(model_id))
    with pytest.raises(ValueError, match="non-empty list"):  # a built-in's error propagates, for its own model
        worker.synthesize_group("dfkd", [0, 1, 2])
    store = RunStore(str(tmp_path / "failing"))
    assert not store.exists(synthetic_path("dfkd", 1))
    for m in (0, 2):
        assert np.array_equal(store.read_npz(synthetic_path("dfkd", m))["x"], stored[1][m]["x"])
