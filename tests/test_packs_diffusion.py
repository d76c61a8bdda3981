"""Packs of diffusion UNet pipelines (raypriv.synth.diffusion.packed) against the same pipelines run alone.

Ground truth is the single run (raypriv.synth.diffusion.unet).  vmap sums in
another order than the single network's kernels, so one training step and one
sampling step must equal the single ones to 1e-5; short whole runs agree to
the tolerance measured for them (the difference grows with the training
steps, see the packed module's docstring).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from raypriv.config import DatasetConfig
from raypriv.config import from_dict as config_from_dict
from raypriv.data import load_dataset
from raypriv.errors import RayprivError
from raypriv.pipeline import ShadowTrainer
from raypriv.run.format import synthetic_path
from raypriv.run.store import RunStore
from raypriv.split import make_audit_split
from raypriv.synth import LabeledSet, ShadowContext, make_paradigm
from raypriv.synth.diffusion import packed, unet
from raypriv.synth.diffusion.options import DiffusionOptions
from raypriv.synth.diffusion.packed import sample_images_pack, train_denoisers_pack, unet_pack_memory_bytes
from raypriv.synth.diffusion.unet import build_unet, sample_images, train_denoiser
from raypriv.training import Normalizer
from tests.conftest import tiny_config_dict

TINY = {"block_out_channels": [8, 16], "norm_num_groups": 4, "batch_size": 16, "sample_steps": 3, "n_per_class": 5}
GUIDED = {"label_dropout": 0.2, "guidance_scale": 2.0, "sampler": "ddpm"}


def _private(n: int, seed: int, classes=(0, 1, 2)) -> LabeledSet:
    """Class k is a bright bar in rows 2k..2k+1 of an 8x8 uint8 image, like digits."""
    g = torch.Generator().manual_seed(seed)
    y = torch.tensor(classes)[torch.arange(n) % len(classes)]
    x = torch.randint(0, 40, (n, 1, 8, 8), generator=g)
    for k in classes:
        x[y == k, :, 2 * k : 2 * k + 2, :] += 200
    return LabeledSet(x.clamp(0, 255).to(torch.uint8), y.long())


def _paradigm_and_contexts(tmp_path, options: dict):
    config = config_from_dict(tiny_config_dict(tmp_path, paradigms=["diffusion"], **{"paradigm_options.diffusion": options}))
    normalizer = Normalizer.fit(np.zeros((2, 1, 8, 8), dtype=np.float32))

    def context(model_id: int) -> ShadowContext:
        return ShadowContext(config, "diffusion", model_id, 3, (1, 8, 8), normalizer, torch.device("cpu"))

    return make_paradigm(config, "diffusion"), context


def _unets(options: DiffusionOptions, count: int, classes: int = 3) -> list[torch.nn.Module]:
    nets = []
    for p in range(count):
        torch.manual_seed(100 + p)
        nets.append(build_unet(options, 1, 8, 8, classes))
    return nets


def test_packed_gradients_are_each_networks_own():
    """One batch per pipeline through the vmapped UNets (GroupNorm, attention, class embedding): each network's
    loss and gradient as it computes them alone (1e-5 of the largest gradient; measured: about 1e-7)."""
    options = DiffusionOptions(**TINY)
    nets = _unets(options, 3, 4)
    g = torch.Generator().manual_seed(0)
    x, noise = torch.randn(3, 16, 1, 8, 8, generator=g), torch.randn(3, 16, 1, 8, 8, generator=g)
    t, y = torch.randint(0, 1000, (3, 16), generator=g), torch.randint(0, 4, (3, 16), generator=g)
    params, base = packed.stacked_unets(nets)
    losses = packed.denoising_losses(base)(params, x, t, y, noise)
    losses.sum().backward()
    for p, net in enumerate(nets):
        loss = torch.nn.functional.mse_loss(net(x[p], t[p], class_labels=y[p]).sample, noise[p])
        loss.backward()
        assert float(losses[p].detach()) == pytest.approx(float(loss.detach()), rel=1e-6)
        scale = max(float(q.grad.abs().max()) for q in net.parameters())
        for name, q in net.named_parameters():
            assert (params[name].grad[p] - q.grad).abs().max() <= 1e-5 * scale, name


@pytest.mark.parametrize("extra", [{}, GUIDED], ids=["ddim", "ddpm-guided"])
def test_one_packed_training_step_is_the_single_step(extra):
    """Three pipelines' first step (own data, own draws, label dropout) in one pack: the single run's loss and weights.

    Adam's first step moves each weight by lr * g / (|g| + 1e-8): for a gradient element near zero, a rounding
    difference of the gradient (1e-7 of its scale, see above) is a large part of it, so such a weight may move
    apart by a fraction of lr (measured: up to 5e-4, lr 2e-3).  Every weight whose single-run gradient is at
    least 1e-6 is checked to 1e-5; every weight to lr.
    """
    options = DiffusionOptions(**{**TINY, **extra, "train_steps": 1, "ema_decay": 0.0})
    null_class = 3 if extra else None
    classes = 4 if extra else 3
    privates = [_private(40 + 8 * p, p) for p in range(3)]
    x0s = [p.x.float() / 127.5 - 1.0 for p in privates]
    alone, alone_losses = _unets(options, 3, classes), []
    for p, net in enumerate(alone):
        alone_losses.append(train_denoiser(net, x0s[p], privates[p].y, options, null_class, torch.Generator().manual_seed(p)))
    params, _, losses = train_denoisers_pack(_unets(options, 3, classes), x0s, [p.y for p in privates], options, null_class,
                                             [torch.Generator().manual_seed(p) for p in range(3)])
    fresh = _unets(options, 3, classes)
    for p, net in enumerate(alone):
        assert losses[p] == pytest.approx(alone_losses[p], rel=1e-6)
        for name, weight in net.named_parameters():
            difference = (params[name][p] - weight).abs().detach()
            assert torch.where(weight.grad.abs() >= 1e-6, difference, 0.0).max() <= 1e-5, name
            assert difference.max() <= options.lr, name
        assert float((params["conv_in.weight"][p] - fresh[p].conv_in.weight.detach()).abs().max()) > 1e-3  # the step moved it


@pytest.mark.parametrize("extra", [{}, GUIDED], ids=["ddim", "ddpm-guided"])
def test_one_packed_sampling_step_is_the_single_step(monkeypatch, extra):
    """Sampling with one step, chunks of 8 (pipelines of 10, 21 and 16 images: padded last chunks), 3 rows of each
    pipeline per vmapped call: the single run's images."""
    monkeypatch.setattr(unet, "SAMPLE_CHUNK", 8)
    monkeypatch.setattr(packed, "SAMPLE_CHUNK", 8)
    monkeypatch.setattr(packed, "IMAGES_PER_CALL", 9)
    options = DiffusionOptions(**{**TINY, **extra, "sample_steps": 1})
    null_class = 3 if extra else None
    nets = _unets(options, 3, 4 if extra else 3)
    labels = [torch.arange(n) % 3 for n in (10, 21, 16)]
    alone = [sample_images(net, y, (1, 8, 8), options, null_class, torch.Generator().manual_seed(7 + p))
             for p, (net, y) in enumerate(zip(nets, labels, strict=True))]
    params, base = packed.stacked_unets(nets)
    together = sample_images_pack(base, params, labels, (1, 8, 8), options, null_class,
                                  [torch.Generator().manual_seed(7 + p) for p in range(3)])
    for one, many in zip(alone, together, strict=True):
        assert one.shape == many.shape
        assert (one - many).abs().max() <= 1e-5  # measured: about 1e-6
    assert not torch.allclose(together[0][:10], together[2][:10])  # each pipeline its own noise and network


@pytest.mark.slow
@pytest.mark.parametrize("extra", [{}, GUIDED], ids=["ddim", "ddpm-guided"])
def test_a_small_packed_pipeline_is_the_same_pipeline_alone(tmp_path, extra):
    """20 training steps, 3 sampling steps, private sets of 60, 70 and 14 images (one without class 2, one with its own
    batch size): every set matches its single run to 1e-3 (measured: at most 2e-4), labels and info equal."""
    options = {**TINY, **extra, "train_steps": 20}
    paradigm, context = _paradigm_and_contexts(tmp_path, options)
    assert paradigm.packs_synthesis()
    privates = [_private(60, 0), _private(70, 1, classes=(0, 1)), _private(14, 2)]
    alone_contexts = [context(m) for m in (0, 4, 9)]
    alone = [paradigm.synthesize(p, c) for p, c in zip(privates, alone_contexts, strict=True)]
    packed_contexts = [context(m) for m in (0, 4, 9)]
    together = paradigm.synthesize_pack(privates, packed_contexts)
    for one, many, c1, c2 in zip(alone, together, alone_contexts, packed_contexts, strict=True):
        assert isinstance(many, LabeledSet)
        assert torch.equal(one.y, many.y) and one.x.shape == many.x.shape
        assert (one.x - many.x).abs().max() <= 1e-3
        assert c1.info.keys() == c2.info.keys() and c1.info["n_per_class"] == c2.info["n_per_class"]
        assert c2.info["loss_first"] == pytest.approx(c1.info["loss_first"], rel=1e-5)
        assert c2.info["loss_last"] == pytest.approx(c1.info["loss_last"], rel=1e-3)
    assert (together[0].x - together[1].x).abs().max() > 0.1  # each pipeline is its own


def test_a_failing_private_set_fails_alone_in_its_pack(tmp_path):
    """An empty set and soft labels get the single run's error; the pack's other pipeline is unchanged."""
    paradigm, context = _paradigm_and_contexts(tmp_path, {**TINY, "train_steps": 3})
    privates = [_private(30, 0), LabeledSet(torch.zeros(0, 1, 8, 8, dtype=torch.uint8), torch.zeros(0, dtype=torch.long)),
                LabeledSet(_private(30, 1).x, torch.full((30, 3), 1 / 3))]
    together = paradigm.synthesize_pack(privates, [context(m) for m in range(3)])
    for p, message in ((1, "empty private set"), (2, "not soft labels")):
        assert isinstance(together[p], RayprivError) and message in str(together[p])
        with pytest.raises(RayprivError, match=message):
            paradigm.synthesize(privates[p], context(p))
    assert (paradigm.synthesize(privates[0], context(0)).x - together[0].x).abs().max() <= 1e-3


def test_a_degenerate_pipeline_in_a_worker_pack_fails_and_the_rest_is_stored(tmp_path, monkeypatch):
    """In a worker (execution.pack: 3), model 1's empty private set raises its error; models 0 and 2 are stored."""
    data = load_dataset(DatasetConfig())
    split = make_audit_split(data, 40, "mislabel", 8, 0)
    options = {**TINY, "train_steps": 3, "n_per_class": 3}
    raw = tiny_config_dict(tmp_path, paradigms=["diffusion"], execution={"pack": 3}, paradigm_options={"diffusion": options})
    trainer = ShadowTrainer(config_from_dict(raw).to_dict(), str(tmp_path), data, split)
    original = trainer.private_set

    def private_set(model_id: int) -> LabeledSet:
        private = original(model_id)
        return LabeledSet(private.x[:0], private.y[:0]) if model_id == 1 else private

    monkeypatch.setattr(trainer, "private_set", private_set)
    with pytest.raises(RayprivError, match="empty private set"):  # a built-in's error propagates, as alone
        trainer.synthesize_group("diffusion", [0, 1, 2])
    store = RunStore(str(tmp_path))
    assert store.exists(synthetic_path("diffusion", 0)) and store.exists(synthetic_path("diffusion", 2))
    assert not store.exists(synthetic_path("diffusion", 1))
    alone = make_paradigm(trainer.config, "diffusion").synthesize(original(2), trainer.context("diffusion", 2))
    assert np.abs(store.read_npz(synthetic_path("diffusion", 2))["x"] - alone.x.numpy()).max() <= 1e-3


def test_only_the_unet_sampled_from_noise_is_packed(tmp_path):
    def packs(options: dict) -> bool:
        return _paradigm_and_contexts(tmp_path, options)[0].packs_synthesis()

    assert packs({})
    assert packs(GUIDED)
    assert not packs({"generation": "img2img"})
    assert not packs({"pretrained_path": str(tmp_path)})
    assert not packs({"pipeline": "stable-diffusion", "pretrained_path": str(tmp_path)})


@pytest.mark.parametrize("options", [DiffusionOptions(), DiffusionOptions(**TINY),
                                     DiffusionOptions(block_out_channels=[32, 64, 64], layers_per_block=2)])
def test_the_memory_estimate_covers_the_state_of_a_pipeline(options):
    """The estimate holds at least the six float32 copies of the real network's parameters a packed pipeline keeps,
    and one training batch's input and its largest activation for each ResNet layer."""
    net = build_unet(options, 1, 8, 8, 11)
    parameters = sum(p.numel() for p in net.parameters())
    estimate = unet_pack_memory_bytes(options, (1, 8, 8), 10, 1300)
    activations = options.batch_size * 64 * max(options.block_out_channels) * (2 * options.layers_per_block + 1)
    assert estimate >= 4 * (6 * parameters + activations)
    assert unet_pack_memory_bytes(options, (1, 8, 8), 10, 8) < estimate  # a batch of 8 needs less
