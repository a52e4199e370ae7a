"""Which position each ID slot takes (left to right, batch order or an explicit ``order``), and the
ID-count errors that say what to change."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

logger = logging.getLogger(__name__)

# What a position is called for each source: (singular, plural, "the pose has" phrase, fix).
_SOURCES = {
    "pose": ("person", "people", "the pose has", "use a pose with {n} people"),
    "template": ("face", "faces", "the template image has", "use a template image with {n} faces"),
    "masks": ("mask", "masks", "the mask batch has", "give one mask per ID"),
}


def count_words(n: int, singular: str, plural: str) -> str:
    """'1 ID' / '3 IDs'."""
    return f"{n} {singular if n == 1 else plural}"


def _source(source: str) -> tuple[str, str, str, str]:
    if source not in _SOURCES:
        raise ValueError(f"unknown face region source {source!r}; expected one of {sorted(_SOURCES)}")
    return _SOURCES[source]


def check_id_count(n_ids: int, n_positions: int, source: str) -> None:
    """Raise ValueError when the stack has more IDs than the source has positions."""
    singular, plural, has, fix = _source(source)
    if n_ids > n_positions:
        raise ValueError(
            f"{count_words(n_ids, 'ID', 'IDs')} in the stack but {has} {count_words(n_positions, singular, plural)}: "
            f"remove an ID or {fix.format(n=n_ids)}"
        )


def parse_order(order: str | Sequence[int] | None) -> list[int] | None:
    """``"2,0,1"`` -> [2, 0, 1]; empty / None -> None (default order)."""
    if order is None:
        return None
    if isinstance(order, str):
        text = order.replace(";", ",").replace(" ", ",")
        parts = [p for p in text.split(",") if p.strip()]
        if not parts:
            return None
        try:
            return [int(p) for p in parts]
        except ValueError:
            raise ValueError(f"order {order!r}: write position numbers separated by commas, e.g. '2,0,1'") from None
    return [int(v) for v in order]


def assign_slots(ranked: Sequence[int], n_ids: int | None, order: str | Sequence[int] | None, source: str) -> list[int]:
    """Which position each ID slot takes.

    ranked: the positions' item indices in user-visible order (left to right, or batch order).
    n_ids: IDs in the stack (None: one slot per position, or per ``order`` entry).
    Returns for each slot the item index (an entry of ``ranked``).
    """
    singular, plural, has, _ = _source(source)
    n_positions = len(ranked)
    picks = parse_order(order)
    if picks is not None:
        if n_ids is not None and len(picks) != n_ids:
            raise ValueError(
                f"order {order!r} lists {count_words(len(picks), 'position', 'positions')} but the stack has "
                f"{count_words(n_ids, 'ID', 'IDs')}: list one position per ID"
            )
        numbering = "from left to right" if source != "masks" else "in batch order"
        for value in picks:
            if not 0 <= value < n_positions:
                raise ValueError(
                    f"order {order!r}: position {value} does not exist; {has} "
                    f"{count_words(n_positions, singular, plural)}, numbered 0..{n_positions - 1} {numbering}"
                )
        duplicates = sorted({v for v in picks if picks.count(v) > 1})
        if duplicates:
            raise ValueError(f"order {order!r}: position {duplicates[0]} is given to more than one ID")
        return [ranked[v] for v in picks]
    n = n_positions if n_ids is None else n_ids
    check_id_count(n, n_positions, source)
    if n < n_positions:
        logger.info(
            "%s: %s, %s get an ID; the others get no face region", has, count_words(n_positions, singular, plural), n
        )
    return list(ranked[:n])


def left_to_right(centres: np.ndarray) -> list[int]:
    """Item indices sorted by centre x, then y. centres: (P, 2)."""
    centres = np.asarray(centres, dtype=np.float64).reshape(-1, 2)
    return sorted(range(len(centres)), key=lambda i: (centres[i, 0], centres[i, 1], i))
