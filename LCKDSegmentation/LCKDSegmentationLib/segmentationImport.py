"""Label map file -> segmentation node: one named, coloured segment per tumour label with a
standard terminology entry, reference geometry from the label map's (reference input's) grid,
placed in the reference volume's study."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict

import numpy as np

TERMINOLOGY_FILE = Path(__file__).resolve().parent.parent / "Resources" / "LCKDSegmentation.term.json"
CONTEXT_NAME = "LCKDSegmentation brain tumour"
ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"
BRAIN = ("SCT", "12738006", "Brain")
#: Segment name and terminology type per BraTS label value (ET: 4, or 3 in the 2023 convention).
SEGMENTS = {1: "necrosis", 2: "oedema", 4: "enhancing tumour", 3: "enhancing tumour"}
_TYPE_OF = {"necrosis": "6574001", "oedema": "79654002", "enhancing tumour": "C113842"}


def loadTerminology(path: Path = TERMINOLOGY_FILE) -> Dict[str, Dict]:
    """Types of the shipped terminology by code value: scheme, meaning, colour, category."""
    document = json.loads(Path(path).read_text())
    types = {}
    for category in document["SegmentationCodes"]["Category"]:
        for entry in category["Type"]:
            types[entry["CodeValue"]] = dict(entry, category=category)
    return types


def terminologyEntry(code: Dict) -> str:
    """Slicer's terminology entry string for a type of the shipped context, in the brain."""
    category = code["category"]
    return "~".join([
        CONTEXT_NAME,
        f"{category['CodingSchemeDesignator']}^{category['CodeValue']}^{category['CodeMeaning']}",
        f"{code['CodingSchemeDesignator']}^{code['CodeValue']}^{code['CodeMeaning']}",
        "^^",
        ANATOMIC_CONTEXT,
        "^".join(BRAIN),
        "^^",
    ])


def _matrixFromNumpy(array: np.ndarray):
    import vtk

    matrix = vtk.vtkMatrix4x4()
    for row in range(4):
        for column in range(4):
            matrix.SetElement(row, column, float(array[row, column]))
    return matrix


def addLabelMapNode(scene, labels: np.ndarray, affine: np.ndarray, name: str):
    """A vtkMRMLLabelMapVolumeNode holding ``labels`` (indexed [i, j, k]) on ``affine``."""
    import vtk
    from vtkmodules.util import numpy_support

    imageData = vtk.vtkImageData()
    imageData.SetDimensions(*labels.shape)
    flat = np.ascontiguousarray(labels.transpose(2, 1, 0)).ravel().astype(np.uint8)
    scalars = numpy_support.numpy_to_vtk(flat, deep=True, array_type=vtk.VTK_UNSIGNED_CHAR)
    imageData.GetPointData().SetScalars(scalars)
    node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", name)
    node.SetIJKToRASMatrix(_matrixFromNumpy(affine))
    node.SetAndObserveImageData(imageData)
    return node


def importLabelMap(scene, labelPath: Path, name: str, referenceVolumeNode=None):
    """A new segmentation node from a BraTS label map file; returns it."""
    import nibabel as nib
    import slicer

    image = nib.load(str(labelPath))
    labels = np.asarray(image.dataobj).astype(np.uint8)
    labelNode = addLabelMapNode(scene, labels, image.affine, name + " labels")
    try:
        segmentationNode = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
        segmentationNode.CreateDefaultDisplayNodes()
        segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(labelNode)
        if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelNode, segmentationNode):
            scene.RemoveNode(segmentationNode)
            raise RuntimeError(f"Could not import {labelPath} as a segmentation.")
    finally:
        scene.RemoveNode(labelNode)
    describeSegments(segmentationNode)
    if referenceVolumeNode is not None:
        placeInStudy(scene, segmentationNode, referenceVolumeNode)
    return segmentationNode


def describeSegments(segmentationNode) -> None:
    """Name, colour and terminology tag for each segment, by its label value."""
    import slicer

    types = loadTerminology()
    segmentation = segmentationNode.GetSegmentation()
    for index in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(index)
        label = int(segment.GetLabelValue())
        title = SEGMENTS.get(label)
        if title is None:
            continue
        code = types[_TYPE_OF[title]]
        segment.SetName(title)
        segment.SetColor(*[value / 255.0 for value in code["recommendedDisplayRGBValue"]])
        segment.SetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), terminologyEntry(code))


def placeInStudy(scene, node, referenceVolumeNode) -> None:
    """Put ``node`` under the reference volume's parent (its study) in the subject hierarchy."""
    import slicer

    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    if hierarchy is None:
        return
    referenceItem = hierarchy.GetItemByDataNode(referenceVolumeNode)
    item = hierarchy.GetItemByDataNode(node)
    if referenceItem and item:
        hierarchy.SetItemParent(item, hierarchy.GetItemParent(referenceItem))

