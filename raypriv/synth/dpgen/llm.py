"""``dpgen-llm``: DP few-shot generation of tabular records with a causal language model.

The design is DP few-shot generation (Tang et al., "Privacy-Preserving
In-Context Learning with Differentially Private Few-Shot Generation", ICLR
2024), itself the token-by-token "private prediction" of PATE-style
aggregation (Papernot et al. 2017; Majmudar et al. 2022):

1. **Serialise** each private record to one line of text,
   ``f0=3, f1=7, ..., label=1``: every feature quantised to a level
   ``0..levels-1`` (equal bins over ``[-clip, clip]`` public standard
   deviations, the data-independent bins of :mod:`raypriv.synth.dpgen.common`)
   and the class id.
2. **Split** the private records into ``groups`` disjoint prompt groups.  A
   record's group is a salted hash of the record itself (the salt is drawn
   per shadow model), and a group's prompt holds its first ``shots`` records
   in hash order: a record's group and place depend on no other record, so
   adding or removing one record changes *one* group's prompt and no other.
   (Chunking a shuffled list would not: one more record shifts every group.)
3. **Generate** ``n_records`` records token by token.  At every step each
   group's prompt, followed by the text generated so far, gives a next-token
   distribution ``p_g``; their sum ``S = sum_g p_g`` gets Gaussian or Laplace
   noise, and the next token is drawn from the noisy sum clipped at 0 and
   renormalised (``selection: sample``) or is its argmax (``argmax``, Tang
   et al.'s choice).  The token is appended for every group.
4. **Parse** each generated line back into a record (levels to raw values,
   uniformly within the level's bin).  Malformed lines are counted
   (``context.info["malformed"]``) and dropped.

Sensitivity: each ``p_g`` is a probability vector (over the candidate
tokens, renormalised; at most 1 in total), and adding or removing one record
changes one group's prompt, so ``S`` moves by at most ``||p - p'||_1 <= 2``
and ``||p - p'||_2 <= sqrt(2)``, whatever the prompts and the text so far.
Every generated token is one invocation of the mechanism on ``S``; the
invocations are adaptive (later prompts contain earlier noisy outputs),
which zCDP and pure-DP composition allow.  Accounting covers *all* tokens
the method may generate: ``n_records * (D + 1)`` value tokens with schema
decoding, ``n_records * max_new_tokens`` with free decoding (a record that
ends early does not get its unused tokens back).  See
:func:`raypriv.synth.dpgen.common.calibrate`.

Decoding:

* ``schema`` (default): the serialisation is public, so its fixed text
  (``f0=``, ``, f1=``, ..., ``, label=``) is appended without consulting the
  private prompts, at no privacy cost; only the value tokens are generated
  privately, each from the candidate tokens ``0..levels-1`` (or the class
  ids).  Every line parses.  This needs each value to be one token (true for
  single digits in GPT-2's BPE and in the character tokenizer below).
* ``free``: every token is generated privately from the whole vocabulary,
  or, with ``vocab_top_k: k``, from the ``k`` most likely tokens of a public
  zero-shot prompt (the header with no private record) given the text so
  far: Tang et al.'s vocabulary reduction with a public prior, which costs
  nothing because that prompt holds no private data.  A line ends at a
  newline or after ``max_new_tokens``; malformed lines are dropped.

The model is ``model_path``: a local directory or a Hugging Face id, loaded
with ``AutoModelForCausalLM`` / ``AutoTokenizer.from_pretrained`` (a local
path that does not exist is an error), or a named model that a pip package
ships (``smollm2-135m``: SmolLM2-135M-Instruct, see
:mod:`raypriv.synth.dpgen.language_models`).  ``mechanism: none`` adds no noise:
plain few-shot generation from the private records, the non-private
baseline the DP mechanism is measured against.  ``model_path: null`` builds a *tiny
randomly initialised GPT-2* (1 layer, width 32) with a character-level
tokenizer, seeded from the experiment seed, so the default runs offline.
Its text is nonsense and the utility of its records is meaningless: it
exists to exercise the code path (prompts, aggregation, noise, accounting,
parsing) and to show that the audit sees no leakage from it.

If no generated line parses, the training set falls back to one record per
class with every feature at the public Normalizer mean (the centre of the
data, no private information): the audited model then learns nothing, its
test accuracy shows it, ``context.info["fallback"]`` is 1, and a warning is
logged.  The run never fails for want of parsable text.

Options (``paradigm_options.dpgen-llm``): ``epsilon``, ``delta``,
``mechanism``, ``model_path``, ``groups``, ``shots``, ``n_records``,
``decoding``, ``levels``, ``clip``, ``max_new_tokens``, ``vocab_top_k``,
``temperature``, ``selection``, ``batch_records`` (records generated in
parallel: memory against speed).  CPU cost grows with ``groups x shots``
(prompt length) and ``n_records x tokens per record``.

Utility needs signal above the noise: the vote for a token is at most
``groups`` (every group agrees), while the noise scale (``info.noise_scale``)
grows with the square root (Gaussian) or linearly (Laplace) in the number of
tokens accounted.  With the defaults at epsilon 8 the noise (sigma ~ 28)
exceeds the 16 groups' vote, so the records are close to uniform draws from
the schema: few private tokens from many prompts (Tang et al. generate a
handful of short demonstrations from hundreds of prompts) is the regime
where the method keeps utility.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
from dataclasses import dataclass

import numpy as np
import torch

from raypriv.errors import RayprivError
from raypriv.synth.base import LabeledSet, Paradigm, ShadowContext
from raypriv.synth.dpgen.common import NoiseCalibration, calibrate, require_tabular, tabular_records
from raypriv.synth.dpgen.language_models import TINY_MODEL, LanguageModel, load_language_model, tiny_language_model
from raypriv.synth.dpgen.options import DPGenLLMOptions

log = logging.getLogger("raypriv")

_WHERE = "paradigm_options.dpgen-llm"
L1_SENSITIVITY = 2.0  # of the sum of the groups' next-token distributions
L2_SENSITIVITY = math.sqrt(2.0)


_LOADED: dict[tuple, LanguageModel] = {}


def _language_model(opts: DPGenLLMOptions, context: ShadowContext) -> LanguageModel:
    """The configured LM on the context's device, kept for the next pipeline of this process (read-only)."""
    key = (opts.model_path or TINY_MODEL, context.seed if opts.model_path is None else None, str(context.device))
    if key not in _LOADED:
        _LOADED.clear()  # hold one model at a time
        lm = tiny_language_model(context.seed) if opts.model_path is None else load_language_model(opts.model_path)
        lm.model.to(context.device)
        _LOADED[key] = lm
    return _LOADED[key]


# ---------------------------------------------------------- records as text


def prompt_header(n_features: int, levels: int, num_classes: int) -> str:
    return (
        f"Records of a table, one a line: {n_features} features f0 to f{n_features - 1}, each a level from 0 to "
        f"{levels - 1}, and a class label from 0 to {num_classes - 1}.\n"
    )


def serialize_record(levels: np.ndarray, label: int) -> str:
    """``f0=3, f1=7, ..., label=1`` (no newline)."""
    return ", ".join(f"f{j}={int(v)}" for j, v in enumerate(levels)) + f", label={int(label)}"


_FIELD = re.compile(r"f(\d+)=(\d+)")
_LABEL = re.compile(r"label=(\d+)")


def parse_record(text: str, n_features: int, levels: int, num_classes: int) -> tuple[np.ndarray, int] | None:
    """The (levels, label) of one generated line, or None if it is not a well-formed record.

    Well-formed: comma-separated ``f<j>=<level>`` fields naming every
    feature exactly once (any order) and one ``label=<class>``, all values in
    range, nothing else.
    """
    parts = [part.strip() for part in text.strip().split(",")]
    values = np.full(n_features, -1, dtype=np.int64)
    label = None
    for part in parts:
        field = _FIELD.fullmatch(part)
        if field:
            j, v = int(field.group(1)), int(field.group(2))
            if j >= n_features or values[j] >= 0 or v >= levels:
                return None
            values[j] = v
            continue
        found = _LABEL.fullmatch(part)
        if found is None or label is not None or int(found.group(1)) >= num_classes:
            return None
        label = int(found.group(1))
    if label is None or (values < 0).any():
        return None
    return values, label


def assign_groups(x: np.ndarray, y: np.ndarray, groups: int, shots: int, salt: bytes) -> list[np.ndarray]:
    """Disjoint prompt groups: each record's group and rank come from a salted hash of the record alone.

    Returns, per group, the indices of its first ``shots`` records in hash
    order.  Adding or removing one record changes at most its own group.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    y = np.ascontiguousarray(y, dtype=np.int64)
    digests = np.array(
        [int.from_bytes(hashlib.blake2b(x[i].tobytes() + y[i].tobytes(), key=salt, digest_size=8).digest(), "big")
         for i in range(len(x))],
        dtype=np.uint64,
    )
    group_of = digests % np.uint64(groups)
    members = []
    for g in range(groups):
        index = np.flatnonzero(group_of == g)
        members.append(index[np.argsort(digests[index], kind="stable")][:shots])
    return members


# ---------------------------------------------------------------- aggregation


def private_next_tokens(group_probs: torch.Tensor, noise: NoiseCalibration, rng: np.random.Generator,
                        selection: str) -> np.ndarray:
    """One private token per record from the groups' next-token distributions.

    ``group_probs`` is ``(groups, records, candidates)``: each row a
    probability vector (or one with total at most 1).  Their sum over groups
    has L1 sensitivity 2 and L2 sensitivity sqrt(2) to one record (which
    changes one group); ``noise`` is added to it, and the token is drawn
    from the noisy sum clipped at 0 and renormalised (uniform if nothing is
    left), or is its argmax.  Returns candidate indices ``(records,)``.
    """
    summed = group_probs.detach().double().sum(0).cpu().numpy()
    noisy = summed + noise.sample(rng, summed.shape)
    if selection == "argmax":
        return noisy.argmax(axis=1)
    weights = np.maximum(noisy, 0.0)
    totals = weights.sum(axis=1, keepdims=True)
    weights = np.where(totals > 0, weights / np.where(totals > 0, totals, 1.0), 1.0 / weights.shape[1])
    uniform = rng.random(len(weights))[:, None]
    return np.minimum((uniform > np.cumsum(weights, axis=1)).sum(axis=1), weights.shape[1] - 1)


class _Decoder:
    """Batched incremental decoding of many prompts with one KV cache (left padding).

    The cache is a ``transformers.DynamicCache`` passed as ``cache=``: each
    forward pass appends the new tokens' keys and values to it in place.
    """

    def __init__(self, lm: LanguageModel, prompts: list[list[int]], repeat: int, device: torch.device):
        from transformers import DynamicCache

        longest = max(len(p) for p in prompts)
        ids = torch.zeros((len(prompts), longest), dtype=torch.long)
        mask = torch.zeros((len(prompts), longest), dtype=torch.long)
        for i, prompt in enumerate(prompts):
            ids[i, longest - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
            mask[i, longest - len(prompt):] = 1
        self.lm, self.device = lm, device
        ids, mask = ids.to(device), mask.to(device)
        positions = (mask.cumsum(1) - 1).clamp(min=0)
        # logits_to_keep=1: only the last position's logits are used; a real LM's head over its whole
        # vocabulary at every prompt position would cost more than the rest of the forward pass.
        self.cache = DynamicCache(config=lm.model.config)
        out = lm.model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=self.cache, use_cache=True,
                       logits_to_keep=1)
        # Row order after repeating: group-major, row = group * repeat + record.
        self.cache.batch_repeat_interleave(repeat)
        self.mask = mask.repeat_interleave(repeat, 0)
        self.next_position = (positions[:, -1] + 1).repeat_interleave(repeat, 0)
        self.logits = out.logits[:, -1].float().repeat_interleave(repeat, 0)

    def feed(self, tokens: torch.Tensor) -> torch.Tensor:
        """Append ``tokens`` (rows, k) to every row; returns the next-token logits (rows, vocab)."""
        rows, k = tokens.shape
        self.mask = torch.cat([self.mask, torch.ones((rows, k), dtype=self.mask.dtype, device=self.device)], 1)
        positions = self.next_position[:, None] + torch.arange(k, device=self.device)
        out = self.lm.model(input_ids=tokens.to(self.device), attention_mask=self.mask, position_ids=positions,
                            cache=self.cache, use_cache=True, logits_to_keep=1)
        self.next_position = self.next_position + k
        self.logits = out.logits[:, -1].float()
        return self.logits


def _single_tokens(lm: LanguageModel, values: list[str]) -> list[int]:
    ids = [lm.encode(v) for v in values]
    if any(len(i) != 1 for i in ids):
        raise RayprivError(
            f"{_WHERE}: decoding: schema needs every value to be one token, but the tokenizer of {lm.name!r} splits "
            f"some of {values[:12]}; use decoding: free"
        )
    return [i[0] for i in ids]


@dataclass
class Generation:
    texts: list[str]
    tokens_generated: int


@torch.inference_mode()
def generate_schema(lm: LanguageModel, prompts: list[list[int]], n_features: int, levels: int, num_classes: int,
                    n_records: int, noise: NoiseCalibration, rng: np.random.Generator, opts: DPGenLLMOptions,
                    device: torch.device) -> Generation:
    """Schema decoding: fixed text appended publicly, each value token chosen privately."""
    pieces = [lm.encode("f0=")] + [lm.encode(f", f{j}=") for j in range(1, n_features)] + [lm.encode(", label=")]
    feature_candidates = torch.tensor(_single_tokens(lm, [str(v) for v in range(levels)]))
    label_candidates = torch.tensor(_single_tokens(lm, [str(c) for c in range(num_classes)]))
    groups, texts = len(prompts), []
    for start in range(0, n_records, opts.batch_records):
        batch = min(opts.batch_records, n_records - start)
        decoder = _Decoder(lm, prompts, batch, device)
        record_tokens: list[list[int]] = [[] for _ in range(batch)]
        previous = None
        for slot, piece in enumerate(pieces):
            fixed = torch.tensor(piece, dtype=torch.long).expand(groups * batch, len(piece))
            new = fixed if previous is None else torch.cat([previous.repeat(groups)[:, None], fixed], 1)
            logits = decoder.feed(new)
            candidates = label_candidates if slot == n_features else feature_candidates
            probs = torch.softmax(logits[:, candidates.to(device)] / opts.temperature, dim=-1)
            chosen = private_next_tokens(probs.view(groups, batch, -1), noise, rng, opts.selection)
            previous = candidates[torch.from_numpy(chosen)]
            for r in range(batch):
                record_tokens[r] += piece + [int(previous[r])]
        texts += [lm.decode(tokens) for tokens in record_tokens]
    return Generation(texts, n_records * (n_features + 1))


@torch.inference_mode()
def generate_free(lm: LanguageModel, prompts: list[list[int]], public_prompt: list[int], n_records: int,
                  max_new_tokens: int, noise: NoiseCalibration, rng: np.random.Generator, opts: DPGenLLMOptions,
                  device: torch.device) -> Generation:
    """Free decoding: every token chosen privately (from a public top-k when ``vocab_top_k`` is set)."""
    groups = len(prompts)
    public = opts.vocab_top_k is not None
    texts, tokens_generated = [], 0
    vocab = lm.vocab_size
    for start in range(0, n_records, opts.batch_records):
        batch = min(opts.batch_records, n_records - start)
        decoder = _Decoder(lm, prompts + ([public_prompt] if public else []), batch, device)
        logits = decoder.logits
        generated: list[list[int]] = [[] for _ in range(batch)]
        finished = np.zeros(batch, dtype=bool)
        for _ in range(max_new_tokens):
            per_row = logits[:, :vocab].reshape(-1, batch, min(vocab, logits.shape[1]))
            private = torch.softmax(per_row[:groups] / opts.temperature, dim=-1)
            if public:
                k = min(opts.vocab_top_k, per_row.shape[-1])
                candidates = per_row[groups].topk(k, dim=-1).indices  # (batch, k): public, data-independent
                private = private.gather(-1, candidates.expand(groups, batch, k))
                private = private / private.sum(-1, keepdim=True).clamp_min(1e-30)
            else:
                candidates = torch.arange(per_row.shape[-1], device=device).expand(batch, -1)
            chosen = torch.from_numpy(private_next_tokens(private, noise, rng, opts.selection)).to(device)
            tokens = candidates.gather(1, chosen[:, None])[:, 0].cpu()
            for r in np.flatnonzero(~finished):
                generated[r].append(int(tokens[r]))
                tokens_generated += 1
                if "\n" in lm.decode([int(tokens[r])]):
                    finished[r] = True
            if finished.all():
                break
            logits = decoder.feed(tokens.repeat(groups + int(public))[:, None])
        texts += [lm.decode(tokens).split("\n")[0] for tokens in generated]
    return Generation(texts, tokens_generated)


class DPGenLLM(Paradigm):
    name = "dpgen-llm"
    Options = DPGenLLMOptions

    @classmethod
    def check_data(cls, name: str, input_shape: tuple[int, ...], num_classes: int) -> None:
        require_tabular(name, input_shape)

    def synthesize(self, private: LabeledSet, context: ShadowContext) -> LabeledSet:
        opts: DPGenLLMOptions = self.options
        quantizer, x, y = tabular_records(private, context, opts.levels, opts.clip)
        lm = _language_model(opts, context)
        n_features, num_classes = x.shape[1], context.num_classes
        if opts.decoding == "schema" and num_classes > 10:
            raise RayprivError(f"{_WHERE}: decoding: schema handles at most 10 classes (one digit); use decoding: free")

        # Prompts: one per group, from that group's records only.
        levels = quantizer.bin(x)
        header = prompt_header(n_features, opts.levels, num_classes)
        salt = context.rng("groups").bytes(16)
        members = assign_groups(x, y, opts.groups, opts.shots, salt)
        prompts = [lm.encode(header + "".join(serialize_record(levels[i], y[i]) + "\n" for i in index))
                   for index in members]
        longest_record = len(lm.encode(serialize_record(np.full(n_features, opts.levels - 1), num_classes - 1) + "\n"))
        per_record = n_features + 1 if opts.decoding == "schema" else (opts.max_new_tokens or math.ceil(1.25 * longest_record))
        limit = lm.max_positions
        if limit is not None and max(map(len, prompts)) + max(per_record, longest_record) > limit:
            raise RayprivError(
                f"{_WHERE}: prompts of {opts.shots} records ({max(map(len, prompts))} tokens) plus a generated record "
                f"exceed the model's {limit} positions; lower shots"
            )

        noise = calibrate(opts.mechanism, opts.epsilon, opts.delta, opts.n_records * per_record,
                          L1_SENSITIVITY, L2_SENSITIVITY)
        rng = context.rng("generate")
        if opts.decoding == "schema":
            generation = generate_schema(lm, prompts, n_features, opts.levels, num_classes, opts.n_records,
                                         noise, rng, opts, context.device)
        else:
            generation = generate_free(lm, prompts, lm.encode(header), opts.n_records, per_record, noise, rng,
                                       opts, context.device)

        parsed = [parse_record(text, n_features, opts.levels, num_classes) for text in generation.texts]
        valid = [record for record in parsed if record is not None]
        value_rng = context.rng("values")
        if valid:
            features = quantizer.sample(np.stack([v for v, _ in valid]), value_rng)
            labels = np.array([label for _, label in valid], dtype=np.int64)
        else:
            log.warning(
                "%s model %d: none of %d generated records parsed; training on one record per class at the public "
                "mean (the model learns nothing)", context.paradigm, context.model_id, len(parsed),
            )
            features = np.repeat(quantizer.mean[None, :].astype(np.float32), num_classes, axis=0)
            labels = np.arange(num_classes, dtype=np.int64)
        context.info.update(noise.info())
        context.info.update(
            model=lm.name, decoding=opts.decoding, groups=opts.groups, shots=opts.shots, generated=len(parsed),
            malformed=len(parsed) - len(valid), fallback=int(not valid), tokens_generated=generation.tokens_generated,
        )
        device = private.x.device
        return LabeledSet(torch.from_numpy(np.ascontiguousarray(features)).to(device), torch.from_numpy(labels).to(device))
