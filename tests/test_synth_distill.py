"""The ``distill`` paradigm: DSA augmentation, DM and DC objectives, the synthetic set, one audit."""

import numpy as np
import pytest
import torch

from raypriv.config import from_dict as config_from_dict
from raypriv.driver import run_audit
from raypriv.errors import RayprivError
from raypriv.run.format import synthetic_path
from raypriv.run.store import RunStore
from raypriv.synth import build_options
from raypriv.synth.distill.common import ConvNet, DSAParams, RealSampler, apply_dsa, sample_dsa, siamese_augment
from raypriv.synth.distill.matching import (
    Distill,
    dc_loss,
    distribution_matching,
    dm_loss,
    gradient_matching,
    layerwise_distance,
)
from raypriv.synth.distill.options import DSA_TRANSFORMS, DistillOptions
from tests.conftest import tiny_config_dict

SHAPE = (1, 8, 8)




def network_factory(num_classes: int = 3, seed: int = 0):
    """Freshly initialised narrow ConvNets, one after another, reproducible from ``seed``."""
    state = {"next": seed}

    def new_network() -> torch.nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(state["next"])
            state["next"] += 1
            return ConvNet(SHAPE, num_classes, width=8)

    return new_network


def toy_classes(num_classes: int = 3, per_class: int = 40, seed: int = 0) -> list[torch.Tensor]:
    """Normalised-space images: each class a distinct random template plus noise."""
    g = torch.Generator().manual_seed(seed)
    templates = torch.randn(num_classes, *SHAPE, generator=g)
    return [templates[c] + 0.5 * torch.randn(per_class, *SHAPE, generator=g) for c in range(num_classes)]


# ------------------------------------------------------------------- DSA


@pytest.mark.parametrize("transform", DSA_TRANSFORMS)
def test_dsa_is_siamese_and_differentiable(transform):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 3, 8, 8, requires_grad=True)
    params = sample_dsa((transform,), 6, (8, 8), g)
    out = apply_dsa(x, params)
    assert out.shape == x.shape
    # The same draw gives the same transform of identical batches, and row i of a
    # shorter batch gets row i's transform (a real and a synthetic batch differ in size).
    torch.testing.assert_close(apply_dsa(x.detach().clone(), params), out.detach())
    torch.testing.assert_close(apply_dsa(x[:2].detach(), params), out[:2].detach())
    assert not torch.allclose(out, x)
    weights = torch.randn_like(out)
    (out * weights).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0

    real, syn = siamese_augment(x.detach(), x.detach().clone(), DSA_TRANSFORMS, torch.Generator().manual_seed(2))
    torch.testing.assert_close(real, syn)


def test_dsa_crop_and_cutout_move_the_right_pixels():
    x = torch.arange(64.0).reshape(1, 1, 8, 8)
    down = apply_dsa(x, DSAParams("crop", {"dy": torch.tensor([1]), "dx": torch.tensor([0])}))
    torch.testing.assert_close(down[0, 0, 1:], x[0, 0, :-1])  # shifted one row down
    assert (down[0, 0, 0] == 0).all()  # zero padding enters at the top
    cut = apply_dsa(x, DSAParams("cutout", {"top": torch.tensor([-2]), "left": torch.tensor([6])}))
    assert (cut[0, 0, :2, 6:] == 0).all() and int((cut == 0).sum()) == 4 + 1  # the clipped 2x2 square (+ pixel 0)


# --------------------------------------------------------- the objectives


def test_layerwise_distance_is_one_minus_cosine_per_output_unit():
    g = torch.randn(4, 3, 3, 3)
    bias = torch.randn(4)
    assert float(layerwise_distance([g, bias], [2 * g, -bias])) == pytest.approx(0.0, abs=1e-5)  # biases ignored
    assert float(layerwise_distance([g], [-g])) == pytest.approx(8.0, abs=1e-4)  # 4 rows x (1 - (-1))


def test_dm_decreases_the_feature_mean_discrepancy_on_fixed_networks():
    real = toy_classes()
    options = DistillOptions(method="dm", ipc=2, init="noise", iterations=60, batch_real=20, lr_image=1.0)
    syn = torch.randn(3 * 2, *SHAPE, generator=torch.Generator().manual_seed(3))
    new_judge = network_factory(seed=100)
    judges = [new_judge() for _ in range(4)]  # fixed networks and batches, not used in the optimisation

    def discrepancy(images):
        with torch.no_grad():
            return sum(float(dm_loss(net, real, list(images.split(2)))) for net in judges) / len(judges)

    sampler = RealSampler(real, torch.Generator().manual_seed(4))
    out, _ = distribution_matching(syn, 2, sampler, network_factory(), options, torch.Generator().manual_seed(5))
    before, after = discrepancy(syn), discrepancy(out)
    assert after < 0.6 * before, (before, after)  # about 0.4; unchanged images give 1


@pytest.mark.parametrize("method", ["dc", "dsa"])
def test_gradient_matching_decreases_the_distance_on_fixed_networks(method):
    real = toy_classes()
    options = DistillOptions(method=method, ipc=2, iterations=4, outer_loop=5, inner_loop=2, batch_real=20)
    syn = torch.randn(3 * 2, *SHAPE, generator=torch.Generator().manual_seed(3))
    new_judge = network_factory(seed=100)
    judges = [new_judge() for _ in range(4)]  # measured without augmentation

    def distance(images):
        return sum(float(dc_loss(net, real, list(images.split(2)), create_graph=False)) for net in judges) / len(judges)

    sampler = RealSampler(real, torch.Generator().manual_seed(4))
    out, _ = gradient_matching(syn, 2, sampler, network_factory(), options, torch.Generator().manual_seed(5))
    before, after = distance(syn), distance(out)
    assert after < 0.85 * before, (before, after)  # about 0.7; unchanged images give 1


# ------------------------------------------------------ the synthetic set


@pytest.mark.parametrize(
    "options",
    [
        {"method": "dm", "iterations": 3},
        {"method": "dc", "iterations": 1, "outer_loop": 2, "inner_loop": 1, "batch_real": 8},
        {"method": "dsa", "iterations": 1, "outer_loop": 2, "inner_loop": 1, "batch_real": 8, "init": "noise"},
        {"method": "dm", "iterations": 2, "embed_arch": "model"},  # cnn_small with BatchNorm
        {"method": "dsa", "iterations": 1, "outer_loop": 2, "inner_loop": 1, "batch_real": 8, "embed_arch": "model"},
    ],
)
def test_synthetic_set_is_ipc_per_class_in_pixel_range_and_reproducible(digits_private, options):
    private, context = digits_private
    paradigm = Distill(DistillOptions(ipc=3, embed_width=8, **options))
    first = paradigm.synthesize(private, context(0))
    assert first.x.shape == (30, *SHAPE) and first.x.dtype == torch.float32
    assert 0.0 <= float(first.x.min()) and float(first.x.max()) <= 1.0
    assert first.y.dtype == torch.int64 and torch.equal(first.y, torch.arange(10).repeat_interleave(3))
    again = paradigm.synthesize(private, context(0))
    assert torch.equal(first.x, again.x)  # same (seed, model id): the same set
    assert not torch.equal(first.x, paradigm.synthesize(private, context(1)).x)


def test_initialisations_start_from_the_documented_images(digits_private, tmp_path):
    private, context = digits_private
    pixels = private.x.float() / 255
    real = Distill(DistillOptions(ipc=2, iterations=0)).synthesize(private, context())
    for image, label in zip(real.x, real.y, strict=True):  # init real: private samples of the class (the known leak)
        distances = (pixels[private.y == label] - image).abs().flatten(1).amax(1)
        assert float(distances.min()) < 1e-5

    public_x = np.random.default_rng(0).integers(0, 256, (40, *SHAPE), dtype=np.uint8)
    public_y = np.repeat(np.arange(10), 4)
    np.savez(tmp_path / "public.npz", x_train=public_x, y_train=public_y)
    public = Distill(DistillOptions(ipc=2, iterations=0, init="public", public_path=str(tmp_path / "public.npz")))
    out = public.synthesize(private, context())
    candidates = torch.tensor(public_x).float() / 255
    for image, label in zip(out.x, out.y, strict=True):
        distances = (candidates[torch.tensor(public_y) == label] - image).abs().flatten(1).amax(1)
        assert float(distances.min()) < 1e-5


def test_bad_options_and_inputs_are_refused(digits_private, tmp_path):
    with pytest.raises(RayprivError, match="init='public'.*public_path"):
        build_options("distill", {"init": "public"})
    with pytest.raises(RayprivError, match="dsa_strategy"):
        build_options("distill", {"dsa_strategy": "color_warp"})
    with pytest.raises(RayprivError, match="ipc"):
        build_options("distill", {"ipc": 0})
    assert build_options("distill", {"method": "dc"}).iterations == 10  # method defaults resolved for the hash

    private, context = digits_private
    missing = Distill(DistillOptions(init="public", public_path=str(tmp_path / "nope.npz")))
    with pytest.raises(RayprivError, match="does not exist"):
        missing.synthesize(private, context())
    counts = torch.bincount(private.y, minlength=10)
    too_many = Distill(DistillOptions(ipc=int(counts.min()) + 1, iterations=0))
    with pytest.raises(RayprivError, match="ipc=.*only .* samples of class"):
        too_many.synthesize(private, context())


# ------------------------------------------------------------- end to end


@pytest.mark.slow
def test_distill_audit_end_to_end(tmp_path):
    # From noise, so what the audited model learns came through distribution matching.
    options = {"init": "noise", "iterations": 30, "lr_image": 5.0, "embed_width": 16, "train_epochs": 40}
    raw = tiny_config_dict(tmp_path / "run", paradigms=["distill"], attacks=["loss"])
    raw["paradigm_options"] = {"distill": options}
    config = config_from_dict(raw)
    result = run_audit(config, use_ray=False, show_progress=False)
    assert len(result.models) == 8
    stored = RunStore(str(tmp_path / "run")).read_npz(synthetic_path("distill", 0))
    assert stored["x"].shape == (100, *SHAPE) and stored["x"].dtype == np.float32
    assert 0.0 <= stored["x"].min() and stored["x"].max() <= 1.0
    np.testing.assert_array_equal(stored["y"], np.repeat(np.arange(10), 10))
    assert result.models.synthetic_size.eq(100).all()
    # Noise left as it is trains a model at chance (0.1); 30 DM steps reach about 0.4.
    assert result.models.test_acc.mean() > 0.25, result.models.test_acc.tolist()
