"""The ``diffusion`` paradigm: DDPM training, DDIM/DDPM sampling, pretrained loading, seeding."""

import numpy as np
import pytest
import torch

from raypriv.config import from_dict as config_from_dict
from raypriv.driver import run_audit
from raypriv.errors import RayprivError
from raypriv.synth import LabeledSet, ShadowContext, build_options, make_paradigm
from raypriv.synth.diffusion.options import DiffusionOptions
from raypriv.synth.diffusion.unet import build_unet, sample_images, train_denoiser
from raypriv.training import Normalizer
from tests.conftest import tiny_config_dict

TINY = {"block_out_channels": [8, 16], "norm_num_groups": 4, "batch_size": 32, "sample_steps": 4}


def _context(tmp_path, options: dict, model_id: int = 0, shape=(1, 8, 8), num_classes: int = 3) -> ShadowContext:
    config = config_from_dict(
        tiny_config_dict(tmp_path / "run", paradigms=["diffusion"], **{"paradigm_options.diffusion": options})
    )
    x = np.zeros((2, *shape), dtype=np.float32)
    normalizer = Normalizer(torch.zeros(1), torch.ones(1)) if len(shape) == 1 else Normalizer.fit(x)
    return ShadowContext(config, "diffusion", model_id, num_classes, shape, normalizer, torch.device("cpu"))


def _private(n: int = 60, num_classes: int = 3, seed: int = 0) -> LabeledSet:
    """Class k is a bright bar in rows 2k..2k+1 of an 8x8 image: easy structure, uint8 like digits."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % num_classes
    x = torch.randint(0, 40, (n, 1, 8, 8), generator=g)
    for k in range(num_classes):
        x[y == k, :, 2 * k : 2 * k + 2, :] += 200
    return LabeledSet(x.clamp(0, 255).to(torch.uint8), y.long())


def _synthesize(tmp_path, options: dict, private: LabeledSet, model_id: int = 0) -> tuple[LabeledSet, ShadowContext]:
    context = _context(tmp_path, options, model_id)
    paradigm = make_paradigm(context.config, "diffusion")
    return paradigm.synthesize(private, context), context


def test_training_loss_falls():
    torch.manual_seed(0)
    options = DiffusionOptions(**{**TINY, "train_steps": 100, "lr": 3e-3, "ema_decay": 0.0})
    unet = build_unet(options, 1, 8, 8, num_class_embeds=3)
    private = _private()
    x0 = private.x.float() / 127.5 - 1.0
    losses = train_denoiser(unet, x0, private.y, options, None, torch.Generator().manual_seed(1))
    assert len(losses) == 100
    first, last = np.mean(losses[:10]), np.mean(losses[-10:])
    # The untrained U-Net's noise prediction is poor; learning the data's structure cuts the
    # error several-fold even on this tiny budget (a broken forward process or target would not).
    assert last < 0.5 * first, (first, last)


def test_sample_shape_range_and_balanced_labels(tmp_path):
    private = _private()
    synthetic, context = _synthesize(tmp_path, {**TINY, "train_steps": 5, "n_per_class": 7}, private)
    assert synthetic.x.shape == (21, 1, 8, 8) and synthetic.x.dtype == torch.float32
    assert 0.0 <= synthetic.x.min() and synthetic.x.max() <= 1.0
    assert synthetic.x.std() > 0  # not a constant image
    assert synthetic.y.dtype == torch.int64
    assert torch.bincount(synthetic.y, minlength=3).tolist() == [7, 7, 7]
    assert context.info["n_per_class"] == 7

    # Default size: about the private set (60 / 3 classes), or the given fraction of it.
    synthetic, _ = _synthesize(tmp_path, {**TINY, "train_steps": 1, "size_fraction": 0.5, "sampler": "ddpm"}, private)
    assert torch.bincount(synthetic.y).tolist() == [10, 10, 10]


def test_samples_follow_their_class():
    """Trained a little, class k's samples are brightest in class k's bar, for DDIM and guided DDPM."""
    torch.manual_seed(0)
    options = DiffusionOptions(**{**TINY, "train_steps": 250, "lr": 3e-3, "label_dropout": 0.2})
    private = _private(n=90)
    unet = build_unet(options, 1, 8, 8, num_class_embeds=4)  # 3 classes + the null class 3
    train_denoiser(unet, private.x.float() / 127.5 - 1.0, private.y, options, 3, torch.Generator().manual_seed(1))
    labels = torch.arange(3).repeat_interleave(10)
    for sampler, guidance_scale in [("ddim", 1.0), ("ddpm", 2.0)]:
        sampling = DiffusionOptions(**{**TINY, "sampler": sampler, "sample_steps": 10, "label_dropout": 0.2,
                                       "guidance_scale": guidance_scale})
        images = sample_images(unet, labels, (1, 8, 8), sampling, 3, torch.Generator().manual_seed(2))
        assert images.shape == (30, 1, 8, 8)
        rows = images[:, 0].mean(dim=2)  # (N, 8): mean brightness per row
        bars = torch.stack([rows[:, 2 * k : 2 * k + 2].mean(dim=1) for k in range(3)], dim=1)
        accuracy = (bars.argmax(dim=1) == labels).float().mean().item()
        assert accuracy > 0.8, (sampler, accuracy)


def test_same_seed_and_model_give_the_same_set(tmp_path):
    private = _private()
    options = {**TINY, "train_steps": 5, "n_per_class": 3, "sampler": "ddpm", "ema_decay": 0.9}
    a, _ = _synthesize(tmp_path, options, private, model_id=1)
    b, _ = _synthesize(tmp_path, options, private, model_id=1)
    c, _ = _synthesize(tmp_path, options, private, model_id=2)
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert not torch.equal(a.x, c.x)


def test_pretrained_path_is_loaded_and_checked(tmp_path):
    from diffusers import UNet2DModel

    private = _private()
    options = DiffusionOptions(**TINY)
    torch.manual_seed(0)
    build_unet(options, 1, 8, 8, num_class_embeds=3).save_pretrained(tmp_path / "unet")
    # Sampling only (train_steps 0): exactly the saved network's samples.
    options_raw = {**TINY, "pretrained_path": str(tmp_path / "unet"), "train_steps": 0, "n_per_class": 2}
    synthetic, context = _synthesize(tmp_path, options_raw, private)
    loaded = UNet2DModel.from_pretrained(tmp_path / "unet")
    expected = sample_images(
        loaded, torch.arange(3).repeat_interleave(2), (1, 8, 8), DiffusionOptions(**options_raw), None,
        context.generator("sample"),
    )
    assert torch.allclose(synthetic.x, ((expected + 1) / 2).clamp(0, 1), atol=1e-5)
    # Fine-tuning from it changes the samples.
    tuned, _ = _synthesize(tmp_path, {**options_raw, "train_steps": 3}, private)
    assert tuned.x.shape == (6, 1, 8, 8) and not torch.allclose(tuned.x, synthetic.x)

    with pytest.raises(RayprivError, match=r"pretrained_path=.*local"):
        _synthesize(tmp_path, {**TINY, "pretrained_path": str(tmp_path / "nowhere")}, private)
    # A model for another number of classes (or a 3-channel one) is refused with the reason.
    build_unet(options, 1, 8, 8, num_class_embeds=10).save_pretrained(tmp_path / "ten")
    with pytest.raises(RayprivError, match="num_class_embeds 10"):
        _synthesize(tmp_path, {**TINY, "pretrained_path": str(tmp_path / "ten")}, private)
    build_unet(options, 3, 8, 8, num_class_embeds=3).save_pretrained(tmp_path / "rgb")
    with pytest.raises(RayprivError, match="channels"):
        _synthesize(tmp_path, {**TINY, "pretrained_path": str(tmp_path / "rgb")}, private)


def test_bad_inputs_and_options_are_refused(tmp_path):
    tabular = LabeledSet(torch.randn(30, 5), torch.arange(30) % 3)
    context = _context(tmp_path, TINY, shape=(5,))
    with pytest.raises(RayprivError, match="needs images"):
        make_paradigm(context.config, "diffusion").synthesize(tabular, context)
    with pytest.raises(RayprivError, match="divide by 4"):
        build_unet(DiffusionOptions(block_out_channels=[8, 8, 8], norm_num_groups=4), 1, 6, 6, 3)
    for bad, field in [
        ({"sampler": "euler"}, "sampler"),
        ({"norm_num_groups": 3}, "norm_num_groups"),
        ({"train_steps": 0}, "train_steps"),
        ({"guidance_scale": 3.0}, "guidance_scale"),
        ({"sample_steps": 2000}, "sample_steps"),
        ({"block_out_channels": []}, "block_out_channels"),
    ]:
        with pytest.raises(RayprivError, match=f"diffusion.{field}"):
            build_options("diffusion", bad)


@pytest.mark.slow
def test_end_to_end_audit(tmp_path):
    options = {**TINY, "train_steps": 40, "sample_steps": 3, "n_per_class": 10}
    config = config_from_dict(
        tiny_config_dict(
            tmp_path / "run", paradigms=["diffusion"], attacks=["loss"], **{"paradigm_options.diffusion": options}
        )
    )
    result = run_audit(config, use_ray=False, show_progress=False)
    assert len(result.models) == 8 and (result.models.synthetic_size == 100).all()
    arrays = np.load(tmp_path / "run" / "synthetic" / "diffusion" / "model-000000.npz")
    assert arrays["x"].shape == (100, 1, 8, 8) and arrays["x"].dtype == np.float32
    assert 0.0 <= arrays["x"].min() and arrays["x"].max() <= 1.0
    assert np.bincount(arrays["y"]).tolist() == [10] * 10
    # Different models were trained on different private sets with their own noise.
    other = np.load(tmp_path / "run" / "synthetic" / "diffusion" / "model-000001.npz")
    assert not np.array_equal(arrays["x"], other["x"])


# ------------------------------------------------------------------ img2img (SDEdit)


def test_img2img_at_strength_zero_returns_the_private_images_exactly(tmp_path):
    private = _private(n=30)
    options = {**TINY, "train_steps": 1, "generation": "img2img", "strength": 0.0, "n_per_image": 2}
    synthetic, context = _synthesize(tmp_path, options, private)
    assert synthetic.x.dtype == torch.float32
    assert torch.equal(synthetic.x, (private.x.float() / 255.0).repeat_interleave(2, dim=0))
    assert torch.equal(synthetic.y, private.y.repeat_interleave(2))
    assert context.info["n_per_image"] == 2

    floats = LabeledSet(torch.rand(30, 1, 8, 8, generator=torch.Generator().manual_seed(3)), private.y)
    same, _ = _synthesize(tmp_path, {**options, "n_per_image": 1}, floats)
    assert torch.equal(same.x, floats.x)  # float pixel images come back bit for bit


def test_img2img_stays_closer_to_its_source_at_lower_strength():
    """SDEdit: noising to ~strength·T and denoising back keeps more of the source image at low strength."""
    from raypriv.synth.diffusion.unet import img2img_images, img2img_steps

    torch.manual_seed(0)
    options = DiffusionOptions(**{**TINY, "train_steps": 150, "lr": 3e-3, "sample_steps": 10})
    private = _private(n=60)
    x0 = private.x.float() / 127.5 - 1.0
    unet = build_unet(options, 1, 8, 8, num_class_embeds=3)
    train_denoiser(unet, x0, private.y, options, None, torch.Generator().manual_seed(1))
    assert [img2img_steps(s, 10) for s in (0.0, 0.01, 0.3, 0.55, 1.0)] == [0, 1, 3, 6, 10]
    distances = []
    for strength in (0.2, 0.6, 1.0):
        opts = DiffusionOptions(**{**TINY, "sample_steps": 10, "generation": "img2img", "strength": strength})
        out = img2img_images(unet, x0, private.y, opts, None, torch.Generator().manual_seed(2))
        assert out.shape == x0.shape and torch.isfinite(out).all()
        distances.append(float((out.clamp(-1, 1) - x0).abs().mean()))
    assert distances[0] < distances[1] < distances[2], distances


def test_img2img_set_follows_its_sources(tmp_path):
    private = _private(n=30)
    options = {**TINY, "train_steps": 3, "generation": "img2img", "strength": 0.5, "size_fraction": 0.5, "n_per_image": 2}
    synthetic, _ = _synthesize(tmp_path, options, private)
    assert synthetic.x.shape == (30, 1, 8, 8) and synthetic.x.dtype == torch.float32  # 15 sources x 2
    assert 0.0 <= synthetic.x.min() and synthetic.x.max() <= 1.0
    assert synthetic.y.dtype == torch.int64 and torch.equal(synthetic.y[0::2], synthetic.y[1::2])
    assert not torch.equal(synthetic.x[0::2], synthetic.x[1::2])  # independent noise per sample
    again, _ = _synthesize(tmp_path, options, private)
    assert torch.equal(again.x, synthetic.x)


@pytest.mark.parametrize(
    "options, match",
    [
        ({"strength": 1.5}, r"paradigm_options.diffusion.strength=1.5 must be in \[0, 1\]"),
        ({"strength": -0.1}, r"strength=-0.1"),
        ({"generation": "img2img", "n_per_class": 3}, "n_per_class=3 does not apply to generation: img2img"),
        ({"generation": "img2img", "size_fraction": 2.0}, "size_fraction=2.0"),
        ({"generation": "text2img"}, "text2img' needs pipeline: stable-diffusion"),
        ({"pipeline": "stable-diffusion"}, "needs paradigm_options.diffusion.pretrained_path"),
        ({"pipeline": "stable-diffusion", "pretrained_path": "/x", "prompt_template": "a digit"}, r"must contain '\{label\}'"),
    ],
)
def test_generation_options_are_checked(options, match):
    with pytest.raises(RayprivError, match=match):
        build_options("diffusion", options)
