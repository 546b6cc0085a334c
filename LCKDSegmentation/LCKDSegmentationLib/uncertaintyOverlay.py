"""The segmenter's voxel uncertainty map (``lckd segment --uncertainty``) as a coloured overlay: a scalar
volume node on the reference volume's geometry, shown through the module's colour table with its
certain voxels (values below :data:`SHOW_ABOVE`) transparent in the slice views.

The map lies between 0 (every averaged member certain) and 1 (the most uncertain a voxel can be);
see Resources/Docs/Inference.md, "Uncertainty".
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .segmentationImport import placeInStudy, placementOnReference, removeNode, volumeNodeFromArray

#: The colour table's name; the module makes it once per scene.
COLOR_NODE_NAME = "LCKD uncertainty"
#: Voxels below this value are transparent; the colours span it to 1.
SHOW_ABOVE = 0.25
#: The colour ramp from barely uncertain to most uncertain (RGB 0-1): sky blue to magenta, away from
#: the tumour segments' salmon, green and light yellow.
LOW_COLOR = (0.30, 0.65, 1.00)
HIGH_COLOR = (1.00, 0.00, 0.85)
COLORS = 256


def uncertaintyColorNode(scene):
    """The scene's uncertainty colour table, made on first use; returns (node, whether it was made now)."""
    nodes = scene.GetNodesByClassByName("vtkMRMLColorTableNode", COLOR_NODE_NAME)
    if nodes.GetNumberOfItems() > 0:
        return nodes.GetItemAsObject(0), False
    node = scene.AddNewNodeByClass("vtkMRMLColorTableNode", COLOR_NODE_NAME)
    node.SetTypeToUser()
    node.SetNumberOfColors(COLORS)
    for index, weight in enumerate(np.linspace(0.0, 1.0, COLORS)):
        red, green, blue = (low + weight * (high - low) for low, high in zip(LOW_COLOR, HIGH_COLOR))
        node.SetColor(index, f"{weight:.2f}", red, green, blue, 1.0)
    return node, True


def showAsOverlay(volumeNode, colorNode) -> None:
    """Colour the map with ``colorNode`` from :data:`SHOW_ABOVE` to 1; lower (certain) voxels transparent."""
    volumeNode.CreateDefaultDisplayNodes()
    display = volumeNode.GetDisplayNode()
    display.SetAndObserveColorNodeID(colorNode.GetID())
    display.SetAutoWindowLevel(False)
    display.SetWindowLevelMinMax(SHOW_ABOVE, 1.0)
    display.SetAutoThreshold(False)
    display.SetThreshold(SHOW_ABOVE, 1.0)
    display.SetApplyThreshold(True)
    display.SetInterpolate(False)


def importUncertaintyMap(scene, mapPath: Path, name: str, referenceVolumeNode=None):
    """A new scalar volume node from an uncertainty map file, shown as an overlay; returns it. Nothing is
    left behind on failure."""
    import nibabel as nib

    image = nib.load(str(mapPath))
    values = np.asarray(image.dataobj, dtype=np.float32)
    if values.ndim != 3 or not np.isfinite(values).all() or values.min() < 0 or values.max() > 1:
        raise ValueError(f"{mapPath}: not an uncertainty map (3-D, values 0 to 1)")
    ijkToRAS, transformNodeId, _shares = placementOnReference(referenceVolumeNode, values, image.affine)
    colorNode, made = uncertaintyColorNode(scene)
    node = None
    try:
        node = volumeNodeFromArray(scene, "vtkMRMLScalarVolumeNode", values, ijkToRAS, name)
        node.SetAndObserveTransformNodeID(transformNodeId)
        showAsOverlay(node, colorNode)
        if referenceVolumeNode is not None:
            placeInStudy(scene, node, referenceVolumeNode)
    except Exception:
        if node is not None:
            removeNode(scene, node)
        if made:
            scene.RemoveNode(colorNode)
        raise
    return node
