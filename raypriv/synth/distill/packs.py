"""Which ``distill`` methods run a pack of shadow pipelines as one batched computation (``execution.pack``).

:data:`PACKED_METHODS` is the table: a method name and its
:class:`PackedMethod` (a check of the options the batched code runs, the
runner, a memory estimate, and whether the pack is bit-exact).  A runner takes the
:class:`~raypriv.synth.distill.Distill` paradigm (its public helpers
``split_by_class``, ``initial_images``, ``network_factory`` and
``as_result``), the K private sets and their contexts, and returns one
entry per pipeline: its set, or its own exception.  Options without an
entry, or whose check fails, run a pack one pipeline at a time.

The contract (:mod:`raypriv.pipeline`): each pipeline draws from its own
``(seed, model id)`` streams in the single run's order, so a packed set
equals the same pipeline run alone, up to float32 summation order.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

from raypriv.synth.base import LabeledSet, ShadowContext
from raypriv.synth.distill.options import DistillOptions
from raypriv.synth.distill.packed import dm_pack_memory_bytes, dm_packable, synthesize_dm_pack
from raypriv.synth.distill.packed_gradient import gradient_packable, synthesize_gradient_pack
from raypriv.synth.distill.packed_trajectories import (
    synthesize_trajectories_pack,
    trajectories_packable,
    trajectory_pack_memory_bytes,
)

PackRunner = Callable[[Any, list[LabeledSet], list[ShadowContext]], list[LabeledSet | Exception]]


class PackedMethod(NamedTuple):
    """One method's batched pack."""

    runs: Callable[[DistillOptions], bool]  # does the batched code run these options?
    synthesize: PackRunner
    # one packed pipeline's working memory in bytes: (options, input_shape, num_classes, private_size) -> bytes
    memory_bytes: Callable[[DistillOptions, tuple[int, ...], int, int], int]
    bit_exact: bool  # a packed set equals the single run's bit for bit (on a CPU)


PACKED_METHODS: dict[str, PackedMethod] = {
    # grouped convolutions in the single run's rounding (packed.py, "Equality")
    "dm": PackedMethod(dm_packable, synthesize_dm_pack, dm_pack_memory_bytes, bit_exact=True),
    # the batched backward sums in another order, and gradient matching amplifies it (packed_gradient.py)
    "dc": PackedMethod(gradient_packable, synthesize_gradient_pack, dm_pack_memory_bytes, bit_exact=False),
    "dsa": PackedMethod(gradient_packable, synthesize_gradient_pack, dm_pack_memory_bytes, bit_exact=False),
    # the same for the unrolled students (packed_trajectories.py)
    "mtt": PackedMethod(trajectories_packable, synthesize_trajectories_pack, trajectory_pack_memory_bytes, bit_exact=False),
    "datm": PackedMethod(trajectories_packable, synthesize_trajectories_pack, trajectory_pack_memory_bytes, bit_exact=False),
}


def packed_method(options: DistillOptions) -> PackedMethod | None:
    """The batched pack that runs these options, or None (the pack then runs one pipeline at a time)."""
    entry = PACKED_METHODS.get(options.method)
    if entry is None or not entry.runs(options):
        return None
    return entry
