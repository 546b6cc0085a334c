"""What the panel shows for the current slots, model and job, decided without Qt."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional

from .i18n import translator
from .modelCard import ModelSummary, expectationText
from .sequenceAssignment import assignmentProblems

_ = translator(__file__)


@dataclass
class PanelState:
    problems: str  #: why Segment is disabled (empty while no slot is filled)
    segmentEnabled: bool
    segmentText: str  #: Segment, or Cancel while a job runs
    segmentToolTip: str
    editable: bool  #: slots, model, device and package buttons (locked while a job runs)
    expectation: str  #: the expected Dice for the chosen inputs and what the missing ones cost
    review: str = ""  #: the latest run's review message (regions the segmenter was unsure of)


def panelState(selected: Mapping[str, object], running: bool, summary: Optional[ModelSummary],
               review: str = "") -> PanelState:
    """The panel for ``{sequence: node or None}``, a running job or not, the chosen model's card and the latest
    run's review message."""
    problems = " ".join(assignmentProblems(selected))
    present = [sequence for sequence, node in selected.items() if node is not None]
    if running:
        toolTip = _("Stop the segmentation; the scene is left as it was")
    else:
        toolTip = problems or _("Segment the tumour")
    return PanelState(problems=problems if present else "", segmentEnabled=running or not problems,
                      segmentText=_("Cancel") if running else _("Segment"), segmentToolTip=toolTip,
                      editable=not running,
                      expectation=expectationText(summary, present) if summary is not None and present else "",
                      review=review)
