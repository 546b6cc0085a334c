"""What the application shows about a model: its card, the Dice expected for the chosen inputs
(from the model's own validation table over the 15 subsets), its teachers and importance weights.

The card is read with :func:`lckd.model_file.read_card` when the ``lckd`` package can be imported
in this process. Inside Slicer, before the module's Python packages are installed (nibabel is
needed by ``lckd.io``), the card is read from the safetensors header with the standard library
only, with the same refusals (pickles, zip checkpoints, files without an LCKD card).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from lckd.errors import ModelFileError
from lckd.sequences import SEQUENCE_TITLES, SEQUENCES, subset_key

from .i18n import translator

_ = translator(__file__)

CARD_KEY = "lckd_model_card"  # lckd.model_file.CARD_KEY (a test keeps them equal)
CARD_FORMAT = "lckd-model"
REGION_ORDER = ("ET", "TC", "WT")
_MAX_HEADER_BYTES = 100 * 1024 * 1024
PICKLE_PROTOCOLS = (b"\x02", b"\x03", b"\x04", b"\x05")  # lckd.model_file.PICKLE_PROTOCOLS (tested equal)


@dataclass
class ModelSummary:
    """The parts of a model card the module shows."""

    path: Path
    name: str = "unnamed"
    description: str = ""
    preset: str = ""
    method: str = ""
    teachers: Optional[Dict[str, Any]] = None
    importance: Optional[Dict[str, float]] = None
    validation: Optional[Dict[str, Any]] = None
    training: Dict[str, Any] = field(default_factory=dict)
    members: int = 1
    mirror_axes: List[int] = field(default_factory=list)  # the card's name: test-time mirroring's axes
    review_below: Optional[Dict[str, float]] = None  # the card's name: the quality estimate's review thresholds

    def averagedMembers(self, skipMirroring: bool = False) -> int:
        """How many members the segmenter averages: each network on each mirror image."""
        return self.members * (1 if skipMirroring else 2 ** len(self.mirror_axes))

    def expectedDice(self, sequences: Sequence[str]) -> Optional[Dict[str, float]]:
        """Validation Dice per region (ET, TC, WT) with exactly these input sequences, if known."""
        if not self.validation or not sequences:
            return None
        return self.validation.get("subsets", {}).get(subset_key(sequences))


def _headerCard(path: Path) -> Dict[str, Any]:
    """The card's values from the safetensors header, with the standard library only."""
    if not path.is_file():
        raise ModelFileError(f"{path}: model file not found")
    with open(path, "rb") as handle:
        head = handle.read(8)
        # a pickle starts with PROTO (0x80) and its protocol, 2-5; a safetensors header length may start with 0x80
        if head.startswith(b"PK\x03\x04") or (head[:1] == b"\x80" and head[1:2] in PICKLE_PROTOCOLS):
            raise ModelFileError(f"{path}: this is a pickle or a PyTorch checkpoint, not an LCKD model; "
                                 f"pickled files are never loaded (LCKD models are .safetensors files)")
        if len(head) < 8:
            raise ModelFileError(f"{path}: not an LCKD model file (too short)")
        (length,) = struct.unpack("<Q", head)
        if length < 2 or length > min(_MAX_HEADER_BYTES, path.stat().st_size - 8):
            raise ModelFileError(f"{path}: not an LCKD model file (no safetensors header)")
        raw = handle.read(length)
    try:
        header = json.loads(raw.decode("utf-8"))
        values = json.loads(header["__metadata__"][CARD_KEY])
    except (UnicodeDecodeError, ValueError, KeyError, TypeError):
        raise ModelFileError(f"{path}: a file without an LCKD model card; not an LCKD model") from None
    if not isinstance(values, dict) or values.get("format") != CARD_FORMAT:
        raise ModelFileError(f"{path}: not an LCKD model card")
    return values


def readModelSummary(path) -> ModelSummary:
    """The card of a model file (no torch, no weights read); raises ModelFileError for other files."""
    path = Path(path)
    try:
        from lckd.model_file import read_card
    except ImportError:  # inside Slicer before nibabel is installed
        values = _headerCard(path)
    else:
        card = read_card(path)
        values = dict(card.__dict__)
    known = {name for name in ModelSummary.__dataclass_fields__ if name != "path"}
    return ModelSummary(path=path, **{key: value for key, value in values.items()
                                      if key in known and value is not None})


def _scores(values: Dict[str, float]) -> str:
    return ", ".join(f"{region} {values[region]:.2f}" for region in REGION_ORDER if region in values)


def bestAddition(summary: ModelSummary, present: Sequence[str]):
    """The missing sequence whose addition raises the mean expected Dice most: (sequence, Dice) or None."""
    best = None
    for sequence in SEQUENCES:
        if sequence in present:
            continue
        dice = summary.expectedDice(list(present) + [sequence])
        if dice is None:
            continue
        mean = sum(dice.values()) / len(dice)
        if best is None or mean > best[2]:
            best = (sequence, dice, mean)
    return None if best is None else best[:2]


def expectationText(summary: ModelSummary, present: Sequence[str]) -> str:
    """What the chosen inputs are expected to give and what the missing sequences cost (Dice)."""
    if not present:
        return _("Select at least one input volume.")
    if not summary.validation and summary.training.get("validation_cases") == []:
        return _("This model was trained on every labelled case it had: no held-out case gives its expected "
                 "Dice. Its description says how its recipe scored on cases it did not see.")
    chosen = summary.expectedDice(present)
    if chosen is None:
        return _("This model has no validation table for this combination of sequences.")
    missing = [SEQUENCE_TITLES[s] for s in SEQUENCES if s not in present]
    lines = [_("Expected Dice with {inputs}: {scores}.").format(
        inputs=" + ".join(SEQUENCE_TITLES[s] for s in SEQUENCES if s in present), scores=_scores(chosen))]
    full = summary.expectedDice(SEQUENCES)
    if missing and full is not None:
        cost = {region: full[region] - chosen[region] for region in REGION_ORDER if region in full and region in chosen}
        lines.append(_("Missing {missing}: with all four sequences {scores} (cost {cost}).").format(
            missing=", ".join(missing), scores=_scores(full),
            cost=", ".join(f"{region} {value:+.2f}" for region, value in cost.items())))
        addition = bestAddition(summary, present)
        if addition is not None and len(missing) > 1:
            lines.append(_("Adding {sequence} would help most: {scores}.").format(
                sequence=SEQUENCE_TITLES[addition[0]], scores=_scores(addition[1])))
    elif not missing:
        lines.append(_("All four sequences are available."))
    cases = (summary.validation or {}).get("cases")
    if cases:
        lines.append(_("Measured on {cases} validation cases of the model's training data.").format(cases=cases))
    return "\n".join(lines)


def _teachersText(perRegion: Dict[str, str]) -> str:
    return ", ".join(f"{region} {SEQUENCE_TITLES.get(sequence, sequence)}"
                     for region, sequence in sorted(perRegion.items()))


def _importanceText(importance: Dict[str, float]) -> str:
    return ", ".join(f"{SEQUENCE_TITLES.get(sequence, sequence)} {weight:.2f}"
                     for sequence, weight in importance.items())


def _perNetworkLines(label: str, values: List[Any], describe) -> List[str]:
    """One line when every network has the same value, else one line per network that has one."""
    if not any(values):
        return []
    if all(value == values[0] for value in values):
        return [_("{label} (the same in all {count} networks): {values}.").format(
            label=label, count=len(values), values=describe(values[0]))]
    return [_("{label}, network {index}: {values}.").format(label=label, index=index, values=describe(value))
            for index, value in enumerate(values, start=1) if value]


def _memberLines(summary: ModelSummary) -> List[str]:
    """An ensemble's elected teachers and importance weights, from its members' cards."""
    members = summary.training.get("members") or []
    teachers = [(member.get("teachers") or {}).get("per_region") for member in members]
    importance = [member.get("importance") for member in members]
    return (_perNetworkLines(_("Elected teachers"), teachers, _teachersText)
            + _perNetworkLines(_("Learned importance weights"), importance, _importanceText))


def modelText(summary: ModelSummary) -> str:
    """The model's method, elected teachers (LCKD) or learned importance weights (MetaKD); an ensemble's
    come from its members' cards."""
    lines: List[str] = []
    if summary.description:
        lines.append(summary.description)
    lines.append(_("Method: {method}; network: {preset}.").format(method=summary.method or "?",
                                                                   preset=summary.preset or "?"))
    if summary.members > 1:
        lines.append(_("Ensemble of {count} networks; their probabilities are averaged.").format(
            count=summary.members))
    perRegion = (summary.teachers or {}).get("per_region") or {}
    if perRegion:
        lines.append(_("Elected teachers: {teachers}.").format(teachers=_teachersText(perRegion)))
    if summary.importance:
        lines.append(_("Learned importance weights: {weights}.").format(weights=_importanceText(summary.importance)))
    if summary.members > 1 and not perRegion and not summary.importance:
        lines.extend(_memberLines(summary))
    if summary.review_below:
        lines.append(_("A region is flagged for review when its quality estimate is below {thresholds}.").format(
            thresholds=_scores(summary.review_below)))
    return "\n".join(lines)
