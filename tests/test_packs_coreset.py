"""Packs of coreset pipelines (herding, kcenter, forgetting; raypriv.synth.coreset.Coreset.synthesize_pack).

Ground truth is the same pipeline run alone.  Picking an index set is
discrete, so a packed pipeline must select exactly the single run's samples.
"""

from __future__ import annotations

import pytest
import torch

from raypriv.config import DatasetConfig
from raypriv.config import from_dict as config_from_dict
from raypriv.data import load_dataset
from raypriv.errors import RayprivError
from raypriv.synth import LabeledSet, ShadowContext, make_paradigm
from raypriv.synth import coreset as coreset_module
from raypriv.synth.coreset import train_scorers
from raypriv.training import Normalizer
from tests.conftest import tiny_config_dict

TINY = {"ipc": 3, "feature_epochs": 2, "train_epochs": 1}


@pytest.fixture(scope="module")
def digits():
    data = load_dataset(DatasetConfig())
    return torch.tensor(data.x_train[:360]), torch.tensor(data.y_train[:360]), Normalizer.fit(data.x_train)


def _setup(digits, method: str, **options):
    x, y, normalizer = digits
    config = config_from_dict(tiny_config_dict("/tmp/unused", paradigms=["coreset"],
                                               paradigm_options={"coreset": {"method": method, **TINY, **options}}))
    paradigm = make_paradigm(config, "coreset")

    def context(model_id: int) -> ShadowContext:
        return ShadowContext(config, "coreset", model_id, 10, (1, 8, 8), normalizer, torch.device("cpu"))

    privates = [LabeledSet(x[40 * p : 40 * p + 200], y[40 * p : 40 * p + 200]) for p in range(3)]
    return paradigm, context, privates


def _same(a: LabeledSet, b: LabeledSet) -> bool:
    return torch.equal(a.x, b.x) and torch.equal(a.y, b.y)


@pytest.mark.parametrize("method", ["herding", "kcenter", "forgetting"])
def test_a_packed_coreset_selects_the_samples_of_its_single_run(digits, method):
    paradigm, context, privates = _setup(digits, method)
    alone_contexts = [context(m) for m in (0, 5, 9)]
    alone = [paradigm.synthesize(p, c) for p, c in zip(privates, alone_contexts, strict=True)]
    packed_contexts = [context(m) for m in (0, 5, 9)]
    packed = paradigm.synthesize_pack(privates, packed_contexts)
    for one, many, c1, c2 in zip(alone, packed, alone_contexts, packed_contexts, strict=True):
        assert isinstance(many, LabeledSet) and _same(one, many)
        assert c1.info == c2.info  # forgetting's counts too
    assert not _same(packed[0], packed[1])


@pytest.mark.parametrize("method", ["herding", "kcenter"])
def test_the_ensemble_engine_selects_the_same_samples_where_the_models_agree(digits, method):
    """K scoring models trained at once (the GPU path) select the single run's samples.

    One epoch on slightly jittered float pixels, where the ensemble engine
    matches the loop to float rounding (tests/test_ensemble.py: digits'
    grey levels make max-pool ties that the two engines may route apart).
    """
    paradigm, context, privates = _setup(digits, method, feature_epochs=1)
    jitter = torch.Generator().manual_seed(1)
    privates = [LabeledSet(p.x.float() / 255 + 1e-3 * torch.rand(p.x.shape, generator=jitter), p.y) for p in privates]
    contexts = [context(m) for m in (0, 5, 9)]
    scorers = train_scorers(privates, contexts, paradigm.options, "ensemble")
    by_class = [[torch.nonzero(p.y == c).flatten() for c in range(10)] for p in privates]
    for p, (private, scorer) in enumerate(zip(privates, scorers, strict=True)):
        alone = paradigm.synthesize(private, context(contexts[p].model_id))
        assert _same(alone, paradigm.select(private, contexts[p], by_class[p], scorer))


def test_a_degenerate_private_set_fails_alone_in_its_pack(digits):
    """A private set with too few samples of class 3 gets the single run's error; the others are stored as alone."""
    paradigm, context, privates = _setup(digits, "herding")
    keep = torch.ones(len(privates[1].y), dtype=torch.bool)
    keep[torch.nonzero(privates[1].y == 3).flatten()[1:]] = False  # one sample of class 3 left, ipc is 3
    privates[1] = LabeledSet(privates[1].x[keep], privates[1].y[keep])
    packed = paradigm.synthesize_pack(privates, [context(m) for m in (0, 1, 2)])
    assert isinstance(packed[1], RayprivError) and "class 3 has only 1 samples" in str(packed[1])
    with pytest.raises(RayprivError, match="class 3 has only 1 samples"):
        paradigm.synthesize(privates[1], context(1))
    for p in (0, 2):
        assert _same(paradigm.synthesize(privates[p], context(p)), packed[p])


def test_a_failed_batched_training_is_retried_one_by_one(digits, monkeypatch):
    """If the ensemble raises (out of memory, say), every model is trained alone, so errors stay per model."""
    paradigm, context, privates = _setup(digits, "kcenter")
    calls = []

    def broken(*args, **kwargs):
        calls.append(1)
        raise RuntimeError("out of memory")

    monkeypatch.setattr(coreset_module, "scorer_engine", lambda context: "ensemble")
    monkeypatch.setattr("raypriv.ensemble.train_ensemble", broken)
    packed = paradigm.synthesize_pack(privates[:2], [context(m) for m in (0, 1)])
    assert calls == [1]
    for p in (0, 1):
        assert _same(paradigm.synthesize(privates[p], context(p)), packed[p])


def test_which_methods_pack_and_their_memory(digits):
    paradigm, _, _ = _setup(digits, "herding")
    assert paradigm.packs_synthesis() == torch.cuda.is_available()  # the loop is faster on a CPU
    assert not _setup(digits, "forgetting")[0].packs_synthesis()  # per-sample records: one by one
    assert not _setup(digits, "random")[0].packs_synthesis()  # nothing to train
    small, large = (paradigm.pack_memory_bytes((1, 8, 8), 10, n) for n in (700, 1400))
    assert 0 < small < large
