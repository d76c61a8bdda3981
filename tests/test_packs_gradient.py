"""Packs of gradient-matching pipelines (distill ``dc`` and ``dsa``, raypriv.synth.distill.packed_gradient).

Ground truth is the same pipeline run alone (raypriv.synth.distill.matching.gradient_matching).
Gradient matching amplifies float rounding (the module docstring), so a pack
is held to 1e-5 over its first image steps and, over longer runs, to
tracking its own pipeline far more closely than any other pipeline.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from raypriv.synth import LabeledSet
from raypriv.synth.distill.common import ConvNet
from raypriv.synth.distill.matching import layerwise_distance
from raypriv.synth.distill.packed_gradient import (
    PackedClassifier,
    layerwise_distances,
    pipeline_losses,
    synthesize_gradient_pack,
)
from tests.conftest import check_a_missing_class_fails_alone, distill_paradigm, overlapping_privates

# One outer iteration of 2 image steps (and 2 network steps between them), 2 images per class, real batches of 16.
TINY = {"iterations": 1, "outer_loop": 2, "inner_loop": 2, "ipc": 2, "batch_real": 16, "train_epochs": 1}


def _nets(k: int) -> list[ConvNet]:
    nets = []
    for p in range(k):
        torch.manual_seed(100 + p)
        nets.append(ConvNet((1, 8, 8), 10, 8))
    return nets


def test_the_packed_classifier_is_k_convnets_and_its_gradients_are_theirs():
    """Logits and the weight gradients of the summed losses equal each ConvNet's own (to float rounding)."""
    nets = _nets(3)
    packed = PackedClassifier(nets)
    x = torch.randn(3, 5, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    y = torch.randint(10, (3, 5), generator=torch.Generator().manual_seed(1))
    logits = packed.logits(x)
    grads = torch.autograd.grad(pipeline_losses(logits, y).sum(), packed.params)
    for p, net in enumerate(nets):
        alone = net(x[p])
        torch.testing.assert_close(logits[p], alone, atol=1e-6, rtol=0)
        own = torch.autograd.grad(F.cross_entropy(alone, y[p]), list(net.parameters()))
        for g_pack, g_alone in zip(grads, own, strict=True):
            part = g_pack[p] if g_pack.shape[0] == 3 else g_pack.view(3, -1, *g_pack.shape[1:])[p]
            torch.testing.assert_close(part, g_alone, atol=1e-6, rtol=1e-5)


def test_padded_batches_weigh_only_their_own_rows():
    """A pipeline with fewer real images (a small class) gets the mean over its own rows, the padding weighs 0."""
    logits = torch.randn(2, 4, 10, generator=torch.Generator().manual_seed(2))
    y = torch.randint(10, (2, 4), generator=torch.Generator().manual_seed(3))
    losses = pipeline_losses(logits, y, [4, 2])
    torch.testing.assert_close(losses[0], F.cross_entropy(logits[0], y[0]))
    torch.testing.assert_close(losses[1], F.cross_entropy(logits[1, :2], y[1, :2]))


def test_layerwise_distances_are_each_pipelines_own():
    nets = _nets(3)
    generator = torch.Generator().manual_seed(4)
    packed = PackedClassifier(nets)
    shapes = [p.shape for p in packed.params]
    real_k = [torch.randn(s, generator=generator) for s in shapes]
    syn_k = [torch.randn(s, generator=generator) for s in shapes]
    got = layerwise_distances(real_k, syn_k, 3)
    for p in range(3):
        def own(grads, p=p):
            return [g[p] if g.shape[0] == 3 else g.view(3, -1, *g.shape[1:])[p] for g in grads]
        torch.testing.assert_close(got[p], layerwise_distance(own(real_k), own(syn_k)), atol=1e-5, rtol=1e-6)


@pytest.mark.parametrize("method", ["dc", "dsa"])
def test_a_packed_pipeline_equals_it_alone_over_the_first_steps(digits_private, method):
    """Three pipelines (own private sets and model ids) as one pack: each set equals its single run to 1e-5
    after one outer iteration (measured: ~1e-7, float rounding)."""
    _, make_context = digits_private
    paradigm = distill_paradigm({"method": method, **TINY})
    privates = overlapping_privates(digits_private, 3)
    alone_contexts = [make_context(m) for m in (0, 5, 9)]
    alone = [paradigm.synthesize(p, c) for p, c in zip(privates, alone_contexts, strict=True)]
    packed_contexts = [make_context(m) for m in (0, 5, 9)]
    packed = synthesize_gradient_pack(paradigm, privates, packed_contexts)
    for one, many, c1, c2 in zip(alone, packed, alone_contexts, packed_contexts, strict=True):
        assert isinstance(many, LabeledSet)
        assert (one.x - many.x).abs().max() <= 1e-5 and torch.equal(one.y, many.y)
        assert c2.info["distill_final_loss"] == pytest.approx(c1.info["distill_final_loss"], rel=1e-4)
    assert not torch.equal(packed[0].x, packed[1].x)  # each pipeline is its own


@pytest.mark.slow
def test_over_longer_runs_a_packed_pipeline_tracks_its_own_run(digits_private):
    """Three outer iterations (rounding has grown, module docstring): each packed set is still far closer to
    its own single run than the single runs of two pipelines are to each other."""
    _, make_context = digits_private
    paradigm = distill_paradigm({"method": "dsa", **TINY, "iterations": 3, "outer_loop": 4})
    privates = overlapping_privates(digits_private, 2)
    alone = [paradigm.synthesize(p, make_context(m)) for p, m in zip(privates, (0, 5), strict=True)]
    packed = synthesize_gradient_pack(paradigm, privates, [make_context(m) for m in (0, 5)])
    apart = (alone[0].x - alone[1].x).abs().mean()
    for one, many in zip(alone, packed, strict=True):
        assert (one.x - many.x).abs().mean() < 0.01 * apart


def test_a_degenerate_private_set_fails_alone_in_its_pack(digits_private):
    """A private set without class 3 gets the single run's error; the pack's other pipelines equal their runs."""
    paradigm = distill_paradigm({"method": "dc", **TINY})
    check_a_missing_class_fails_alone(
        paradigm, digits_private, lambda privates, contexts: synthesize_gradient_pack(paradigm, privates, contexts)
    )


def test_a_small_class_in_one_pipeline_is_padded_not_shared(digits_private):
    """Pipeline 1 keeps 5 samples of class 3, fewer than batch_real: its real batch is padded in the pack, and
    every pipeline still equals its single run (1e-5)."""
    _, make_context = digits_private
    paradigm = distill_paradigm({"method": "dsa", **TINY})
    privates = overlapping_privates(digits_private, 3)
    keep = torch.ones(len(privates[1].y), dtype=torch.bool)
    keep[torch.nonzero(privates[1].y == 3).flatten()[5:]] = False
    privates[1] = LabeledSet(privates[1].x[keep], privates[1].y[keep])
    packed = synthesize_gradient_pack(paradigm, privates, [make_context(m) for m in (0, 1, 2)])
    for p in range(3):
        alone = paradigm.synthesize(privates[p], make_context(p))
        assert (alone.x - packed[p].x).abs().max() <= 1e-5


def test_only_the_convnet_is_packed_and_only_where_a_gpu_is():
    """On a CPU the loop is as fast and bit for bit (packed_gradient, "Speed"): packs run one by one there."""
    assert distill_paradigm({"method": "dc"}).packs_synthesis() == torch.cuda.is_available()
    assert distill_paradigm({"method": "dsa"}).packs_synthesis() == torch.cuda.is_available()
    assert not distill_paradigm({"method": "dsa", "embed_arch": "model"}).packs_synthesis()
