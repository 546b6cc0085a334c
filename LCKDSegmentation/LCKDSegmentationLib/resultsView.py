"""What the panel shows after a run, decided without Qt: the Results table (region volumes and the segmenter's
quality estimate), the review message of the regions it flagged, and the slice views' layers (the reference
volume, with the uncertainty map over it when there is one)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Mapping, Sequence, Tuple

from .i18n import translator
from .regionVolumes import regionNames, volumesTable

_ = translator(__file__)

#: How opaque the uncertainty overlay is over the reference volume in the slice views.
UNCERTAINTY_OPACITY = 0.6


@dataclass
class ResultsView:
    """``cells``: ``{(row, column): text}`` of the Results table; ``review``: the message for the user (empty
    when nothing is flagged); ``layers``: keywords for ``slicer.util.setSliceViewerLayers``."""

    rows: int
    cells: Dict[Tuple[int, int], str]
    review: str
    layers: Dict[str, object] = field(default_factory=dict)


def qualityText(region: str, quality: Mapping[str, float], review: Sequence[str]) -> str:
    """The Quality column: the estimate (0 to 1), marked when the region is flagged; empty without an estimate."""
    if region not in quality:
        return ""
    value = f"{quality[region]:.2f}"
    return _("{value} (review)").format(value=value) if region in review else value


def reviewText(review: Sequence[str]) -> str:
    """One sentence per flagged region, in the order ET, TC, WT."""
    names = regionNames()
    return " ".join(_("{region} uncertain: review it.").format(region=names[region])
                    for region in ("ET", "TC", "WT") if region in review)


def resultsView(result, referenceNode) -> ResultsView:
    """The view of a finished run's :class:`LCKDSegmentationLib.logic.SegmentationResult`."""
    cells: Dict[Tuple[int, int], str] = {}
    volumes = volumesTable(result.volumesMl)
    for row, (region, (name, volume)) in enumerate(zip(("ET", "TC", "WT"), volumes)):
        cells.update({(row, 0): name, (row, 1): volume, (row, 2): qualityText(region, result.quality, result.review)})
    layers: Dict[str, object] = {"background": referenceNode}
    if result.uncertaintyNode is not None:
        layers.update(foreground=result.uncertaintyNode, foregroundOpacity=UNCERTAINTY_OPACITY)
    return ResultsView(rows=len(volumes), cells=cells, review=reviewText(result.review), layers=layers)
