"""The augmentation queries: how the attacks look at each audit sample.

Each trained model is queried on every audit sample once per name in
``config.queries``; the attacks fit one Gaussian per query and average over
them (see :mod:`raypriv.attacks`).  A fixed query is one entry in
:data:`QUERIES`: a name and a function of a batch ``(N, ...)``.

Shift queries are named ``shift(dx,dy)`` and ``hflip+shift(dx,dy)``: the
crop the training augmentation (:func:`raypriv.training.random_crop`) takes
at offset ``(dx, dy)`` from the centre, after the flip for ``hflip+``.  Both
pad with :func:`pad_for_crop`, the one padding the training crop uses, and
``|dx|, |dy|`` may not exceed ``train.crop_padding`` (checked in
:func:`expand_queries`).  Padding by ``max(|dx|, |dy|)`` instead of the full
crop padding gives the same pixels: the window never reaches further out.

A preset name in ``config.queries`` expands to its list
(:func:`expand_queries`): ``flip-2`` is ``[identity, hflip]``, and
``flip-shift-18`` is the reference protocol of Aerni et al. (CCS 2024), as
used by "Does Training with Synthetic Data Truly Protect Privacy?" (ICLR
2025): 2 flips x the 3x3 grid of shifts by ``-p, 0, p`` with ``p`` the crop
padding, ``identity`` first (the loss attack reads query 0).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Callable

from raypriv.errors import RayprivError

if TYPE_CHECKING:  # the names and presets are checked without torch (config validation, `raypriv status`)
    import torch


def pad_for_crop(x: torch.Tensor, padding: int) -> torch.Tensor:
    """Zero padding of ``padding`` pixels on every side: the training crop's and the shift queries' padding."""
    import torch.nn.functional as F

    return F.pad(x, (padding, padding, padding, padding))


def identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _require_images(x: torch.Tensor, query: str) -> None:
    if x.ndim != 4:
        raise RayprivError(f"the {query} query applies to images only; use queries: [identity] for tabular data")


def horizontal_flip(x: torch.Tensor) -> torch.Tensor:
    _require_images(x, "hflip")
    return x.flip(-1)


def shift_image(x: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    """The crop of ``x`` (``(N, C, H, W)``) at offset ``(dx, dy)`` from the centre: content moves by ``(-dx, -dy)``."""
    _require_images(x, "shift")
    pad = max(abs(dx), abs(dy))
    h, w = x.shape[-2:]
    return pad_for_crop(x, pad)[..., pad + dy : pad + dy + h, pad + dx : pad + dx + w]


# name -> (function, whether it needs images)
QUERIES: dict[str, tuple[Callable[["torch.Tensor"], "torch.Tensor"], bool]] = {
    "identity": (identity, False),
    "hflip": (horizontal_flip, True),
}

_SHIFT = re.compile(r"^(hflip\+)?shift\((-?\d+),(-?\d+)\)$")


def shift_query_name(dx: int, dy: int, flip: bool = False) -> str:
    """The query name of a shift (``identity``/``hflip`` for no shift)."""
    if dx == 0 and dy == 0:
        return "hflip" if flip else "identity"
    return f"{'hflip+' if flip else ''}shift({dx},{dy})"


def _preset_flip_shift_18(padding: int) -> list[str]:
    if padding < 1:
        raise RayprivError(
            "config: queries preset flip-shift-18 shifts by the crop padding, but train.crop_padding is 0; "
            "set train.crop_padding (the reference uses 4)"
        )
    offsets = (0, -padding, padding)
    return [shift_query_name(dx, dy, flip) for flip in (False, True) for dy in offsets for dx in offsets]


# preset name -> its query list for a crop padding
PRESETS: dict[str, Callable[[int], list[str]]] = {
    "flip-2": lambda padding: ["identity", "hflip"],
    "flip-shift-18": _preset_flip_shift_18,
}


def parse_shift(query: str) -> tuple[bool, int, int] | None:
    """``(flip, dx, dy)`` of a shift query name, None for any other name."""
    match = _SHIFT.match(query.replace(" ", ""))
    return None if match is None else (match.group(1) is not None, int(match.group(2)), int(match.group(3)))


def _known(query: str) -> bool:
    return query in QUERIES or parse_shift(query) is not None


def expand_queries(queries: list[str], crop_padding: int) -> list[str]:
    """``queries`` with each preset replaced by its list; unknown names and shifts beyond the padding are errors."""
    out: list[str] = []
    for query in queries:
        if query in PRESETS:
            out += PRESETS[query](crop_padding)
            continue
        if not _known(query):
            raise RayprivError(
                f"config: query {query!r} is not known; choose from {list(QUERIES)}, 'shift(dx,dy)', "
                f"'hflip+shift(dx,dy)' or a preset {list(PRESETS)}"
            )
        shift = parse_shift(query)
        if shift is not None and max(abs(shift[1]), abs(shift[2])) > crop_padding:
            raise RayprivError(
                f"config: query {query!r} shifts further than train.crop_padding={crop_padding}; the training crop "
                "never sees such an image: keep |dx|, |dy| <= the padding, or raise train.crop_padding"
            )
        out.append(query if shift is None else shift_query_name(shift[1], shift[2], shift[0]))
    duplicates = sorted({q for q in out if out.count(q) > 1})
    if duplicates:
        raise RayprivError(f"config: queries list {duplicates} more than once (after expanding presets)")
    return out


def apply_query(x: torch.Tensor, query: str) -> torch.Tensor:
    """``x`` as the query ``query`` shows it to the model."""
    if query in QUERIES:
        return QUERIES[query][0](x)
    shift = parse_shift(query)
    if shift is None:
        raise RayprivError(f"query {query!r} is not known; choose from {list(QUERIES)}, 'shift(dx,dy)' or 'hflip+shift(dx,dy)'")
    flip, dx, dy = shift
    return shift_image(horizontal_flip(x) if flip else x, dx, dy)


def image_queries(queries: list[str]) -> list[str]:
    """The queries of ``queries`` that only apply to images."""
    return [q for q in queries if (QUERIES[q][1] if q in QUERIES else parse_shift(q) is not None)]
