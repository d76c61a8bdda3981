"""Packs of ``dfkd`` pipelines (``execution.pack``): ground truth is the same pipeline run alone.

DeepInversion packs are batched (:mod:`raypriv.synth.dfkd_packed`) and must
give the single run's bits (DeepInversion is chaotic, so anything less would
drift).  DFAD packs play the K generator/student games vmapped
(:mod:`raypriv.synth.dfad_packed`): equal to the single run in law, so the
tests check the first steps to 1e-5, a short whole run to a bound measured
far below it, and that each model id gets its own student from ``train``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from raypriv.config import DatasetConfig
from raypriv.config import from_dict as config_from_dict
from raypriv.data import load_dataset
from raypriv.pipeline import ShadowTrainer, packs_by_default, resolve_pack
from raypriv.run.format import synthetic_path
from raypriv.run.store import RunStore, iter_logits
from raypriv.split import make_audit_split
from raypriv.synth import LabeledSet, ShadowContext, make_paradigm
from raypriv.synth.base import Paradigm
from raypriv.synth.deepinversion import BatchNormStatistics
from raypriv.synth.dfad import adversarial_distillation, initial_generator
from raypriv.synth.dfad_packed import adversarial_distillation_pack
from raypriv.synth.dfkd import DataFreeKD, teacher_model, train_teacher
from raypriv.synth.dfkd_packed import PackedStatistics, batch_sizes
from raypriv.training import Normalizer, predict_logits
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


def _pack_with_an_empty_private_set(data, options):
    """A pack of models 0-2 where model 1's private set is empty: its entry must be the single run's error."""
    paradigm, context = _paradigm_and_contexts(data, options)
    privates = _privates(data, 3)
    privates[1] = LabeledSet(privates[1].x[:0], privates[1].y[:0])
    with pytest.raises(ValueError) as alone_error:
        paradigm.synthesize(privates[1], context(1))
    packed = paradigm.synthesize_pack(privates, [context(m) for m in (0, 1, 2)])
    assert type(packed[1]) is ValueError and str(packed[1]) == str(alone_error.value)
    return paradigm, context, privates, packed


def test_a_degenerate_private_set_fails_alone_in_its_pack(data):
    """An empty private set (the teacher's accuracy cannot be measured): the single run's error; the others are their
    single runs."""
    paradigm, context, privates, packed = _pack_with_an_empty_private_set(data, TINY_DI)
    for p in (0, 2):
        assert torch.equal(paradigm.synthesize(privates[p], context(p)).x, packed[p].x)


# ---------------------------------------------------------------------- DFAD

# A short DFAD run (3 generator steps of 2 student steps each) agrees with its single run to about 6e-7 in every
# weight, input and soft label (measured on this CPU, 2026-12-06); 1e-4 leaves room for other kernels.  Longer runs
# drift apart (30 x 5 steps: students up to 0.2 apart, recorded pixels 0.3), as two runs with other rounding do.
SHORT_RUN_BOUND = 1e-4


def _states_differ(a: torch.nn.Module, b: torch.nn.Module) -> float:
    """The largest difference between two networks' floating parameters and buffers."""
    return max(float((x - y).abs().max()) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
               if x.is_floating_point())


def test_the_first_dfad_steps_of_a_pack_are_the_single_runs(data):
    """One generator step after two student steps, two pipelines vmapped: each pipeline's student (weights and
    BatchNorm statistics), generator and L1 losses are its single run's to 1e-5 (float32 rounding)."""
    options = {**TINY_DFAD, "steps": 1, "student_steps": 2}
    paradigm, context = _paradigm_and_contexts(data, options)
    contexts = [context(m) for m in MODELS[:2]]
    teachers = [train_teacher(p, c, None, teacher_model(paradigm.options, c.config.model))
                for p, c in zip(_privates(data, 2), contexts, strict=True)]
    alone = []
    for teacher, c in zip(teachers, contexts, strict=True):
        student = c.build_model()
        generator, losses = adversarial_distillation(teacher, student, paradigm.options, c)
        alone.append((student, generator, losses))
    students = [c.build_model() for c in contexts]
    generators = [initial_generator(paradigm.options, c) for c in contexts]
    curves = adversarial_distillation_pack(teachers, students, generators, paradigm.options, contexts)
    for (student, generator, losses), packed_student, packed_generator, curve in zip(
        alone, students, generators, curves, strict=True
    ):
        assert _states_differ(student, packed_student) <= 1e-5
        assert _states_differ(generator, packed_generator) <= 1e-5
        assert not packed_generator.training and not generator.training  # eval mode for the record, as alone
        assert np.allclose(losses, curve, rtol=1e-5, atol=0) and len(curve) == 2
    assert _states_differ(students[0], students[1]) > 1e-2  # each pipeline is its own


def test_a_short_packed_dfad_run_is_its_single_run_and_train_returns_each_model_s_student(data):
    """Three pipelines as one pack against each alone: the records (inputs and soft labels), the students' test
    logits and the L1 record agree to SHORT_RUN_BOUND; ``train`` hands each model id its own student, once."""
    paradigm, context = _paradigm_and_contexts(data, TINY_DFAD)
    assert paradigm.packs_synthesis() and not paradigm.separable_synthesis
    privates, alone_contexts = _privates(data, 3), [context(m) for m in MODELS]
    alone = [paradigm.synthesize(p, c) for p, c in zip(privates, alone_contexts, strict=True)]
    # Kept by model id until train(): each single run's student is taken before the pack (the same ids) makes its own.
    students_alone = [paradigm.train(one, c) for one, c in zip(alone, alone_contexts, strict=True)]
    packed_contexts = [context(m) for m in MODELS]
    packed = paradigm.synthesize_pack(privates, packed_contexts)
    x_test = torch.tensor(data.x_test[:200])
    normalizer = alone_contexts[0].normalizer
    for one, many, c1, c2, student_alone in zip(alone, packed, alone_contexts, packed_contexts, students_alone,
                                                strict=True):
        assert isinstance(many, LabeledSet) and one.x.shape == many.x.shape and one.y.shape == many.y.shape
        assert (one.x - many.x).abs().max() <= SHORT_RUN_BOUND and (one.y - many.y).abs().max() <= SHORT_RUN_BOUND
        assert c1.info.keys() == c2.info.keys() == {"teacher_train_acc", "l1_start", "l1_end"}
        assert c1.info["teacher_train_acc"] == c2.info["teacher_train_acc"]  # the teacher trains alone: the same bits
        assert np.allclose([c1.info["l1_start"], c1.info["l1_end"]], [c2.info["l1_start"], c2.info["l1_end"]], rtol=1e-5)
        student_packed = paradigm.train(many, c2)
        assert student_alone is not student_packed
        logits = [predict_logits(s, x_test, normalizer, ["identity"]) for s in (student_alone, student_packed)]
        assert np.abs(logits[0] - logits[1]).max() <= SHORT_RUN_BOUND
        with pytest.raises(RuntimeError, match="without synthesize"):  # handed over once
            paradigm.train(many, c2)
    assert (packed[0].x - packed[1].x).abs().max() > 1e-2  # each pipeline is its own


def test_a_degenerate_private_set_fails_alone_in_a_dfad_pack(data):
    """An empty private set: the single run's error for that pipeline, no student kept for it; the others are their
    single runs (within the short-run bound).  A pack left with one pipeline plays the single run's code: bit for bit."""
    paradigm, context, privates, packed = _pack_with_an_empty_private_set(data, TINY_DFAD)
    with pytest.raises(RuntimeError, match="without synthesize"):
        paradigm.train(packed[0], context(1))
    students = {m: paradigm.train(packed[m], context(m)) for m in (0, 2)}
    for m in (0, 2):
        one = paradigm.synthesize(privates[m], context(m))
        assert (one.x - packed[m].x).abs().max() <= SHORT_RUN_BOUND
        assert _states_differ(paradigm.train(one, context(m)), students[m]) <= SHORT_RUN_BOUND

    survivor = paradigm.synthesize_pack(privates[:2], [context(0), context(1)])
    assert isinstance(survivor[1], ValueError)
    assert torch.equal(survivor[0].x, paradigm.synthesize(privates[0], context(0)).x)


def test_auto_packs_dfad_on_a_gpu_only(data):
    """DFAD's pack is equal in law only: ``auto`` leaves it one by one on a CPU, packs it on a GPU, and an explicit
    K packs it anywhere.  DeepInversion's is bit for bit: ``auto`` packs it on a CPU too."""
    dfad, _ = _paradigm_and_contexts(data, TINY_DFAD)
    deepinversion, _ = _paradigm_and_contexts(data, TINY_DI)
    assert dfad.packs_synthesis() and not dfad.packs_bit_exact() and deepinversion.packs_bit_exact()
    assert not packs_by_default(dfad, on_gpu=False) and packs_by_default(dfad, on_gpu=True)
    assert packs_by_default(deepinversion, on_gpu=False)
    for pack, expected in (("auto", 1), (4, 4)):
        config = config_from_dict(tiny_config_dict("/tmp/unused", paradigms=["dfkd"], execution={"pack": pack},
                                                   paradigm_options={"dfkd": TINY_DFAD}))
        assert resolve_pack(config, "dfkd", dfad, torch.device("cpu"), (1, 8, 8), 10, 700) == expected


def test_dfad_pack_memory_counts_the_game(data):
    """The teacher's bound plus the game: the generator's state, a batch's activations and the record, growing with
    the generator batch."""
    dfad, _ = _paradigm_and_contexts(data, TINY_DFAD)
    teacher_training = Paradigm.pack_memory_bytes(dfad, (1, 8, 8), 10, 700)
    game = dfad.pack_memory_bytes((1, 8, 8), 10, 700) - teacher_training
    larger, _ = _paradigm_and_contexts(data, {**TINY_DFAD, "batch_size": 64})
    assert 0 < game < larger.pack_memory_bytes((1, 8, 8), 10, 700) - teacher_training


def _stored_logits(root, model_id: int, n_audit: int = 40) -> np.ndarray:
    """Model ``model_id``'s stored audit logits ``(n_audit, num_classes)`` (one query), by sample id."""
    logits = np.zeros((n_audit, 10), dtype=np.float32)
    for sample, _, block in iter_logits(RunStore(str(root)), "dfkd", model_id, n_audit, 1):
        logits[sample] = block
    return logits


def test_dfad_packs_through_the_pipeline_and_each_model_trains_its_own_student(tmp_path, data, monkeypatch):
    """run_group with ``execution.pack: 2`` on DFAD (not separable): models 0 and 1 as one batched pack, model 2 alone,
    each trained (its kept student) and stored; each model's stored logits are those of its one-by-one run."""
    split = make_audit_split(data, 40, "mislabel", 8, 0)
    packs = []
    batched = DataFreeKD.dfad_pack
    monkeypatch.setattr(DataFreeKD, "dfad_pack", lambda self, teachers, contexts, results: (
        packs.append([c.model_id for c in contexts]), batched(self, teachers, contexts, results))[1])
    rows = {}
    for pack in (1, 2):
        raw = tiny_config_dict(tmp_path / f"pack{pack}", paradigms=["dfkd"], paradigm_options={"dfkd": TINY_DFAD},
                               execution={"pack": pack})
        worker = ShadowTrainer(config_from_dict(raw).to_dict(), str(tmp_path / f"pack{pack}"), data, split)
        rows[pack] = worker.run_group("dfkd", [0, 1, 2])
        assert [(r["model_id"], r["status"]) for r in rows[pack]] == [(0, "ok"), (1, "ok"), (2, "ok")], rows[pack]
    assert packs == [[0, 1]]  # the explicit pack of 2 was batched; the loop and model 2 alone never call it
    for m in range(3):
        one, many = _stored_logits(tmp_path / "pack1", m), _stored_logits(tmp_path / "pack2", m)
        assert np.abs(one - many).max() <= SHORT_RUN_BOUND
        assert RunStore(str(tmp_path / "pack2")).exists(synthetic_path("dfkd", m))  # the record is stored
    assert np.abs(_stored_logits(tmp_path / "pack2", 0) - _stored_logits(tmp_path / "pack2", 1)).max() > 1e-2


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
