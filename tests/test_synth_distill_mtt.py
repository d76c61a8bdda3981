"""``distill`` methods ``mtt`` and ``datm``: the matching objective, its optimisation, soft labels, options."""

import math
import os

import pytest
import torch
import torch.nn.functional as F

from raypriv.errors import RayprivError
from raypriv.synth import build_options
from raypriv.synth.distill.common import ConvNet
from raypriv.synth.distill.matching import Distill
from raypriv.synth.distill.options import DistillOptions
from raypriv.synth.distill.trajectories import (
    ParameterLayout,
    TrajectoryBuffer,
    matching_loss,
    start_range,
    train_expert,
    trajectory_matching,
)

SHAPE = (1, 8, 8)


# --------------------------------------------------------------- the objective


def test_matching_loss_matches_the_closed_form_on_a_two_weight_model():
    """One syn step on a linear model with 2 weights: θ1 = θ0 − α (softmax(θ0 s) − e_y) s."""
    net = torch.nn.Linear(1, 2, bias=False)  # logits (w0 s, w1 s): two parameters
    layout = ParameterLayout.of(net)
    theta0 = torch.tensor([0.3, -0.2], dtype=torch.float64)
    target = torch.tensor([0.9, -0.7], dtype=torch.float64)
    net = net.double()
    s, label, alpha = 1.5, 0, 0.4
    syn = torch.tensor([[s]], dtype=torch.float64, requires_grad=True)
    lr = torch.tensor(alpha, dtype=torch.float64, requires_grad=True)
    loss = matching_loss(net, layout, theta0, target, syn, torch.tensor([label]), lr, 1, None)

    logits = theta0.numpy() * s
    p = [math.exp(v) / sum(math.exp(u) for u in logits) for v in logits]
    grad = [(p[i] - (1.0 if i == label else 0.0)) * s for i in range(2)]
    theta1 = [theta0[i].item() - alpha * grad[i] for i in range(2)]
    num = sum((theta1[i] - target[i].item()) ** 2 for i in range(2))
    den = sum((theta0[i].item() - target[i].item()) ** 2 for i in range(2))
    assert float(loss.detach()) == pytest.approx(num / den, rel=1e-12)

    # d loss / d α = 2 (θ1 − θ*)·(−g) / den, and the image gradient agrees with finite differences.
    loss.backward()
    d_alpha = sum(2 * (theta1[i] - target[i].item()) * -grad[i] for i in range(2)) / den
    assert float(lr.grad) == pytest.approx(d_alpha, rel=1e-10)
    eps = 1e-6
    plus = matching_loss(net, layout, theta0, target, syn.detach() + eps, torch.tensor([label]), lr.detach(), 1, None)
    minus = matching_loss(net, layout, theta0, target, syn.detach() - eps, torch.tensor([label]), lr.detach(), 1, None)
    assert float(syn.grad) == pytest.approx(float((plus - minus).detach()) / (2 * eps), rel=1e-6)


def test_several_steps_follow_plain_sgd_on_the_minibatches():
    """N steps with batch_syn 1 equal N SGD steps, one sample each (the permutation order of the generator)."""
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2).double()
    layout = ParameterLayout.of(net)
    theta0, target = layout.flatten(net), layout.flatten(net) + 0.5
    syn, labels = torch.randn(2, 3, dtype=torch.float64), torch.tensor([0, 1])
    lr = torch.tensor(0.3, dtype=torch.float64)
    loss = matching_loss(net, layout, theta0, target, syn, labels, lr, 3, 1, (), torch.Generator().manual_seed(7))

    g = torch.Generator().manual_seed(7)
    order = list(torch.randperm(2, generator=g).split(1)) + list(torch.randperm(2, generator=g).split(1))
    pops = [order[1], order[0], order[3]]  # batches are popped from the end of each permutation
    theta = theta0.clone()
    for index in pops:
        w, b = theta[:6].view(2, 3).requires_grad_(True), theta[6:].requires_grad_(True)
        step = F.cross_entropy(syn[index] @ w.T + b, labels[index])
        gw, gb = torch.autograd.grad(step, (w, b))
        theta = theta - lr * torch.cat([gw.flatten(), gb])
    expected = (theta - target).pow(2).sum() / (theta0 - target).pow(2).sum()
    torch.testing.assert_close(loss.detach(), expected)


def _toy(num_classes: int = 3, per_class: int = 30, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    templates = torch.randn(num_classes, *SHAPE, generator=g)
    x = torch.cat([templates[c] + 0.7 * torch.randn(per_class, *SHAPE, generator=g) for c in range(num_classes)])
    return x, torch.arange(num_classes).repeat_interleave(per_class)


def _convnet(seed: int) -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ConvNet(SHAPE, 3, width=8)


def test_mtt_optimisation_lowers_the_matching_loss():
    x, y = _toy()
    options = DistillOptions(
        method="mtt", ipc=2, iterations=40, lr_image=100.0, syn_steps=5, n_experts=1, expert_train_epochs=4,
        expert_epochs=2, max_start_epoch=0, dsa_strategy="none", expert_batch=16, lr_teacher=0.05,
    )
    student = _convnet(0)
    layout = ParameterLayout.of(student)
    with TrajectoryBuffer(1, 5, sum(layout.sizes)) as buffer:
        buffer.append(train_expert(_convnet(1), layout, x, y, 4, 0.05, 16, (), torch.Generator().manual_seed(2)))
        trajectory = buffer.get(0, x.device)
        assert trajectory.shape == (5, sum(layout.sizes))  # the start and every epoch
        syn = torch.randn(6, *SHAPE, generator=torch.Generator().manual_seed(3))
        labels = torch.arange(3).repeat_interleave(2)
        lr = torch.tensor(0.05)

        def loss_of(images):
            return float(matching_loss(student, layout, trajectory[0], trajectory[2], images, labels, lr, 5, None))

        out, logits, learned_lr, losses = trajectory_matching(
            syn, labels, None, buffer, student, layout, options, torch.Generator().manual_seed(4), None
        )
    assert logits is None and len(losses) == 40 and learned_lr > 0
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5, losses
    assert loss_of(out) < 0.7 * loss_of(syn)


def test_trajectory_buffer_spills_to_a_private_temporary_directory():
    buffer = TrajectoryBuffer(2, 3, 4, limit=0)
    assert buffer.on_disk and os.path.isdir(buffer.directory)
    first, second = torch.randn(3, 4), torch.randn(3, 4)
    buffer.append(first)
    buffer.append(second)
    torch.testing.assert_close(buffer.get(1, torch.device("cpu")), second)
    torch.testing.assert_close(buffer.get(0, torch.device("cpu")), first)
    directory = buffer.directory
    buffer.close()
    assert not os.path.exists(directory)
    assert not TrajectoryBuffer(2, 3, 4).on_disk  # small trajectories stay in memory


# ------------------------------------------------------------------ options


def test_trajectory_options_are_checked():
    with pytest.raises(RayprivError, match=r"expert_epochs=3 with max_start_epoch=8.*expert_train_epochs=10.*lower"):
        build_options("distill", {"method": "mtt", "max_start_epoch": 8, "expert_epochs": 3})
    with pytest.raises(RayprivError, match="paradigm_options.distill.syn_steps"):
        build_options("distill", {"method": "datm", "syn_steps": 0})
    with pytest.raises(RayprivError, match="initial_max_start_epoch"):
        build_options("distill", {"method": "datm", "initial_max_start_epoch": 7, "max_start_epoch": 6})
    assert build_options("distill", {"method": "dm", "max_start_epoch": 30}).method == "dm"  # unused: not checked
    mtt = build_options("distill", {"method": "mtt"})
    assert mtt.iterations == 60 and mtt.lr_image == 100.0
    assert start_range(mtt, 0) == start_range(mtt, 59) == (0, 6)


def test_datm_start_range_rises_at_the_upper_end_as_the_authors_code():
    options = build_options("distill", {"method": "datm", "iterations": 100, "max_start_epoch": 6})
    assert (options.initial_max_start_epoch, options.final_min_start_epoch) == (3, 0)  # the lower end stays
    ranges = [start_range(options, i) for i in range(100)]
    assert ranges[0] == (0, 3) and ranges[-1][1] >= 5 and start_range(options, 100) == (0, 6)
    # Neighbours: ranges[1:] is one shorter, so the last range pairs with nothing.
    assert all(a[0] <= b[0] and a[1] <= b[1] for a, b in zip(ranges, ranges[1:], strict=False))
    # The authors' Upper_Bound = current + int((max - current) * it / expansion_end), drawn below it (exclusive):
    # with their CIFAR-10 ipc-10 values (10, 20, 1000) the inclusive upper end at iteration 250 is 10 + 2 - 1.
    cifar = build_options("distill", {"method": "datm", "expert_train_epochs": 50, "initial_max_start_epoch": 9,
                                      "max_start_epoch": 19, "expansion_iterations": 1000, "iterations": 10000})
    assert start_range(cifar, 250) == (0, 11) and start_range(cifar, 999) == (0, 18)
    assert start_range(cifar, 1000) == start_range(cifar, 9999) == (0, 19)
    # The rising lower end of the brief's reading stays available.
    rising = build_options("distill", {"method": "datm", "iterations": 100, "max_start_epoch": 6, "final_min_start_epoch": 1})
    assert start_range(rising, 100) == (1, 6)


# ------------------------------------------------------- the paradigm, digits




CHEAP = {"ipc": 2, "embed_width": 8, "n_experts": 2, "expert_train_epochs": 3, "expert_epochs": 1,
         "max_start_epoch": 2, "syn_steps": 3}


def test_mtt_synthetic_set_is_hard_labelled_in_range_and_reproducible(digits_private):
    private, context = digits_private
    paradigm = Distill(DistillOptions(method="mtt", iterations=4, **CHEAP))
    info_context = context(0)
    first = paradigm.synthesize(private, info_context)
    assert first.x.shape == (20, *SHAPE) and first.x.dtype == torch.float32
    assert 0.0 <= float(first.x.min()) and float(first.x.max()) <= 1.0
    assert torch.equal(first.y, torch.arange(10).repeat_interleave(2))
    assert info_context.info["distill_learned_lr"] > 0
    assert torch.equal(paradigm.synthesize(private, context(0)).x, first.x)
    assert not torch.equal(paradigm.synthesize(private, context(1)).x, first.x)


def test_datm_learns_soft_labels_away_from_the_experts_logits(digits_private):
    private, context = digits_private
    # An expert trained well enough to classify most private samples (8 epochs, 10 steps each).
    options = {**CHEAP, "method": "datm", "lr_label": 10.0, "lr_teacher": 0.1, "expert_batch": 32,
               "n_experts": 1, "expert_train_epochs": 8}
    start = Distill(DistillOptions(iterations=0, **options)).synthesize(private, context())
    end_context = context()
    end = Distill(DistillOptions(iterations=15, **options)).synthesize(private, end_context)
    for labels in (start.y, end.y):
        assert labels.shape == (20, 10) and labels.dtype == torch.float32
        torch.testing.assert_close(labels.sum(1), torch.ones(20))
    # Initialised from an expert that classifies its (correctly classified) init images right.
    assert torch.equal(start.y.argmax(1), torch.arange(10).repeat_interleave(2))
    assert end_context.info["distill_label_init_agreement"] == 1.0
    assert float((end.y - start.y).abs().sum(1).mean()) > 1e-3
    # The init images are private samples the expert classifies correctly.
    pixels = private.x.float() / 255
    for image, label in zip(start.x, start.y.argmax(1), strict=True):
        assert float((pixels[private.y == label] - image).abs().flatten(1).amax(1).min()) < 1e-5
