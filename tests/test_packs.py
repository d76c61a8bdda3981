"""Packs (``execution.pack``): K pipelines of one paradigm synthesized at once by one worker.

Ground truth throughout is the same pipeline run alone: a packed pipeline's
set must equal it (raypriv.synth.base, "Packs"), a pipeline's failure must
stay its own, and packing must not enter the recipe hash.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import raypriv
from raypriv.config import DatasetConfig
from raypriv.config import from_dict as config_from_dict
from raypriv.data import load_dataset
from raypriv.errors import RayprivError
from raypriv.pipeline import ShadowTrainer, pack_ceiling, resolve_pack
from raypriv.run.fingerprints import recipe_hashes
from raypriv.run.format import synthetic_path
from raypriv.run.store import RunStore
from raypriv.split import make_audit_split
from raypriv.synth import LabeledSet, make_paradigm
from raypriv.synth.distill.common import ConvNet, DSAParams, apply_dsa, sample_dsa
from raypriv.synth.distill.packed import augment_pack, convnet_parameters
from tests.conftest import check_a_missing_class_fails_alone, distill_paradigm, overlapping_privates, tiny_config_dict

HERE = "tests.test_packs"
# A DM small enough for seconds: 4 iterations, 2 images per class, real batches of 8.
TINY_DM = {"method": "dm", "iterations": 4, "ipc": 2, "batch_real": 8, "train_epochs": 1}


def test_convnet_weights_drawn_directly_are_the_modules():
    """The packed DM draws its networks' weights without building them: the same numbers as ConvNet after manual_seed."""
    for shape, width, depth in (((1, 8, 8), 32, None), ((3, 16, 16), 8, 3)):
        torch.manual_seed(1234)
        net = ConvNet(shape, 10, width, depth)
        convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
        drawn = convnet_parameters(shape, width, depth, 1234)
        assert len(drawn) == len(convs)
        for conv, (weight, bias) in zip(convs, drawn, strict=True):
            assert torch.equal(conv.weight, weight) and torch.equal(conv.bias, bias)


def test_augment_pack_is_apply_dsa_batch_by_batch():
    """Every DSA transform, applied to several batches in one call, equals apply_dsa on each batch alone."""
    generator = torch.Generator().manual_seed(0)
    batches = [torch.randn(n, 1, 8, 8, generator=generator) for n in (5, 3, 7, 5, 2, 4, 6)]
    params = [sample_dsa((t,), len(b), (8, 8), generator) for t, b in
              zip(("color", "crop", "cutout", "flip", "scale", "rotate", "crop"), batches, strict=True)]
    for got, batch, p in zip(augment_pack(batches, params), batches, params, strict=True):
        torch.testing.assert_close(got, apply_dsa(batch, p), atol=1e-6, rtol=0)
    assert isinstance(params[0], DSAParams)


def test_a_packed_dm_pipeline_is_the_same_pipeline_alone(digits_private):
    """Three DM pipelines (own private sets, own model ids) as one pack: each set equals its single run (1e-5)."""
    _, make_context = digits_private
    paradigm = distill_paradigm(TINY_DM)
    assert paradigm.packs_synthesis()
    privates = overlapping_privates(digits_private, 3)
    alone_contexts = [make_context(m) for m in (0, 5, 9)]
    alone = [paradigm.synthesize(p, c) for p, c in zip(privates, alone_contexts, strict=True)]
    packed_contexts = [make_context(m) for m in (0, 5, 9)]
    packed = paradigm.synthesize_pack(privates, packed_contexts)
    for one, many, c1, c2 in zip(alone, packed, alone_contexts, packed_contexts, strict=True):
        assert isinstance(many, LabeledSet)
        assert (one.x - many.x).abs().max() <= 1e-5 and torch.equal(one.y, many.y)  # measured: 0 (bit for bit)
        assert c1.info["distill_final_loss"] == c2.info["distill_final_loss"]  # summed in the same order
    assert not torch.equal(packed[0].x, packed[1].x)  # each pipeline is its own


def test_a_degenerate_private_set_fails_alone_in_its_pack(digits_private):
    """A private set without class 3 gets the single run's error; the pack's other pipelines are unchanged."""
    paradigm = distill_paradigm(TINY_DM)
    check_a_missing_class_fails_alone(paradigm, digits_private, paradigm.synthesize_pack)


def test_methods_without_a_batched_version_run_one_by_one():
    assert distill_paradigm({"method": "dc"}).packs_synthesis() == torch.cuda.is_available()  # no faster on a CPU
    assert distill_paradigm({"method": "mtt"}).packs_synthesis() and not distill_paradigm({"method": "mtt"}).packs_bit_exact()
    assert not distill_paradigm({"method": "dm", "embed_arch": "model"}).packs_synthesis()
    assert not distill_paradigm({"method": "dm", "ipc": 1}).packs_synthesis()  # a batch of one rounds apart (packed.dm_packable)


# ------------------------------------------------------------------ config, hash, K


def test_packing_never_enters_the_recipe_hash(tmp_path):
    base = tiny_config_dict(tmp_path, paradigms=["real", "distill"])
    hashes = {pack: recipe_hashes(config_from_dict({**base, "execution": {"pack": pack}})) for pack in (1, 8, "auto")}
    assert hashes[1] == hashes[8] == hashes["auto"] == recipe_hashes(config_from_dict(base))


@pytest.mark.parametrize("pack, message", [
    (0, "execution.pack must be at least 1"),
    ("many", "execution.pack='many' is not allowed"),
])
def test_a_bad_pack_is_one_named_error(tmp_path, pack, message):
    with pytest.raises(RayprivError, match=message):
        config_from_dict(tiny_config_dict(tmp_path, execution={"pack": pack}))


def test_pack_size_per_paradigm_and_budget(tmp_path):
    cpu = torch.device("cpu")

    def k(paradigm, pack, memory_gb=2.0):
        config = config_from_dict(tiny_config_dict(
            tmp_path, paradigms=[paradigm], execution={"pack": pack, "pack_memory_gb": memory_gb},
            paradigm_options={"distill": TINY_DM} if paradigm == "distill" else {},
        ))
        return resolve_pack(config, paradigm, make_paradigm(config, paradigm), cpu, (1, 8, 8), 10, 700)

    assert k("real", "auto") == 1  # no batched synthesis: nothing to gain
    assert k("real", 4) == 4  # asked for: run one by one inside the pack
    assert k("distill", "auto") == 8  # the CPU ceiling (raypriv.pipeline.PACK_AUTO_MAX)
    assert k("distill", 16) == 16
    per_pipeline = distill_paradigm(TINY_DM).pack_memory_bytes((1, 8, 8), 10, 700)
    assert k("distill", "auto", memory_gb=3 * per_pipeline / 2**30) == 3  # what the budget holds
    with pytest.raises(RayprivError, match=r"execution.pack=16 does not fit: .* holds 3; lower execution.pack"):
        k("distill", 16, memory_gb=3 * per_pipeline / 2**30)


def test_auto_packs_a_pack_equal_only_in_law_on_a_gpu_alone(tmp_path):
    """mtt's pack is equal in law to its single run: auto leaves it one by one on a CPU, an explicit K packs it."""
    config = config_from_dict(tiny_config_dict(
        tmp_path, paradigms=["distill"], paradigm_options={"distill": {"method": "mtt"}},
    ))
    paradigm = make_paradigm(config, "distill")
    assert paradigm.packs_synthesis() and not paradigm.packs_bit_exact()
    assert resolve_pack(config, "distill", paradigm, torch.device("cpu"), (1, 8, 8), 10, 700) == 1
    assert pack_ceiling(config, paradigm, on_gpu=False) == 1 and pack_ceiling(config, paradigm, on_gpu=True) == 64
    explicit = config_from_dict(tiny_config_dict(
        tmp_path, paradigms=["distill"], paradigm_options={"distill": {"method": "mtt"}}, execution={"pack": 4},
    ))
    assert resolve_pack(explicit, "distill", paradigm, torch.device("cpu"), (1, 8, 8), 10, 700) == 4


# ------------------------------------------------------------------ in the worker


@pytest.fixture(scope="module")
def data_and_split():
    data = load_dataset(DatasetConfig())
    return data, make_audit_split(data, 40, "mislabel", 8, 0)


def _trainer(root, data_and_split, paradigm: str, pack, options=None) -> ShadowTrainer:
    data, split = data_and_split
    raw = tiny_config_dict(root, paradigms=[paradigm], execution={"pack": pack})
    if options is not None:
        raw["paradigm_options"] = {paradigm: options}
    return ShadowTrainer(config_from_dict(raw).to_dict(), str(root), data, split)


def _stored_x(root, paradigm: str, model_id: int) -> np.ndarray:
    return RunStore(str(root)).read_npz(synthetic_path(paradigm, model_id))["x"]


def test_packed_and_single_workers_store_the_same_sets_and_mix_on_resume(tmp_path, data_and_split):
    """Pack 3 vs one by one: the same stored sets.  A store where model 0 was made alone resumes with a pack."""
    single = _trainer(tmp_path / "single", data_and_split, "distill", 1, TINY_DM)
    assert [r["model_id"] for r in single.synthesize_group("distill", [0, 1, 2])] == [0, 1, 2]
    packed = _trainer(tmp_path / "packed", data_and_split, "distill", 3, TINY_DM)
    records = packed.synthesize_group("distill", [0, 1, 2])
    assert [r.get("status", "ok") for r in records] == ["ok"] * 3
    for m in range(3):
        assert np.abs(_stored_x(tmp_path / "single", "distill", m) - _stored_x(tmp_path / "packed", "distill", m)).max() <= 1e-5

    mixed = _trainer(tmp_path / "mixed", data_and_split, "distill", 1, TINY_DM)
    alone = mixed.synthesize("distill", 0)  # made alone, stored
    resumed = _trainer(tmp_path / "mixed", data_and_split, "distill", 3, TINY_DM)
    records = resumed.synthesize_group("distill", [0, 1, 2])  # model 0 is read back (same recipe hash), 1 and 2 packed
    assert [r["model_id"] for r in records] == [0, 1, 2]
    assert records[0]["synth_seconds"] == alone["synth_seconds"]  # not made again
    for m in range(3):
        assert np.abs(_stored_x(tmp_path / "single", "distill", m) - _stored_x(tmp_path / "mixed", "distill", m)).max() <= 1e-5


class PacksAndFailsOne(raypriv.Paradigm):
    """A plugin with a batched synthesis that returns an exception for model 1 and raises nothing."""

    name = "test-packs"

    def packs_synthesis(self) -> bool:
        return True

    def synthesize(self, private, context):
        return LabeledSet(private.x[:50].clone(), private.y[:50].clone())

    def synthesize_pack(self, privates, contexts):
        return [ValueError("model 1's own problem") if c.model_id == 1 else self.synthesize(p, c)
                for p, c in zip(privates, contexts, strict=True)]


def test_a_pipeline_error_in_a_pack_fails_that_model_only(tmp_path, data_and_split):
    trainer = _trainer(tmp_path / "run", data_and_split, f"{HERE}:PacksAndFailsOne", 3)
    records = trainer.synthesize_group(f"{HERE}:PacksAndFailsOne", [0, 1, 2])
    assert [r.get("status", "ok") for r in records] == ["ok", "failed", "ok"]
    assert records[1]["error"].endswith("raised in synthesize_pack(): ValueError: model 1's own problem")
    assert RunStore(str(tmp_path / "run")).exists(synthetic_path(f"{HERE}:PacksAndFailsOne", 2))


class PackReturnsNone(PacksAndFailsOne):
    def synthesize_pack(self, privates, contexts):
        return None


def test_a_malformed_pack_fails_each_of_its_models(tmp_path, data_and_split):
    trainer = _trainer(tmp_path / "run", data_and_split, f"{HERE}:PackReturnsNone", 2)
    records = trainer.synthesize_group(f"{HERE}:PackReturnsNone", [0, 1, 2])  # a pack of 2, then model 2 alone
    assert [r.get("status", "ok") for r in records] == ["failed", "failed", "ok"]
    assert all("synthesize_pack() returned NoneType, not a list of 2 entries" in r["error"] for r in records[:2])


class KeepsStateForTrain(raypriv.Paradigm):
    """Like DFAD: synthesize() leaves state that train() of the same model needs (separable_synthesis False)."""

    name = "test-keeps-state"

    @property
    def separable_synthesis(self) -> bool:
        return False

    def synthesize(self, private, context):
        self.last = context.model_id
        return LabeledSet(private.x[:50].clone(), private.y[:50].clone())

    def train(self, training_set, context):
        if getattr(self, "last", None) != context.model_id:
            raise RuntimeError(f"train() of model {context.model_id} after synthesize() of {self.last}")
        return super().train(training_set, context)


def test_a_paradigm_with_state_between_stages_and_no_batched_synthesis_is_never_packed(tmp_path, data_and_split):
    """execution.pack: 3 on a paradigm that keeps state for train(): each model still synthesizes then trains."""
    trainer = _trainer(tmp_path / "run", data_and_split, f"{HERE}:KeepsStateForTrain", 3)
    rows = trainer.run_group(f"{HERE}:KeepsStateForTrain", [0, 1, 2])
    assert [r["status"] for r in rows] == ["ok"] * 3, rows


@pytest.mark.slow
def test_packs_on_ray_give_the_audit_of_single_models(tmp_path, local_ray):
    """Packs of 4 on the Ray synthesis pool, against one by one in process: the same metrics to the last digit."""
    from raypriv.driver import run_audit
    from tests.conftest import metric_values

    def config(out, pack, **ray):
        return config_from_dict(tiny_config_dict(
            tmp_path / out, paradigms=["distill"], paradigm_options={"distill": TINY_DM}, execution={"pack": pack},
            ray=ray, **{"train.epochs": 1},
        ))

    reference = run_audit(config("single", 1), use_ray=False, show_progress=False)
    packed = run_audit(config("packed", 4, num_synthesis_workers=1, num_actors=1), use_ray=True, show_progress=False)
    assert metric_values(packed.metrics_json) == metric_values(reference.metrics_json)
    assert len(list((tmp_path / "packed" / "synthetic" / "distill").glob("model-*.npz"))) == 8
