"""``release_ngram``: a smoothed character n-gram model of a pipeline's synthetic text, scoring each audit record.

"The Canary's Echo" (Meeus et al. 2025) attacks synthetic *text* by fitting
an n-gram model on it and scoring the target's text: a record the
generator saw leaves its n-grams in the output.  dpgen-llm writes tabular
records as text lines (``f0=3, f1=7, ..., label=1``,
:func:`raypriv.synth.dpgen.llm.serialize_record`) and stores the records it
parsed back from its generated lines as features.  The text is recovered
from the stored features: each value is put back into its bin by the same
public quantizer the paradigm used (``levels`` bins over ``[-clip, clip]``
standard deviations of the training pool), so the line is the one the
model generated, for every record that parsed.  Departures: lines that did
not parse are not stored, so they are not in the n-gram model; a stored
float32 value within rounding of a bin edge may land in the next bin.

The model: characters, order :data:`ORDER` (each character given the
:data:`ORDER` - 1 before it, lines padded at the start), Lidstone smoothing
with ``alpha`` = :data:`ALPHA` over the alphabet of the record format.  The
statistic is the audit record's log-likelihood, the sum over its
characters (every record has the same length pattern up to its digits, so
the sum is not normalised).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

ORDER = 4
ALPHA = 0.1
ALPHABET = frozenset("0123456789f=, label\n")  # what serialize_record writes
PAD = "\x02"


@dataclass(frozen=True)
class RecordText:
    """How a text paradigm writes a record: the public quantizer and the serialiser (module docstring).

    ``quantizer``: any object with ``bin(x) -> (N, D) int64`` levels (raypriv's
    :class:`raypriv.synth.dpgen.common.Quantizer`); ``serialize``: levels
    ``(D,)`` and a label -> one line.
    """

    quantizer: Any
    serialize: Callable[[np.ndarray, int], str]

    def lines(self, x: np.ndarray, labels: np.ndarray) -> list[str]:
        """Each record ``x`` ``(N, D)`` with its label ``(N,)`` as its text line."""
        levels = self.quantizer.bin(np.asarray(x, dtype=np.float64))
        return [self.serialize(row, int(label)) for row, label in zip(levels, labels, strict=True)]


class NgramModel:
    """A character n-gram model with Lidstone smoothing, fitted on lines of text."""

    def __init__(self, lines: list[str], order: int = ORDER, alpha: float = ALPHA) -> None:
        self.order, self.alpha = order, alpha
        self.vocabulary = len(ALPHABET | {c for line in lines for c in line})
        self.counts: Counter[str] = Counter()
        self.contexts: Counter[str] = Counter()
        for line in lines:
            padded = PAD * (order - 1) + line
            for i in range(order - 1, len(padded)):
                self.counts[padded[i - order + 1 : i + 1]] += 1
                self.contexts[padded[i - order + 1 : i]] += 1

    def log_likelihood(self, line: str) -> float:
        """``sum_i log P(c_i | c_{i-n+1..i-1})``, ``P = (count + alpha) / (context count + alpha V)``."""
        padded = PAD * (self.order - 1) + line
        total = 0.0
        for i in range(self.order - 1, len(padded)):
            gram, context = padded[i - self.order + 1 : i + 1], padded[i - self.order + 1 : i]
            total += np.log((self.counts[gram] + self.alpha) / (self.contexts[context] + self.alpha * self.vocabulary))
        return float(total)


def ngram_statistic(audit_lines: list[str], synthetic_lines: list[str]) -> np.ndarray:
    """Each audit line's log-likelihood under the n-gram model of ``synthetic_lines``: float64 ``(N,)``."""
    model = NgramModel(synthetic_lines)
    return np.array([model.log_likelihood(line) for line in audit_lines])
