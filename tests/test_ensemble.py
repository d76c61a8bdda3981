"""The ensemble engine: each model is the loop's model, whatever group it lands in."""

import dataclasses

import numpy as np
import pytest
import torch

from raypriv import pipeline
from raypriv.config import from_dict as config_from_dict
from raypriv.data import load_dataset
from raypriv.driver import run_audit
from raypriv.ensemble import (
    is_out_of_memory,
    models_fitting_in_memory,
    resolve_engine,
    train_ensemble,
    train_group_splitting_on_oom,
)
from raypriv.execution import _make_groups
from raypriv.split import make_audit_split
from raypriv.synth import ShadowContext
from raypriv.training import Normalizer, accuracy, train_classifier
from tests.conftest import metric_values, tiny_config_dict


@pytest.fixture(scope="module")
def digits():
    config = config_from_dict({"model": {"width": 8}, "train": {"epochs": 2, "batch_size": 100}})
    data = load_dataset(config.dataset)
    split = make_audit_split(data, 40, "mislabel", 8, config.seed)
    normalizer = Normalizer.fit(data.x_train)
    x, y = torch.tensor(data.x_train), torch.tensor(split.labels)
    return config, data, split, normalizer, x, y


def _context(digits, model_id):
    config, data, _, normalizer, _, _ = digits
    return ShadowContext(config, "real", model_id, data.num_classes, data.input_shape, normalizer, torch.device("cpu"))


def _private(digits, model_id, size=None):
    _, _, split, _, x, y = digits
    index = torch.from_numpy(split.private_indices(model_id))[:size]
    return x[index], y[index]


def _ensemble(digits, model_ids, recipe=None, sizes=None):
    config, _, _, normalizer, _, _ = digits
    sizes = sizes or [None] * len(model_ids)
    return train_ensemble(
        [_context(digits, m).build_model() for m in model_ids],
        [_private(digits, m, s) for m, s in zip(model_ids, sizes, strict=True)],
        recipe or config.train,
        normalizer,
        config.seed,
        model_ids,
    )


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.slow
def test_a_model_is_the_same_in_any_group(digits):
    """Same seed and id: alone, in a group of three, in a group of eight (sets of unequal size).

    Bit for bit up to a group of three.  At eight, the batched convolution
    kernel the CPU library picks can change with the group size: on an AVX2
    EPYC (2026-12-01) the weights then differ by one float32 ulp (1.2e-7),
    where an AVX-512 machine gave identical bits; so that check allows float
    rounding.
    """
    alone = _state(_ensemble(digits, [3])[0])
    _assert_same(alone, _state(_ensemble(digits, [1, 3, 5])[1]))
    eight = _state(_ensemble(digits, list(range(8)))[3])
    assert alone.keys() == eight.keys()
    for key in alone:
        torch.testing.assert_close(alone[key], eight[key], rtol=0, atol=1e-6, msg=key)


def test_groups_with_ragged_batches_and_early_finishers(digits):
    """Sets of 250, 180 and 90 samples: different last batches and step counts per epoch."""
    sizes = [250, 180, 90]
    together = _ensemble(digits, [0, 1, 2], sizes=sizes)
    for position, (model_id, size) in enumerate(zip([0, 1, 2], sizes, strict=True)):
        _assert_same(_state(_ensemble(digits, [model_id], sizes=[size])[0]), _state(together[position]))


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("schedule", ["cosine", "constant"])
def test_ensemble_matches_the_loop_up_to_rounding(digits, optimizer, schedule):
    """Same data order, updates and schedule: one epoch agrees to float rounding.

    The check uses slightly jittered float pixels: digits has 17 grey levels,
    so max-pool windows hold exact ties, and the vmapped and plain kernels may
    route a tied gradient to different (equally valid) positions; from then
    on the models agree in accuracy (next test), not in every weight.
    """
    config, _, _, normalizer, _, _ = digits
    recipe = dataclasses.replace(
        config.train, epochs=1, optimizer=optimizer, lr_schedule=schedule, lr=0.05 if optimizer == "sgd" else 1e-2
    )
    jitter = torch.Generator().manual_seed(1)
    sets = [_private(digits, m) for m in (0, 4)]
    sets = [(x.float() / 255 + 1e-3 * torch.rand(x.shape, generator=jitter), y) for x, y in sets]
    ensemble = train_ensemble([_context(digits, m).build_model() for m in (0, 4)], sets, recipe, normalizer, config.seed, [0, 4])
    tolerance = 1e-6 if optimizer == "sgd" else 1e-4  # Adam divides by sqrt(v), magnifying rounding in small gradients
    for position, model_id in enumerate([0, 4]):
        model = _context(digits, model_id).build_model()
        loop = train_classifier(model, *sets[position], recipe, normalizer, config.seed, model_id)
        for key, value in loop.state_dict().items():
            diff = (value.float() - ensemble[position].state_dict()[key].float()).abs().max().item()
            assert diff < tolerance, (key, diff)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_ensemble_and_loop_reach_the_same_accuracy(digits, optimizer):
    config, data, _, normalizer, _, _ = digits
    recipe = dataclasses.replace(config.train, epochs=4, optimizer=optimizer, lr=0.05 if optimizer == "sgd" else 1e-2)
    x_test, y_test = torch.tensor(data.x_test), torch.tensor(data.y_test)
    ensemble = _ensemble(digits, [0, 4], recipe)
    for position, model_id in enumerate([0, 4]):
        model = _context(digits, model_id).build_model()
        loop = train_classifier(model, *_private(digits, model_id), recipe, normalizer, config.seed, model_id)
        loop_acc = accuracy(loop, x_test, y_test, normalizer)
        assert loop_acc > 0.8
        assert loop_acc == pytest.approx(accuracy(ensemble[position], x_test, y_test, normalizer), abs=0.03)


def test_batch_statistics_stay_per_model(digits):
    """Running BatchNorm statistics equal those of the model trained alone, not a group mean."""
    group = _ensemble(digits, [2, 6])
    means = [m.state_dict()["features.1.running_mean"] for m in group]
    assert not torch.allclose(means[0], means[1])
    _assert_same(_state(group[1]), _state(_ensemble(digits, [6])[0]))


def test_soft_labels_train_in_an_ensemble(digits):
    config, data, _, normalizer, _, _ = digits
    x, hard = _private(digits, 0, 200)
    soft = torch.nn.functional.one_hot(hard, data.num_classes).float() * 0.9 + 0.01
    model = _context(digits, 0).build_model()
    (trained,) = train_ensemble([model], [(x, soft)], config.train, normalizer, config.seed, [0])
    loop = train_classifier(_context(digits, 0).build_model(), x, soft, config.train, normalizer, config.seed, 0)
    for key, value in loop.state_dict().items():
        assert torch.allclose(value.float(), trained.state_dict()[key].float(), atol=1e-4), key


def test_out_of_memory_halves_the_group():
    calls = []

    def train_group(ids):
        calls.append(tuple(ids))
        if len(ids) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return [f"model-{i}" for i in ids]

    splits = []
    trained = train_group_splitting_on_oom([0, 1, 2, 3, 4], train_group, lambda size, half: splits.append((size, half)))
    assert trained == [f"model-{i}" for i in range(5)]
    assert calls == [(0, 1, 2, 3, 4), (0, 1), (2, 3, 4), (2,), (3, 4)]
    assert splits == [(5, 2), (3, 1)]


def test_other_errors_and_a_lone_model_out_of_memory_propagate():
    with pytest.raises(ValueError):
        train_group_splitting_on_oom([0, 1], lambda ids: (_ for _ in ()).throw(ValueError("bug")))
    with pytest.raises(torch.OutOfMemoryError):
        train_group_splitting_on_oom([0, 1], lambda ids: (_ for _ in ()).throw(torch.OutOfMemoryError("out of memory")))
    assert is_out_of_memory(RuntimeError("[enforce fail at alloc_cpu.cpp] DefaultCPUAllocator: can't allocate memory"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))


def test_group_sizing_and_engine_choice(digits):
    config, _, _, normalizer, _, _ = digits
    sample = _private(digits, 0, 100)
    assert models_fitting_in_memory(lambda: _context(digits, 0).build_model(), sample, config.train, normalizer, 24) == 24
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert resolve_engine("auto", "cnn_small", cpu, True) == "loop"
    assert resolve_engine("auto", "cnn_small", gpu, True) == "ensemble"
    assert resolve_engine("auto", "resnet18", gpu, True) == "loop"
    assert resolve_engine("ensemble", "resnet18", cpu, True) == "ensemble"
    assert resolve_engine("ensemble", "cnn_small", gpu, False) == "loop"  # DP-SGD and the like


def test_groups_cover_every_pending_model_once(tmp_path):
    config = config_from_dict(
        tiny_config_dict(
            tmp_path, n_models=16, paradigms=["real", "dpsgd"], train={"engine": "ensemble"}, ray={"models_per_group": 4}
        )
    )
    pending = [(p, m) for m in range(16) for p in config.paradigms if (p, m) != ("real", 5)]
    groups = _make_groups(config, pending, workers=2, on_gpu=False)
    flat = [(p, m) for p, ids in groups for m in ids]
    assert sorted(flat) == sorted(pending)
    assert {len(ids) for p, ids in groups if p == "dpsgd"} == {1}  # no standard recipe: one at a time
    assert max(len(ids) for p, ids in groups if p == "real") == 4
    assert [p for p, _ in groups[:2]] == ["real", "dpsgd"]  # paradigms interleave
    few_workers = _make_groups(config, [("real", m) for m in range(6)], workers=2, on_gpu=False)
    assert [len(ids) for _, ids in few_workers] == [3, 3]  # every worker gets a group


@pytest.mark.slow
def test_audits_with_either_engine_agree(tmp_path):
    """Same models, same metrics to rounding: the ensemble engine in groups of 8 vs the loop."""
    results = {}
    for engine in ("loop", "ensemble"):
        raw = tiny_config_dict(tmp_path / engine, n_models=16, train={"engine": engine})
        results[engine] = run_audit(config_from_dict(raw), use_ray=False, show_progress=False)
    loop, ensemble = results["loop"], results["ensemble"]
    assert np.allclose(loop.models.test_acc, ensemble.models.test_acc, atol=0.01)
    for key, value in metric_values(loop.metrics_json).items():
        assert value == pytest.approx(metric_values(ensemble.metrics_json)[key], abs=0.03), key


@pytest.mark.slow
def test_ray_groups_match_in_process_groups_bit_for_bit(tmp_path, monkeypatch, local_ray):
    """Ray actors with groups of 4 and an in-process run with groups of 8 (one split by a simulated OOM)."""
    real_train = pipeline.train_ensemble
    oom_once = {"done": False}

    def flaky(models, *args, **kwargs):
        if len(models) == 8 and not oom_once["done"]:
            oom_once["done"] = True
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_train(models, *args, **kwargs)

    monkeypatch.setattr(pipeline, "train_ensemble", flaky)
    base = dict(n_models=8, train={"engine": "ensemble"}, attacks=["loss", "lira_online"])
    local = run_audit(config_from_dict(tiny_config_dict(tmp_path / "local", **base)), use_ray=False, show_progress=False)
    assert oom_once["done"]
    on_ray = run_audit(
        config_from_dict(tiny_config_dict(tmp_path / "ray", ray={"num_actors": 2, "models_per_group": 4}, **base)),
        show_progress=False,
    )
    assert list(local.models.test_acc) == list(on_ray.models.test_acc)
    assert metric_values(local.metrics_json) == metric_values(on_ray.metrics_json)
