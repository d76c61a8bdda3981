"""The single source of randomness.

Every random draw in raypriv comes from a NumPy ``SeedSequence`` keyed by the
experiment seed, an optional model id, and a named *stream*.  So model ``m`` of
an experiment with seed ``s`` is reproducible from ``(s, m)`` alone, whatever
worker, process or order it runs in, and the streams are independent: changing
how many augmentation draws a model makes does not shift its data order.

Streams used:

* experiment level (no model id): ``"audit"`` (which samples are audited),
  ``"canary"`` (their wrong labels), ``"keep"`` (the membership matrix);
* model level: ``"init"`` (weights), ``"order"`` (batch order), ``"augment"``
  (augmentation draws), plus any stream a synthesizer asks for.
"""

from __future__ import annotations

import zlib
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # imported where a generator is made: the NumPy-only users (split, scoring) skip torch's 2.5 s
    import torch


def _stream_key(stream: str) -> int:
    # crc32 is stable across Python processes, unlike hash().
    return zlib.crc32(stream.encode("utf-8"))


def seed_sequence(seed: int, stream: str, model_id: int | None = None) -> np.random.SeedSequence:
    """The ``SeedSequence`` for one stream of one experiment (and model)."""
    key = [int(seed), _stream_key(stream)]
    if model_id is not None:
        key.append(int(model_id))
    return np.random.SeedSequence(key)


def numpy_rng(seed: int, stream: str, model_id: int | None = None) -> np.random.Generator:
    """A NumPy generator for ``stream``."""
    return np.random.default_rng(seed_sequence(seed, stream, model_id))


def torch_seed(seed: int, stream: str, model_id: int | None = None) -> int:
    """A 63-bit integer seed for torch, derived from the same key."""
    return int(seed_sequence(seed, stream, model_id).generate_state(1, dtype=np.uint64)[0] >> 1)


def torch_generator(seed: int, stream: str, model_id: int | None = None) -> torch.Generator:
    """A CPU ``torch.Generator`` for ``stream``.

    Draws are made on the CPU and moved to the device, so a model gets the same
    data order and augmentations on a GPU as on a laptop.
    """
    import torch

    generator = torch.Generator(device="cpu")
    generator.manual_seed(torch_seed(seed, stream, model_id))
    return generator
