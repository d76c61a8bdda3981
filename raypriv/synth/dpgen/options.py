"""The options of ``dpgen-marginals`` and ``dpgen-llm``, checked without torch.

Both take a privacy budget (``epsilon``, ``delta``, ``mechanism``), checked by
:func:`raypriv.synth.dpgen.common.check_budget`; what the other options do is
documented with each paradigm (:mod:`raypriv.synth.dpgen.marginals`,
:mod:`raypriv.synth.dpgen.llm`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from raypriv.errors import RayprivError
from raypriv.synth.dpgen.common import check_budget

_LLM = "paradigm_options.dpgen-llm"
_MARGINALS = "paradigm_options.dpgen-marginals"


@dataclass
class DPGenMarginalsOptions:
    epsilon: float = 1.0  # total budget over all measured marginals
    delta: float = 1e-5  # Gaussian mechanism only
    mechanism: Literal["gaussian", "laplace"] = "gaussian"
    bins: int = 8  # bins per feature
    clip: float = 3.0  # bins cover [-clip, clip] public standard deviations around the public mean
    n_synthetic: int | None = None  # records to sample; None: the noisy record count

    def __post_init__(self) -> None:
        check_budget(_MARGINALS, self.epsilon, self.delta, self.mechanism)
        if self.bins < 2:
            raise RayprivError(f"{_MARGINALS}.bins={self.bins!r}: at least 2 bins per feature")
        if not self.clip > 0:
            raise RayprivError(
                f"{_MARGINALS}.clip={self.clip!r}: the clipping range must be positive (e.g. 3 standard deviations)"
            )
        if self.n_synthetic is not None and self.n_synthetic < 1:
            raise RayprivError(f"{_MARGINALS}.n_synthetic={self.n_synthetic!r}: at least 1, or null for the noisy record count")


@dataclass
class DPGenLLMOptions:
    epsilon: float = 8.0  # total budget over every generated token
    delta: float = 1e-5  # Gaussian mechanism only
    # "none": no noise, plain few-shot generation from the private records (not private; the baseline).
    mechanism: Literal["gaussian", "laplace", "none"] = "gaussian"
    # A local dir, a Hugging Face id or a named model ("smollm2-135m"); None: a tiny random GPT-2 (nonsense text).
    model_path: str | None = None
    groups: int = 16  # disjoint prompt groups
    shots: int = 2  # private records per prompt
    n_records: int = 32  # synthetic records generated
    decoding: Literal["schema", "free"] = "schema"
    levels: int = 10  # quantisation levels per feature (single digits)
    clip: float = 3.0  # levels cover [-clip, clip] public standard deviations
    max_new_tokens: int | None = None  # free decoding: tokens per record; None: 1.25 x a full record's length
    vocab_top_k: int | None = None  # free decoding: candidates from a public zero-shot prompt; None: whole vocabulary
    temperature: float = 1.0
    selection: Literal["sample", "argmax"] = "sample"
    batch_records: int = 8  # records generated in parallel (memory against speed)

    def __post_init__(self) -> None:
        check_budget(_LLM, self.epsilon, self.delta, self.mechanism, allow_none=True)
        for field in ("groups", "shots", "n_records", "batch_records"):
            if getattr(self, field) < 1:
                raise RayprivError(f"{_LLM}.{field}={getattr(self, field)!r}: must be at least 1")
        if not 2 <= self.levels <= 10:
            raise RayprivError(f"{_LLM}.levels={self.levels!r}: between 2 and 10 (each level is one digit)")
        if not self.clip > 0:
            raise RayprivError(f"{_LLM}.clip={self.clip!r}: the clipping range must be positive")
        if not self.temperature > 0:
            raise RayprivError(f"{_LLM}.temperature={self.temperature!r}: must be positive")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise RayprivError(f"{_LLM}.max_new_tokens={self.max_new_tokens!r}: at least 1, or null for automatic")
        if self.vocab_top_k is not None and self.vocab_top_k < 2:
            raise RayprivError(f"{_LLM}.vocab_top_k={self.vocab_top_k!r}: at least 2, or null for the whole vocabulary")
        if self.decoding == "schema" and (self.vocab_top_k is not None or self.max_new_tokens is not None):
            raise RayprivError(
                f"{_LLM}: vocab_top_k and max_new_tokens apply to decoding: free only; schema decoding generates "
                "exactly one value token per field"
            )
        if self.model_path is not None and not self.model_path.strip():
            raise RayprivError(f"{_LLM}.model_path is empty; give a model directory or null for the tiny test model")
