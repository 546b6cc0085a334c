"""Label map file -> segmentation node: one named, coloured segment per tumour label with a standard
terminology entry (from the shipped ``LCKDSegmentation.term.json``), the reference input's geometry,
placed next to the reference volume in the subject hierarchy (its study).

When the reference volume sits under a linear transform, the label map (written on the reference's
world grid) is put back on the reference's own grid under the same transform, so that the
segmentation and the volume share one geometry (what DICOM SEG export needs). In every case the
segmentation's reference geometry points to the reference volume.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional

import numpy as np

from lckd.terminology import (
    BRAIN,
    SEGMENTS,
    TERMINOLOGY_FILE,  # noqa: F401  (imported from here by the module's callers)
    TYPE_CODES,
)
from lckd.terminology import load_terminology as loadTerminology

REGION_CONTEXT = "Anatomic codes - DICOM master list"
#: Segment tag holding the label's role, so region volumes survive renaming.
ROLE_TAG = "LCKDSegmentation.Role"
ROLES = {1: "NCR", 2: "ED", 4: "ET", 3: "ET"}


def _code(values: Dict) -> str:
    return f"{values['CodingSchemeDesignator']}^{values['CodeValue']}^{values['CodeMeaning']}"


def terminologyEntry(context: str, code: Dict) -> str:
    """Slicer's serialized terminology entry for a type of the shipped context, in the brain."""
    return "~".join([context, _code(code["category"]), _code(code), "^^", REGION_CONTEXT, "^".join(BRAIN), "^^"])


def volumeNodeFromArray(scene, className: str, voxels: np.ndarray, ijkToRAS: np.ndarray, name: str):
    """A new volume node of ``className`` holding ``voxels`` (indexed [i, j, k], uint8 or float32) with
    ``ijkToRAS``."""
    import vtk
    from vtkmodules.util import numpy_support

    from .volumeExport import numpyToVtkMatrix

    imageData = vtk.vtkImageData()
    imageData.SetDimensions(*voxels.shape)
    flat = np.ascontiguousarray(voxels.transpose(2, 1, 0)).ravel()
    vtkType = vtk.VTK_UNSIGNED_CHAR if voxels.dtype == np.uint8 else vtk.VTK_FLOAT
    imageData.GetPointData().SetScalars(numpy_support.numpy_to_vtk(flat, deep=True, array_type=vtkType))
    node = scene.AddNewNodeByClass(className, name)
    node.SetIJKToRASMatrix(numpyToVtkMatrix(ijkToRAS))
    node.SetAndObserveImageData(imageData)
    return node


def labelMapNodeFromArray(scene, labels: np.ndarray, ijkToRAS: np.ndarray, name: str):
    """A new vtkMRMLLabelMapVolumeNode holding ``labels`` (indexed [i, j, k]) with ``ijkToRAS``."""
    return volumeNodeFromArray(scene, "vtkMRMLLabelMapVolumeNode", np.asarray(labels, dtype=np.uint8), ijkToRAS, name)


def sharesReferenceGrid(referenceVolumeNode, voxels: np.ndarray, affine: np.ndarray) -> bool:
    """Whether a file's voxels lie on the reference volume's world grid."""
    from .volumeExport import isUnderNonLinearTransform, worldIJKToRAS

    if referenceVolumeNode is None or isUnderNonLinearTransform(referenceVolumeNode):
        return False
    imageData = referenceVolumeNode.GetImageData()
    if imageData is None or tuple(imageData.GetDimensions()) != tuple(voxels.shape):
        return False
    return bool(np.allclose(worldIJKToRAS(referenceVolumeNode), affine, atol=1e-3))


def placementOnReference(referenceVolumeNode, voxels: np.ndarray, affine: np.ndarray):
    """Where a file written on the reference's world grid goes in the scene: ``(ijkToRAS, transform node
    ID, shares)``: on the reference's own grid under its transform when the grids agree, else on the
    file's affine with no transform."""
    from .volumeExport import localIJKToRAS

    if sharesReferenceGrid(referenceVolumeNode, voxels, affine):
        return localIJKToRAS(referenceVolumeNode), referenceVolumeNode.GetTransformNodeID(), True
    return np.asarray(affine, dtype=float), None, False


def ensureConverterRules() -> None:
    """Register Slicer's labelmap <-> surface conversion rules where nobody did (the application's
    Segmentations module does it at start-up; a bare MRML library such as slicer-core does not).
    A segmentation copies the rules when it is created, so this runs before one is created."""
    import slicer

    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    rules = factory.GetConverterRules()
    if rules is not None and len(rules) > 0:
        return
    factory.RegisterConverterRule(slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule())
    factory.RegisterConverterRule(slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule())


def importLabelMap(scene, labelPath: Path, name: str, referenceVolumeNode=None, attributes: Optional[Dict] = None):
    """A new segmentation node from a BraTS label map file; returns it. Nothing is left behind on failure."""
    import nibabel as nib
    import slicer

    image = nib.load(str(labelPath))
    labels = np.asarray(image.dataobj).astype(np.uint8)
    ijkToRAS, transformNodeId, shares = placementOnReference(referenceVolumeNode, labels, image.affine)
    labelNode = labelMapNodeFromArray(scene, labels, ijkToRAS, name + " labels")
    segmentationNode = None
    try:
        labelNode.SetAndObserveTransformNodeID(transformNodeId)
        ensureConverterRules()
        segmentationNode = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
        segmentationNode.SetAndObserveTransformNodeID(transformNodeId)
        segmentationNode.CreateDefaultDisplayNodes()
        segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(referenceVolumeNode if shares else labelNode)
        if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelNode, segmentationNode):
            raise RuntimeError(f"Could not import {labelPath} as a segmentation.")
        if referenceVolumeNode is not None and not shares:
            # the label map's own grid was used for the import; the geometry reference (what DICOM SEG
            # export follows) is the reference volume, never the temporary label map node removed below
            segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(referenceVolumeNode)
        describeSegments(segmentationNode)
        for key, value in (attributes or {}).items():
            segmentationNode.SetAttribute(str(key), str(value))
        if referenceVolumeNode is not None:
            placeInStudy(scene, segmentationNode, referenceVolumeNode)
    except Exception:
        if segmentationNode is not None:
            removeNode(scene, segmentationNode)
        raise
    finally:
        removeNode(scene, labelNode)
    return segmentationNode


def removeNode(scene, node) -> None:
    """Remove a node with its display and storage nodes (the scene alone would leave them behind)."""
    for index in reversed(range(node.GetNumberOfDisplayNodes())):
        display = node.GetNthDisplayNode(index)
        if display is not None:
            scene.RemoveNode(display)
    storage = node.GetStorageNode()
    if storage is not None:
        scene.RemoveNode(storage)
    scene.RemoveNode(node)


def describeSegments(segmentationNode) -> None:
    """Name, colour, terminology entry and role tag for each segment, by its label value."""
    import slicer

    terminology = loadTerminology()
    segmentation = segmentationNode.GetSegmentation()
    for index in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(index)
        label = int(segment.GetLabelValue())
        title = SEGMENTS.get(label)
        if title is None:
            continue
        code = terminology["types"][TYPE_CODES[title]]
        segment.SetName(title)
        segment.SetColor(*[value / 255.0 for value in code["recommendedDisplayRGBValue"]])
        segment.SetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), terminologyEntry(terminology["context"], code))
        segment.SetTag(ROLE_TAG, ROLES[label])


def placeInStudy(scene, node, referenceVolumeNode) -> None:
    """Put ``node`` under the reference volume's parent item (its study) in the subject hierarchy."""
    import slicer

    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    if hierarchy is None:
        return
    referenceItem = hierarchy.GetItemByDataNode(referenceVolumeNode)
    if not referenceItem:
        return
    parent = hierarchy.GetItemParent(referenceItem)
    item = hierarchy.GetItemByDataNode(node)
    if item:
        hierarchy.SetItemParent(item, parent)
    else:
        hierarchy.CreateItem(parent, node)
