"""Assign loaded volumes to the FLAIR / T1 / T1ce / T2 slots from their names; check assignments."""

from __future__ import annotations

import re
from typing import Dict, Iterable, Mapping, Optional

from lckd.sequences import SEQUENCE_TITLES, SEQUENCES

# Checked in this order: the contrast-enhanced T1 patterns must win over plain T1.
_PATTERNS = (
    ("flair", re.compile(r"flair|t2f(?![a-z])|t2[-_ ]?fl", re.IGNORECASE)),
    ("t1ce", re.compile(r"t1[-_ ]?ce|t1c(?![a-z])|t1[-_ ]?gd|gad|post|contrast|t1[-_ ]?c[-_ ]|mprage[-_ ]?c",
                        re.IGNORECASE)),
    ("t2", re.compile(r"t2(?![-_ ]?(fl|f(?![a-z])))|t2w", re.IGNORECASE)),
    ("t1", re.compile(r"t1(?![0-9])|t1n|t1w|mprage", re.IGNORECASE)),
)


def guessSequence(name: str) -> Optional[str]:
    """The sequence a volume name suggests (``flair``, ``t1ce``, ``t2``, ``t1``), or None."""
    for sequence, pattern in _PATTERNS:
        if pattern.search(name):
            return sequence
    return None


def autoAssign(names: Iterable[str]) -> Dict[str, str]:
    """First volume name per sequence slot, in the order the names are given."""
    assignment: Dict[str, str] = {}
    for name in names:
        sequence = guessSequence(name)
        if sequence is not None and sequence not in assignment:
            assignment[sequence] = name
    return assignment


def checkAssignment(assignment: Mapping[str, object]) -> Dict[str, object]:
    """The non-empty slots; raises ValueError when no slot is set or one volume fills two slots."""
    chosen = {sequence: node for sequence, node in assignment.items() if node is not None}
    if not chosen:
        raise ValueError("Select at least one input volume (FLAIR, T1, T1ce or T2).")
    seen: Dict[int, str] = {}
    for sequence in SEQUENCES:
        node = chosen.get(sequence)
        if node is None:
            continue
        if id(node) in seen:
            raise ValueError(f"The same volume is selected as {SEQUENCE_TITLES[seen[id(node)]]} and "
                             f"{SEQUENCE_TITLES[sequence]}.")
        seen[id(node)] = sequence
    return chosen
