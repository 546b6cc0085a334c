"""Which image format a file holds, judged by its content, and reading the formats other than NIfTI.

NRRD (``.nrrd``, ``.nhdr``), MetaImage (``.mha``, ``.mhd``) and DICOM series (a folder of one
series) are read through SimpleITK, the library Slicer ships. ITK keeps geometry in LPS
millimetres (direction, spacing, origin); :func:`itk_affine` turns it into the voxel-to-RAS
affine that nibabel gives for the same image, so every later step treats all formats alike.
"""

from __future__ import annotations

import gzip
import re
from pathlib import Path
from typing import List, Sequence, Tuple

import numpy as np

from .errors import InputError

NIFTI1, NIFTI2, NRRD, METAIMAGE, DICOM = "NIfTI", "NIfTI-2", "NRRD", "MetaImage", "DICOM"
#: The format each file name ending suggests, used only when the content says nothing.
EXTENSION_FORMATS = ((".nii.gz", NIFTI1), (".nii", NIFTI1), (".hdr", NIFTI1), (".img", NIFTI1),
                     (".nrrd", NRRD), (".nhdr", NRRD), (".mha", METAIMAGE), (".mhd", METAIMAGE),
                     (".dcm", DICOM))
_ITK_IMAGE_IO = {NRRD: "NrrdImageIO", METAIMAGE: "MetaImageIO", DICOM: "GDCMImageIO"}
_METAIMAGE_KEY = re.compile(rb"\s*(ObjectType|NDims|DimSize|ElementType|ElementSpacing|ElementDataFile|Comment"
                            rb"|TransformMatrix|Offset|BinaryData)\s*=")
#: LPS (ITK) <-> RAS (NIfTI): x and y change sign.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def is_gzip(path: Path) -> bool:
    """Whether the file starts with the gzip magic number."""
    with open(path, "rb") as handle:
        return handle.read(2) == b"\x1f\x8b"


def detect_format(path: Path) -> str:
    """The format of ``path`` from its first bytes (gzip-compressed NIfTI included); the file name
    decides only when the content matches no known magic. ``""`` when neither tells."""
    with open(path, "rb") as handle:
        head = handle.read(1024)
    if head[:2] == b"\x1f\x8b":
        try:
            with gzip.open(path, "rb") as handle:
                head = handle.read(1024)
        except (OSError, EOFError):
            head = b""  # damaged gzip: let the name decide and the reader report the damage
    if len(head) >= 348 and head[344:348] in (b"n+1\x00", b"ni1\x00"):
        return NIFTI1
    if len(head) >= 540 and head[4:8] in (b"n+2\x00", b"ni2\x00"):
        return NIFTI2
    if head.startswith(b"NRRD000"):
        return NRRD
    if head[128:132] == b"DICM":
        return DICOM
    if _METAIMAGE_KEY.match(head):
        return METAIMAGE
    name = path.name.lower()
    return next((kind for ending, kind in EXTENSION_FORMATS if name.endswith(ending)), "")


def itk_affine(image) -> np.ndarray:
    """The voxel-to-RAS-mm affine of a SimpleITK image (its LPS direction, spacing and origin)."""
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = LPS_TO_RAS @ direction @ np.diag(np.asarray(image.GetSpacing(), dtype=np.float64))
    affine[:3, 3] = LPS_TO_RAS @ np.asarray(image.GetOrigin(), dtype=np.float64)
    return affine


def _simpleitk():
    try:
        import SimpleITK
    except ImportError:
        raise InputError("reading NRRD, MetaImage and DICOM needs SimpleITK (pip install SimpleITK)") from None
    SimpleITK.ProcessObject_SetGlobalWarningDisplay(False)  # ITK's warnings would break the one-line promise
    return SimpleITK


def _itk_message(error: Exception) -> str:
    """The last informative line of an ITK exception (they span several lines, with source paths)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    meaningful = [line for line in lines if not line.startswith(("Exception thrown", "/", "sitk::ERROR: Exception"))]
    return (meaningful or lines or [type(error).__name__])[-1]


def read_with_simpleitk(path: Path, kind: str) -> Tuple[np.ndarray, np.ndarray]:
    """Read an NRRD, MetaImage or single DICOM file as (data indexed [i, j, k], RAS affine)."""
    sitk = _simpleitk()
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.SetImageIO(_ITK_IMAGE_IO[kind])
    try:
        image = reader.Execute()
    except RuntimeError as error:
        raise InputError(f"{path}: not a readable {kind} image ({_itk_message(error)})") from None
    if kind == DICOM and (image.GetDimension() == 2 or image.GetDepth() <= 1):
        raise InputError(f"{path}: a single DICOM slice; give the folder that holds the whole series")
    return _to_arrays(path, image)


def dicom_series(folder: Path) -> List[str]:
    """The DICOM series identifiers of the files directly in ``folder`` (not its sub-folders)."""
    sitk = _simpleitk()
    return list(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))


def read_dicom_series(folder: Path) -> Tuple[np.ndarray, np.ndarray]:
    """Read the one DICOM series in ``folder``; refuses a folder of none or of several (naming them)."""
    try:
        sitk = _simpleitk()
    except InputError:
        raise InputError(f"{folder}: is a folder, not an image file (DICOM series folders are read with "
                         f"SimpleITK, which is not installed)") from None
    series = dicom_series(folder)
    if not series:
        raise InputError(f"{folder}: is a folder, not an image file (and it holds no DICOM series)")
    if len(series) > 1:
        described = "; ".join(_describe_series(sitk, folder, uid) for uid in series)
        raise InputError(f"{folder}: holds {len(series)} DICOM series ({described}); give a folder with one series")
    return read_dicom_files(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series[0]), folder)


def read_dicom_files(files: Sequence[Path], source: Path) -> Tuple[np.ndarray, np.ndarray]:
    """Read the DICOM files of one series, in slice order, as one volume; errors name ``source``."""
    sitk = _simpleitk()
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(path) for path in files])
    try:
        image = reader.Execute()
    except RuntimeError as error:
        raise InputError(f"{source}: not a readable DICOM series ({_itk_message(error)})") from None
    return _to_arrays(source, image)


def _describe_series(sitk, folder: Path, uid: str) -> str:
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid)
    description = ""
    try:
        reader = sitk.ImageFileReader()
        reader.SetFileName(files[0])
        reader.ReadImageInformation()
        if reader.HasMetaDataKey("0008|103e"):
            description = reader.GetMetaData("0008|103e").strip()
    except RuntimeError:
        pass
    return f"{uid}{' ' + repr(description) if description else ''}, {len(files)} files"


def _to_arrays(path: Path, image) -> Tuple[np.ndarray, np.ndarray]:
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{path}: expected a scalar image, got {image.GetNumberOfComponentsPerPixel()} "
                         f"values per voxel")
    if image.GetDimension() == 4 and image.GetSize()[3] == 1:
        image = image[:, :, :, 0]
    if image.GetDimension() != 3:
        raise InputError(f"{path}: expected a 3-D image, got shape {tuple(image.GetSize())}")
    # SimpleITK's array is indexed [k, j, i]; nibabel's and ours [i, j, k]
    data = np.ascontiguousarray(_simpleitk().GetArrayViewFromImage(image).transpose(2, 1, 0), dtype=np.float32)
    return data, itk_affine(image)
