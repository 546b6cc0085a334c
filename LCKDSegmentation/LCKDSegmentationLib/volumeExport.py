"""Write volume nodes to NIfTI in world space (parent linear transforms applied), without changing
the scene: the voxels are written as they are, the transform goes into the file's affine."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def vtkMatrixToNumpy(matrix) -> np.ndarray:
    return np.array([[matrix.GetElement(row, column) for column in range(4)] for row in range(4)])


def worldIJKToRAS(volumeNode) -> np.ndarray:
    """The voxel-to-world (RAS) matrix of a volume node, with its parent transforms applied."""
    import vtk

    ijkToRas = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(ijkToRas)
    matrix = vtkMatrixToNumpy(ijkToRas)
    parent = volumeNode.GetParentTransformNode()
    if parent is not None:
        if not parent.IsTransformToWorldLinear():
            raise ValueError(f"Volume '{volumeNode.GetName()}' is under a non-linear transform; harden it first "
                             f"(Data module: right-click the transform, 'Harden transform').")
        toWorld = vtk.vtkMatrix4x4()
        parent.GetMatrixTransformToWorld(toWorld)
        matrix = vtkMatrixToNumpy(toWorld) @ matrix
    return matrix


def volumeArray(volumeNode) -> np.ndarray:
    """The voxels indexed ``[i, j, k]`` (a copy)."""
    from vtkmodules.util import numpy_support

    imageData = volumeNode.GetImageData()
    if imageData is None or imageData.GetPointData().GetScalars() is None:
        raise ValueError(f"Volume '{volumeNode.GetName()}' has no image data.")
    if imageData.GetNumberOfScalarComponents() != 1:
        raise ValueError(f"Volume '{volumeNode.GetName()}' has several components; a scalar volume is needed.")
    dims = imageData.GetDimensions()
    flat = numpy_support.vtk_to_numpy(imageData.GetPointData().GetScalars())
    return np.array(flat.reshape(dims[2], dims[1], dims[0]).transpose(2, 1, 0))


def exportVolume(volumeNode, path: Path) -> Path:
    """Write one volume node as NIfTI in world space."""
    from lckd.io import save_nifti

    return save_nifti(path, volumeArray(volumeNode), worldIJKToRAS(volumeNode))
