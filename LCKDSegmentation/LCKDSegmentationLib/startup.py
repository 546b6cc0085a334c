"""What the module registers once Slicer has started: its terminology and its sample data."""

from __future__ import annotations

import logging
from pathlib import Path

from .sampleData import registerSampleData

TERMINOLOGY = Path(__file__).resolve().parent.parent / "Resources" / "LCKDSegmentation.term.json"


def registerStartupItems(slicerModule=None) -> None:
    """Light work only: one JSON terminology file and the sample data source (no torch, no volumes)."""
    if slicerModule is None:
        import slicer as slicerModule
    try:
        slicerModule.modules.terminologies.logic().LoadTerminologyFromFile(str(TERMINOLOGY))
    except AttributeError:
        logging.warning("LCKDSegmentation: the Terminologies module is not available; segments keep their codes")
    try:
        import SampleData
    except ImportError:
        logging.warning("LCKDSegmentation: the Sample Data module is not available")
        return
    registerSampleData(SampleData)
