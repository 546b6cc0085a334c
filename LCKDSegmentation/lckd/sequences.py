"""MRI sequences, tumour regions and their canonical orders.

Every API and file of the project keeps the channel order ``flair, t1, t1ce, t2`` and the
region order ``ET, WT, TC`` (one sigmoid channel each).
"""

from __future__ import annotations

from itertools import combinations
from typing import Iterable, List, Sequence, Tuple

SEQUENCES: Tuple[str, ...] = ("flair", "t1", "t1ce", "t2")
REGIONS: Tuple[str, ...] = ("ET", "WT", "TC")
#: The order in which regions are reported (tables, quality estimates).
REPORTED_REGIONS: Tuple[str, ...] = ("ET", "TC", "WT")

#: Human-readable sequence names, used in messages and the Slicer module.
SEQUENCE_TITLES = {"flair": "FLAIR", "t1": "T1", "t1ce": "T1ce", "t2": "T2"}


def presence_mask(available: Iterable[str]) -> List[bool]:
    """Return ``[flair?, t1?, t1ce?, t2?]`` for a collection of sequence names."""
    names = set(available)
    unknown = names - set(SEQUENCES)
    if unknown:
        raise ValueError(f"unknown sequence name(s): {', '.join(sorted(unknown))}")
    return [name in names for name in SEQUENCES]


def subset_key(available: Iterable[str]) -> str:
    """Canonical key of a subset, e.g. ``"flair+t1ce"`` (names joined in channel order)."""
    mask = presence_mask(available)
    if not any(mask):
        raise ValueError("a subset needs at least one sequence")
    return "+".join(name for name, present in zip(SEQUENCES, mask) if present)


def all_subsets() -> List[Tuple[str, ...]]:
    """The 15 non-empty subsets of the four sequences, smallest first, in channel order."""
    return [combo for k in range(1, len(SEQUENCES) + 1) for combo in combinations(SEQUENCES, k)]


def ordered(available: Sequence[str]) -> Tuple[str, ...]:
    """The given sequence names sorted into channel order."""
    mask = presence_mask(available)
    return tuple(name for name, present in zip(SEQUENCES, mask) if present)
