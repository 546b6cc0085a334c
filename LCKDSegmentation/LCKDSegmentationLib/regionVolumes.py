"""Tumour region volumes in millilitres, measured on the segmentation node itself (so they follow
the user's edits): ET = enhancing tumour, TC = necrosis + ET, WT = necrosis + oedema + ET.

Segments are recognised by the role tag the import sets, else by their terminology type code,
else by their name; other segments are ignored.
"""

from __future__ import annotations

from typing import Dict

import numpy as np

from .i18n import translator
from .segmentationImport import ROLE_TAG

_ = translator(__file__)

REGION_ROLES = {"ET": ("ET",), "TC": ("NCR", "ET"), "WT": ("NCR", "ED", "ET")}
_ROLE_OF_CODE = {"6574001": "NCR", "79654002": "ED", "C113842": "ET"}
_ROLE_OF_NAME = {"necrosis": "NCR", "oedema": "ED", "edema": "ED", "enhancing tumour": "ET", "enhancing tumor": "ET"}


def segmentRole(segment) -> str:
    """``NCR``, ``ED``, ``ET`` or ``""`` for a vtkSegment."""
    import vtk

    value = vtk.reference("")
    if segment.GetTag(ROLE_TAG, value) and value.get():
        return value.get()
    import slicer

    if segment.GetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), value):
        fields = value.get().split("~")
        if len(fields) > 2:
            code = fields[2].split("^")
            if len(code) > 1 and code[1] in _ROLE_OF_CODE:
                return _ROLE_OF_CODE[code[1]]
    return _ROLE_OF_NAME.get(segment.GetName().lower(), "")


def _worldVolumeScale(segmentationNode) -> float:
    """Volume factor of the node's parent transforms (1 without a transform or with a rigid one)."""
    import vtk

    parent = segmentationNode.GetParentTransformNode()
    if parent is None or not parent.IsTransformToWorldLinear():
        return 1.0
    matrix = vtk.vtkMatrix4x4()
    parent.GetMatrixTransformToWorld(matrix)
    return abs(float(np.linalg.det([[matrix.GetElement(r, c) for c in range(3)] for r in range(3)])))


def segmentVolumesMl(segmentationNode) -> Dict[str, float]:
    """Volume in mL of each tumour role (NCR, ED, ET) present in the segmentation node."""
    import slicer
    import vtk
    from vtkmodules.util import numpy_support

    volumes = {"NCR": 0.0, "ED": 0.0, "ET": 0.0}
    segmentation = segmentationNode.GetSegmentation()
    scale = _worldVolumeScale(segmentationNode)
    for index in range(segmentation.GetNumberOfSegments()):
        segmentId = segmentation.GetNthSegmentID(index)
        role = segmentRole(segmentation.GetSegment(segmentId))
        if role not in volumes:
            continue
        image = slicer.vtkOrientedImageData()
        segmentationNode.GetBinaryLabelmapRepresentation(segmentId, image)
        scalars = image.GetPointData().GetScalars() if image.GetPointData() else None
        if scalars is None:
            continue
        count = int(np.count_nonzero(numpy_support.vtk_to_numpy(scalars)))
        matrix = vtk.vtkMatrix4x4()
        image.GetImageToWorldMatrix(matrix)
        voxel = abs(float(np.linalg.det([[matrix.GetElement(r, c) for c in range(3)] for r in range(3)])))
        volumes[role] += count * voxel * scale / 1000.0
    return volumes


def regionVolumesMl(segmentationNode) -> Dict[str, float]:
    """ET, TC and WT in mL (BraTS regions) from the segmentation node."""
    roles = segmentVolumesMl(segmentationNode)
    return {region: sum(roles[role] for role in members) for region, members in REGION_ROLES.items()}


def regionNames() -> Dict[str, str]:
    """The regions' names in the application's language."""
    return {"ET": _("Enhancing tumour (ET)"), "TC": _("Tumour core (TC)"), "WT": _("Whole tumour (WT)")}


def volumesTable(volumes: Dict[str, float]):
    """Rows ``(region name, "12.34")`` in the order ET, TC, WT, for a table widget."""
    names = regionNames()
    return [(names[region], f"{volumes.get(region, 0.0):.2f}") for region in ("ET", "TC", "WT")]
