"""``diffusion`` with ``pipeline: stable-diffusion``: a tiny random pipeline saved by the test, no download."""

import json
import shutil

import numpy as np
import pytest
import torch

from raypriv.config import from_dict as config_from_dict
from raypriv.errors import RayprivError
from raypriv.synth import LabeledSet, ShadowContext, make_paradigm
from raypriv.synth.diffusion.stable_diffusion import (
    class_prompts,
    encode_prompts,
    finetune_unet,
    load_components,
    to_model_images,
)
from raypriv.training import Normalizer
from tests.conftest import tiny_config_dict

NUM_CLASSES = 3


def _write_tokenizer_files(folder) -> tuple[str, str]:
    """A CLIP byte-level BPE vocabulary of single characters (no merges), written by the test itself."""
    # GPT-2's byte-to-unicode table, which CLIP's byte-level BPE uses.
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    codes, extra = printable[:], 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    chars = [chr(c) for c in codes]
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = folder / "vocab.json", folder / "merges.txt"
    vocab.write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    merges.write_text("#version: 0.2\n")
    return str(vocab), str(merges)


@pytest.fixture(scope="module")
def pipeline_path(tmp_path_factory):
    """A randomly initialised Stable Diffusion pipeline (16x16 images, 8x8 latents) saved with save_pretrained."""
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    root = tmp_path_factory.mktemp("sd")
    _write_tokenizer_files(root / "tokenizer-src")
    tokenizer = CLIPTokenizer.from_pretrained(root / "tokenizer-src", model_max_length=16)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, norm_num_groups=4, attention_head_dim=4,
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, block_out_channels=(8, 16), latent_channels=4, norm_num_groups=4,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, sample_size=16,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_attention_heads=2,
            num_hidden_layers=2, max_position_embeddings=16, projection_dim=16,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        )
    )
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                              clip_sample=False, steps_offset=1)
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    path = root / "pipeline"
    pipe.save_pretrained(path)
    return path


def _private(n: int = 24) -> LabeledSet:
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % NUM_CLASSES
    x = torch.randint(0, 40, (n, 1, 8, 8), generator=g)
    for k in range(NUM_CLASSES):
        x[y == k, :, 2 * k : 2 * k + 3, :] += 200
    return LabeledSet(x.clamp(0, 255).to(torch.uint8), y.long())


def _context(tmp_path, options: dict) -> ShadowContext:
    raw = tiny_config_dict(tmp_path / "run", paradigms=["diffusion"], **{"paradigm_options.diffusion": options})
    config = config_from_dict(raw)
    normalizer = Normalizer.fit(np.zeros((2, 1, 8, 8), dtype=np.float32))
    return ShadowContext(config, "diffusion", 0, NUM_CLASSES, (1, 8, 8), normalizer, torch.device("cpu"))


def _options(path, **extra) -> dict:
    return {"pipeline": "stable-diffusion", "pretrained_path": str(path), "prompt_template": "a bar at row {label}",
            "class_names": ["top", "middle", "bottom"], "train_steps": 2, "batch_size": 8, "lr": 1e-3,
            "sample_steps": 3, **extra}


def test_finetuning_loss_falls(pipeline_path, tmp_path):
    from raypriv.synth.diffusion.options import DiffusionOptions

    options = DiffusionOptions(**_options(pipeline_path, train_steps=80, batch_size=12))
    context = _context(tmp_path, _options(pipeline_path))
    components = load_components(str(pipeline_path))
    for name in ("vae", "text_encoder"):
        components[name].requires_grad_(False).eval()
    private = _private()
    images = to_model_images(private.x.float() / 255.0, 16) * 2 - 1
    prompts = class_prompts(options, context)
    assert prompts == ["a bar at row top", "a bar at row middle", "a bar at row bottom"]
    embeddings = encode_prompts(components["tokenizer"], components["text_encoder"], prompts, torch.device("cpu"))
    null = encode_prompts(components["tokenizer"], components["text_encoder"], [""], torch.device("cpu"))
    before = [p.detach().clone() for p in components["unet"].parameters()]
    losses = finetune_unet(components, images, private.y, embeddings, null, options, torch.Generator().manual_seed(1))
    assert len(losses) == 80
    first, last = np.mean(losses[:15]), np.mean(losses[-15:])
    assert last < 0.8 * first, (first, last)
    changed = [not torch.equal(a, b) for a, b in zip(before, components["unet"].parameters(), strict=True)]
    assert sum(changed) > 0.9 * len(changed)  # full fine-tuning: (nearly) every UNet tensor moves


@pytest.mark.parametrize("generation", ["text2img", "img2img"])
def test_generation_gives_float_images_of_the_dataset_shape(pipeline_path, tmp_path, generation):
    extra = {"generation": generation, "n_per_class": 2} if generation == "text2img" else {"generation": generation}
    context = _context(tmp_path, _options(pipeline_path, **extra, strength=0.7))
    private = _private(12)
    synthetic = make_paradigm(context.config, "diffusion").synthesize(private, context)
    n = 6 if generation == "text2img" else 12
    assert synthetic.x.shape == (n, 1, 8, 8) and synthetic.x.dtype == torch.float32
    assert 0.0 <= float(synthetic.x.min()) and float(synthetic.x.max()) <= 1.0 and synthetic.x.std() > 0
    expected = torch.arange(NUM_CLASSES).repeat_interleave(2) if generation == "text2img" else private.y
    assert torch.equal(synthetic.y, expected)
    assert context.info["loss_first"] > 0


def test_missing_or_incomplete_pretrained_path_is_refused(pipeline_path, tmp_path):
    private = _private(6)
    nowhere = tmp_path / "nowhere"
    context = _context(tmp_path, _options(nowhere))
    with pytest.raises(RayprivError, match=f"pretrained_path='{nowhere}' does not exist"):
        make_paradigm(context.config, "diffusion").synthesize(private, context)
    incomplete = tmp_path / "incomplete"
    shutil.copytree(pipeline_path, incomplete)
    shutil.rmtree(incomplete / "vae")
    context = _context(tmp_path, _options(incomplete))
    with pytest.raises(RayprivError, match=rf"pretrained_path='{incomplete}' lacks the component\(s\) \['vae'\]"):
        make_paradigm(context.config, "diffusion").synthesize(private, context)
