"""What each label of the output means in standard codes: the one table the Slicer module's segments
and the DICOM Segmentation objects both read.

The codes themselves (scheme, value, meaning, colour) live in the module's shipped terminology file,
``Resources/LCKDSegmentation.term.json`` (the dcmqi segment-context format Slicer loads); this module
says which of its types each BraTS label is, and in which anatomic region the segments lie.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict

TERMINOLOGY_FILE = Path(__file__).resolve().parent.parent / "Resources" / "LCKDSegmentation.term.json"
#: The anatomic region of every segment: (coding scheme, code value, code meaning).
BRAIN = ("SCT", "12738006", "Brain")
#: Segment name per BraTS label value (ET is 4, or 3 in the 2023 convention).
SEGMENTS = {1: "necrosis", 2: "oedema", 4: "enhancing tumour", 3: "enhancing tumour"}
#: The terminology type (its code value in the terminology file) of each segment name.
TYPE_CODES = {"necrosis": "6574001", "oedema": "79654002", "enhancing tumour": "C113842"}


def load_terminology(path: Path = TERMINOLOGY_FILE) -> Dict[str, Dict]:
    """The terminology's context name and its types by code value (scheme, meaning, colour, and the
    ``category`` each belongs to)."""
    document = json.loads(Path(path).read_text(encoding="utf-8"))
    types = {}
    for category in document["SegmentationCodes"]["Category"]:
        for entry in category["Type"]:
            types[entry["CodeValue"]] = dict(entry, category=category)
    return {"context": document["SegmentationCategoryTypeContextName"], "types": types}
