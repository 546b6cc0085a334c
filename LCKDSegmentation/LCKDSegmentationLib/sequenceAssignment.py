"""Assign loaded volumes to the FLAIR / T1 / T1ce / T2 slots from their names; check assignments.

Names are matched case-insensitively. Rules are tried in this order, so that the more specific
ones win: FLAIR (``flair``, ``t2f``), an explicitly post-contrast T1 (``t1ce``, ``t1c``, ``t1gd``,
``t1 post``, ``t1+c``), T2 (``t2``, ``t2w``; not T2*), any other contrast word (``post``,
``contrast``, ``gad``, ``gd``, ``ce``: a post-contrast T1 such as "MPRAGE post Gd"), then T1
(``t1``, ``t1n``, ``t1w``, ``mprage``).

Only plain scalar volumes are offered: label maps, vector (RGB), tensor and diffusion-weighted
volumes are subclasses of ``vtkMRMLScalarVolumeNode`` that the slots cannot take.
"""

from __future__ import annotations

import re
from typing import Dict, Iterable, List, Mapping, Optional, Set

from lckd.sequences import SEQUENCE_TITLES, SEQUENCES

from .i18n import translator

_ = translator(__file__)
PLAIN_SCALAR_VOLUME = "vtkMRMLScalarVolumeNode"

_RULES = (
    ("flair", re.compile(r"flair|(?<![0-9])t2[-_ ]?f(?![a-z0-9])", re.IGNORECASE)),
    ("t1ce", re.compile(r"(?<![0-9])t1[-_ ]?(?:ce|c|gd|gad|post|contrast|\+ ?c|\+ ?gd)(?![a-z0-9])", re.IGNORECASE)),
    ("t2", re.compile(r"(?<![0-9])t2(?![0-9]|\s*\*|[-_ ]?star)", re.IGNORECASE)),
    ("t1ce", re.compile(r"(?<![a-z])(?:post(?![-_ ]?op)(?![a-z])|postcontrast|contrast|gad(?:o|olinium)?|gd|ce)"
                        r"(?![a-z])", re.IGNORECASE)),
    ("t1", re.compile(r"(?<![0-9])t1(?![0-9])|mprage", re.IGNORECASE)),
)


def guessSequence(name: str) -> Optional[str]:
    """The sequence a volume name suggests (``flair``, ``t1ce``, ``t2``, ``t1``), or None."""
    for sequence, pattern in _RULES:
        if pattern.search(name):
            return sequence
    return None


def autoAssign(names: Iterable[str], taken: Iterable[str] = ()) -> Dict[str, str]:
    """The first volume name for each sequence slot, in the order the names are given.

    ``taken``: slots that are already filled and must not be proposed again.
    """
    assignment: Dict[str, str] = {}
    skip = set(taken)
    for name in names:
        sequence = guessSequence(name)
        if sequence is not None and sequence not in assignment and sequence not in skip:
            assignment[sequence] = name
    return assignment


def _identity(node) -> object:
    """Slicer nodes are compared by their MRML ID; other objects by identity."""
    getId = getattr(node, "GetID", None)
    nodeId = getId() if callable(getId) else None
    return nodeId if nodeId else id(node)


def isPlainScalarVolume(node) -> bool:
    """A grey-level volume node, not one of the scalar volume node's subclasses."""
    return node is not None and node.GetClassName() == PLAIN_SCALAR_VOLUME


class SlotAssigner:
    """Proposes loaded volumes for the empty slots; each volume is proposed once unless asked again."""

    def __init__(self) -> None:
        self.offered: Set[object] = set()

    def reset(self) -> None:
        self.offered.clear()

    def propose(self, selected: Mapping[str, object], loaded: Iterable[object],
                onlyNew: bool = True) -> Dict[str, object]:
        """``{sequence: node}`` for empty slots, from plain scalar volumes not in a slot yet.

        With ``onlyNew`` (on loading, on entering the module) volumes proposed before are skipped, so a
        slot the user emptied on purpose stays empty; without it every loaded volume is considered.
        """
        used = {_identity(node) for node in selected.values() if node is not None}
        candidates = [node for node in loaded if isPlainScalarVolume(node) and _identity(node) not in used
                      and not (onlyNew and _identity(node) in self.offered)]
        self.offered.update(_identity(node) for node in candidates)
        byName: Dict[str, object] = {}
        for node in candidates:
            byName.setdefault(node.GetName(), node)
        taken = [sequence for sequence, node in selected.items() if node is not None]
        names = autoAssign([node.GetName() for node in candidates], taken=taken)
        return {sequence: byName[name] for sequence, name in names.items()}


def assignmentProblems(assignment: Mapping[str, object]) -> List[str]:
    """User-readable reasons why ``{sequence: node or None}`` cannot be segmented (empty when fine)."""
    unknown = sorted(set(assignment) - set(SEQUENCES))
    if unknown:
        return [_("Unknown sequence slot(s): {slots}.").format(slots=", ".join(unknown))]
    chosen = {sequence: node for sequence, node in assignment.items() if node is not None}
    if not chosen:
        return [_("Select at least one input volume (FLAIR, T1, T1ce or T2).")]
    problems = []
    seen: Dict[object, str] = {}
    for sequence in SEQUENCES:
        node = chosen.get(sequence)
        if node is None:
            continue
        key = _identity(node)
        if key in seen:
            text = _("The same volume is selected as {first} and {second}; each slot needs its own volume.")
            problems.append(text.format(first=SEQUENCE_TITLES[seen[key]], second=SEQUENCE_TITLES[sequence]))
        else:
            seen[key] = sequence
    return problems


def checkAssignment(assignment: Mapping[str, object]) -> Dict[str, object]:
    """The non-empty slots in channel order; raises ValueError when none is set or a volume fills two."""
    problems = assignmentProblems(assignment)
    if problems:
        raise ValueError(" ".join(problems))
    return {sequence: assignment[sequence] for sequence in SEQUENCES if assignment.get(sequence) is not None}
