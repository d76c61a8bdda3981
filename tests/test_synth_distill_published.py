"""``mtt`` / ``datm`` as published: FTD experts, DATM's label init and loss threshold, the papers' evaluation.

Each piece is checked against a small case computed by hand (or by an
independent loop) from the authors' code as read (GeorgeCazenavette/
mtt-distillation, NUS-HPC-AI-Lab/DATM).
"""

import math

import pytest
import torch
import torch.nn.functional as F

import raypriv.synth.distill.trajectories as trajectories
from raypriv.config import from_dict
from raypriv.ensemble import engine_for
from raypriv.errors import ModelFailed, RayprivError
from raypriv.run.fingerprints import recipe_hash
from raypriv.synth import build_options
from raypriv.synth.distill.common import published_lr, train_published
from raypriv.synth.distill.matching import Distill
from raypriv.synth.distill.options import DistillOptions
from raypriv.synth.distill.trajectories import (
    ParameterLayout,
    SharpnessAware,
    TrajectoryBuffer,
    average_correct_logits,
    train_expert,
    trajectory_matching,
)
from raypriv.training import Normalizer
from tests.conftest import tiny_config_dict


def softmax(values: list[float]) -> list[float]:
    exps = [math.exp(v) for v in values]
    return [e / sum(exps) for e in exps]


def linear_ce_grad(w: list[float], s: float, label: int) -> list[float]:
    """∇w CE(softmax(w s), label) for logits (w0 s, w1 s): (softmax − e_label) s."""
    p = softmax([wi * s for wi in w])
    return [(p[i] - (1.0 if i == label else 0.0)) * s for i in range(len(w))]


def two_weight_net(w: list[float]) -> torch.nn.Module:
    net = torch.nn.Linear(1, 2, bias=False).double()
    with torch.no_grad():
        net.weight.copy_(torch.tensor(w, dtype=torch.float64).view(2, 1))
    return net


# ----------------------------------------------------------------- FTD experts


@pytest.mark.parametrize("rho, alpha", [(2.0, 0.4), (0.5, 0.0)])
def test_one_ftd_step_equals_the_gsam_formula(rho, alpha):
    """One expert step on a two-weight linear model: w1 = w0 − lr d, with GSAM's adaptive d worked out by hand."""
    w0, s, label, lr = [0.3, -0.2], 1.5, 0, 0.1
    g = linear_ce_grad(w0, s, label)
    norm = math.sqrt(sum((abs(w) * gi) ** 2 for w, gi in zip(w0, g, strict=True)))
    perturbed_w = [w + rho * w * w * gi / norm for w, gi in zip(w0, g, strict=True)]  # ρ w² g / ‖|w| g‖
    gp = linear_ce_grad(perturbed_w, s, label)
    g_norm, gp_norm = math.hypot(*g), math.hypot(*gp)
    cosine = sum(a * b for a, b in zip(g, gp, strict=True)) / (g_norm * gp_norm)
    d = [b - alpha * (a - cosine * g_norm * b / gp_norm) for a, b in zip(g, gp, strict=True)]
    expected = [w - lr * di for w, di in zip(w0, d, strict=True)]

    net = two_weight_net(w0)
    layout = ParameterLayout.of(net)
    x, y = torch.tensor([[s]], dtype=torch.float64), torch.tensor([label])
    trajectory = train_expert(net, layout, x, y, 1, lr, 1, (), torch.Generator().manual_seed(0), SharpnessAware(rho, alpha))
    assert trajectory[0].tolist() == pytest.approx(w0, abs=0)
    assert trajectory[1].tolist() == pytest.approx(expected, rel=1e-12)
    # Plain SGD (MTT's experts) takes w0 − lr g instead: a different point.
    sgd = train_expert(two_weight_net(w0), layout, x, y, 1, lr, 1, (), torch.Generator().manual_seed(0))
    assert sgd[1].tolist() == pytest.approx([w - lr * gi for w, gi in zip(w0, g, strict=True)], rel=1e-12)
    assert abs(sgd[1][0].item() - expected[0]) > 1e-4


# ------------------------------------------------------ DATM's soft-label init


def test_soft_labels_average_the_experts_that_classify_correctly():
    logits = torch.tensor(
        [  # expert, image, class
            [[3.0, 1.0, 0.0], [2.0, 1.0, 0.0], [0.0, 5.0, 1.0]],
            [[1.0, 2.0, 0.0], [0.0, 4.0, 1.0], [1.0, 0.0, 0.0]],
            [[5.0, 0.0, 1.0], [1.0, 0.0, 3.0], [0.0, 2.0, 0.5]],
        ]
    )
    labels = torch.tensor([0, 1, 2])
    # Image 0 (class 0): experts 0 and 2 are right; image 1: expert 1 only; image 2: none (the mean of all three).
    expected = torch.tensor([[4.0, 0.5, 0.5], [0.0, 4.0, 1.0], [1 / 3, 7 / 3, 0.5]])
    torch.testing.assert_close(average_correct_logits(logits, labels), expected)


# ------------------------------------------------------ DATM's loss threshold


def test_an_iteration_above_the_loss_threshold_changes_nothing():
    """One student step on the two-weight model: its loss is known in closed form; a threshold below it skips."""
    theta0, target, s, label, alpha = [0.3, -0.2], [0.9, -0.7], 1.5, 0, 0.01
    net = two_weight_net(theta0)
    layout = ParameterLayout.of(net)
    syn, labels = torch.tensor([[s]], dtype=torch.float64), torch.tensor([label])
    logits = torch.tensor([[0.5, -0.5]], dtype=torch.float64)
    common = dict(method="datm", ipc=1, iterations=2, n_experts=1, expert_train_epochs=1, expert_epochs=1,
                  max_start_epoch=0, syn_steps=1, lr_teacher=alpha, dsa_strategy="none", lr_image=1.0, lr_label=1.0)
    with TrajectoryBuffer(1, 2, 2) as buffer:
        buffer.append(torch.tensor([theta0, target], dtype=torch.float64))

        def run(threshold):
            options = DistillOptions(**common, loss_threshold=threshold)
            return trajectory_matching(syn, labels, logits, buffer, net, layout, options, torch.Generator().manual_seed(0), None)

        # The student's target is softmax(logits): θ1 = θ0 − α (softmax(θ0 s) − q) s.
        q = softmax([0.5, -0.5])
        p = softmax([t * s for t in theta0])
        g_soft = [(p[i] - q[i]) * s for i in range(2)]
        theta1 = [t - alpha * gi for t, gi in zip(theta0, g_soft, strict=True)]
        loss = sum((a - b) ** 2 for a, b in zip(theta1, target, strict=True)) / sum(
            (a - b) ** 2 for a, b in zip(theta0, target, strict=True)
        )
        skipped = run(loss * 0.999)
        assert skipped[3][0] == pytest.approx(loss, rel=1e-6)
        assert torch.equal(skipped[0], syn) and torch.equal(skipped[1], logits) and skipped[2] == pytest.approx(alpha)
        stepped = run(loss * 1.001)
        assert not torch.equal(stepped[0], syn) and not torch.equal(stepped[1], logits) and stepped[2] != pytest.approx(alpha)
        assert not torch.equal(run(None)[0], syn)  # no threshold: always a step
    assert DistillOptions(method="datm").loss_threshold == 1.0 and DistillOptions(method="mtt").loss_threshold is None


# -------------------------------------------------------- the papers' evaluation


def test_the_published_schedule_decays_after_epoch_half_plus_one():
    # The authors: lr_schedule = [Epoch // 2 + 1], lr *= 0.1 after that epoch's training (epochs counted from 0).
    assert [published_lr(1.0, e, 10) for e in range(10)] == [1.0] * 7 + [0.1] * 3
    assert [published_lr(1.0, e, 3) for e in range(3)] == [1.0] * 3


@pytest.mark.parametrize("soft", [False, True])
def test_train_published_is_sgd_with_momentum_weight_decay_and_a_fresh_optimiser_at_the_decay(soft):
    """An independent loop: v ← 0.9 v + (g + 5e-4 w), w ← w − lr v, with v reset to 0 when lr drops (epoch 4 of 6)."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(5, 1, 2, 2, generator=g)
    y = torch.softmax(torch.randn(5, 3, generator=g), 1) if soft else torch.tensor([0, 1, 2, 1, 0])
    normalizer = Normalizer(torch.zeros(1, 1, 1, 1), torch.ones(1, 1, 1, 1))

    def model() -> torch.nn.Module:
        torch.manual_seed(3)
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))

    lr, epochs = 0.5, 6
    trained = train_published(model(), x, y, lr, epochs, (), normalizer, (torch.Generator(), torch.Generator()))

    params = [p.detach().clone().requires_grad_(True) for p in model().parameters()]
    velocity = [torch.zeros_like(p) for p in params]
    for epoch in range(epochs):
        rate = lr if epoch <= epochs // 2 + 1 else lr * 0.1
        if epoch == epochs // 2 + 2:
            velocity = [torch.zeros_like(p) for p in params]
        logits = x.flatten(1) @ params[0].T + params[1]  # one batch: 5 < 256
        grads = torch.autograd.grad(F.cross_entropy(logits, y), params)
        with torch.no_grad():
            for p, v, grad in zip(params, velocity, grads, strict=True):
                v.mul_(0.9).add_(grad + 5e-4 * p)
                p.sub_(rate * v)
    for got, want in zip(trained.parameters(), params, strict=True):
        torch.testing.assert_close(got.detach(), want.detach(), rtol=1e-5, atol=1e-6)


def test_published_is_the_default_for_trajectory_methods_only(tmp_path):
    assert build_options("distill", {"method": "mtt"}).eval_recipe == "published"
    assert build_options("distill", {"method": "datm"}).eval_recipe == "published"
    assert build_options("distill", {"method": "dm"}).eval_recipe == "config"
    with pytest.raises(RayprivError, match="eval_recipe='published' is not implemented for method 'dm'.*eval_recipe: config"):
        build_options("distill", {"method": "dm", "eval_recipe": "published"})

    def config(eval_recipe):
        raw = tiny_config_dict(tmp_path, paradigms=["distill"], train={"engine": "ensemble"})
        raw["paradigm_options"] = {"distill": {"method": "mtt", "eval_recipe": eval_recipe}}
        return from_dict(raw)

    published, own = config("published"), config("config")
    assert Distill(build_options("distill", {"method": "mtt"})).training_recipe(published) is None
    # No shared recipe: the ensemble engine (one recipe for a group) gives way to the loop.
    assert engine_for(published, Distill(build_options("distill", {"method": "mtt"})), torch.device("cpu")) == "loop"
    own_paradigm = Distill(build_options("distill", {"method": "mtt", "eval_recipe": "config"}))
    assert own_paradigm.training_recipe(own).epochs == 300
    assert recipe_hash(published, "distill") != recipe_hash(own, "distill")


def test_train_uses_the_learned_step_size_and_the_methods_dsa(digits_private, monkeypatch):
    private, context = digits_private
    paradigm = Distill(DistillOptions(method="mtt", ipc=1, embed_width=8, n_experts=1, expert_train_epochs=2,
                                      expert_epochs=1, max_start_epoch=1, syn_steps=2, iterations=2, train_epochs=7))
    shadow = context(0)
    training_set = paradigm.synthesize(private, shadow)
    seen = {}

    def spy(model, x, y, lr, epochs, strategy, *args):
        seen.update(lr=lr, epochs=epochs, strategy=strategy, n=len(x))
        return model

    monkeypatch.setattr(trajectories, "train_published", spy)
    paradigm.train(training_set, shadow)
    assert seen == {"lr": shadow.info["distill_learned_lr"], "epochs": 7, "n": 10,
                    "strategy": ("color", "crop", "cutout", "flip", "scale", "rotate")}
    shadow.info["distill_learned_lr"] = float("nan")
    with pytest.raises(ModelFailed, match=r"learned step size is nan.*eval_recipe: config"):
        paradigm.train(training_set, shadow)


def test_ftd_experts_reach_the_synthesis(digits_private):
    private, context = digits_private
    tiny = dict(method="mtt", ipc=1, embed_width=8, n_experts=1, expert_train_epochs=2, expert_epochs=1,
                max_start_epoch=1, syn_steps=2, iterations=2, dsa_strategy="none")
    sgd = Distill(DistillOptions(**tiny)).synthesize(private, context(0))
    ftd = Distill(DistillOptions(**tiny, experts="ftd")).synthesize(private, context(0))
    assert not torch.equal(sgd.x, ftd.x)  # same seeds, same initial images: only the experts differ
    assert torch.equal(Distill(DistillOptions(**tiny)).synthesize(private, context(0)).x, sgd.x)
