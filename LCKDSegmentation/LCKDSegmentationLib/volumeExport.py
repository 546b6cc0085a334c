"""Write volume nodes to NIfTI in world space, never changing the user's nodes or scene.

* No parent transform: the voxels and the node's IJK-to-RAS matrix are written as they are.
* Linear parent transforms: the voxels are written as they are and the transform to world goes
  into the file's affine (exact, no resampling).
* Non-linear parent transforms: the volume is cloned into a private scene, the transform to world
  is hardened on the clone (Slicer resamples it), and the clone is written.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def vtkMatrixToNumpy(matrix) -> np.ndarray:
    return np.array([[matrix.GetElement(row, column) for column in range(4)] for row in range(4)])


def numpyToVtkMatrix(array):
    import vtk

    matrix = vtk.vtkMatrix4x4()
    for row in range(4):
        for column in range(4):
            matrix.SetElement(row, column, float(array[row][column]))
    return matrix


def localIJKToRAS(volumeNode) -> np.ndarray:
    """The node's own voxel-to-RAS matrix (its parent transforms ignored)."""
    import vtk

    ijkToRas = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(ijkToRas)
    return vtkMatrixToNumpy(ijkToRas)


def isUnderNonLinearTransform(volumeNode) -> bool:
    parent = volumeNode.GetParentTransformNode()
    return parent is not None and not parent.IsTransformToWorldLinear()


def worldIJKToRAS(volumeNode) -> np.ndarray:
    """The voxel-to-world (RAS) matrix of a volume node with its linear parent transforms applied."""
    import vtk

    matrix = localIJKToRAS(volumeNode)
    parent = volumeNode.GetParentTransformNode()
    if parent is not None:
        if not parent.IsTransformToWorldLinear():
            raise ValueError(f"Volume '{volumeNode.GetName()}' is under a non-linear transform: it has no single "
                             f"voxel-to-world matrix.")
        toWorld = vtk.vtkMatrix4x4()
        parent.GetMatrixTransformToWorld(toWorld)
        matrix = vtkMatrixToNumpy(toWorld) @ matrix
    return matrix


def volumeArray(volumeNode) -> np.ndarray:
    """The voxels indexed ``[i, j, k]`` (a copy)."""
    from vtkmodules.util import numpy_support

    imageData = volumeNode.GetImageData()
    if imageData is None or imageData.GetPointData() is None or imageData.GetPointData().GetScalars() is None:
        raise ValueError(f"Volume '{volumeNode.GetName()}' has no image data.")
    if imageData.GetNumberOfScalarComponents() != 1:
        raise ValueError(f"Volume '{volumeNode.GetName()}' has {imageData.GetNumberOfScalarComponents()} components "
                         f"per voxel; a scalar (grey-level) volume is needed.")
    dims = imageData.GetDimensions()
    if min(dims) < 2:
        raise ValueError(f"Volume '{volumeNode.GetName()}' is not a 3-D volume (dimensions {tuple(dims)}).")
    flat = numpy_support.vtk_to_numpy(imageData.GetPointData().GetScalars())
    return np.array(flat.reshape(dims[2], dims[1], dims[0]).transpose(2, 1, 0))


def hardenedClone(volumeNode):
    """A copy of ``volumeNode`` in a private scene with its transform to world hardened (resampled).

    The user's node, its transform and its scene are not touched. Returns the clone and
    the private scene too: keep a reference to it while the clone is used.
    """
    import slicer
    import vtk

    scene = slicer.vtkMRMLScene()
    clone = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", volumeNode.GetName())
    clone.CopyOrientation(volumeNode)
    image = vtk.vtkImageData()
    image.DeepCopy(volumeNode.GetImageData())
    clone.SetAndObserveImageData(image)
    toWorld = vtk.vtkGeneralTransform()
    volumeNode.GetParentTransformNode().GetTransformToWorld(toWorld)
    transformNode = scene.AddNewNodeByClass("vtkMRMLTransformNode", "toWorld")
    transformNode.SetAndObserveTransformToParent(toWorld)
    clone.SetAndObserveTransformNodeID(transformNode.GetID())
    if not slicer.vtkSlicerTransformLogic.hardenTransform(clone):
        raise ValueError(f"Could not apply the non-linear transform of volume '{volumeNode.GetName()}'.")
    return clone, scene


def exportVolume(volumeNode, path: Path) -> Path:
    """Write one volume node as NIfTI in world space (see the module docstring)."""
    from lckd.io import save_nifti

    if isUnderNonLinearTransform(volumeNode):
        clone, _scene = hardenedClone(volumeNode)
        return save_nifti(path, volumeArray(clone), localIJKToRAS(clone))
    return save_nifti(path, volumeArray(volumeNode), worldIJKToRAS(volumeNode))
