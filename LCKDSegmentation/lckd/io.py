"""Image reading with validation, and atomic writing of files.

:func:`load_volume` reads NIfTI through nibabel, and NRRD, MetaImage and DICOM series folders
through SimpleITK (:mod:`lckd.image_formats`), choosing by content rather than by name. Every
reader error is an :class:`~lckd.errors.InputError` naming the file and the problem. Every writer
goes through a temporary file in the destination folder and a rename, so a failed run never leaves
a partial output behind; a write that fails is an :class:`~lckd.errors.OutputError`.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence, Tuple, Union

import nibabel as nib
import numpy as np

from .errors import InputError, OutputError
from .image_formats import NIFTI1, NIFTI2, detect_format, is_gzip, read_dicom_series, read_with_simpleitk

PathLike = Union[str, "os.PathLike[str]"]
#: An image with at most this many distinct values, all whole numbers from 0 to MAX_LABEL, is a label
#: map or mask (BraTS labels 0, 1, 2, 4; a mask 0, 1), not an MR sequence.
MAX_LABEL_VALUES = 16
MAX_LABEL = 32
_NIFTI_NAMES = (".nii", ".nii.gz", ".hdr", ".img", ".hdr.gz", ".img.gz")


@dataclass
class Volume:
    """A 3-D image: ``data`` indexed ``[i, j, k]`` and the voxel-to-RAS-mm ``affine``."""

    data: np.ndarray
    affine: np.ndarray
    path: Path | None = None

    @property
    def shape(self) -> tuple:
        return self.data.shape

    @property
    def spacing(self) -> np.ndarray:
        return np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0))


def load_volume(path: PathLike, *, allow_empty: bool = False) -> Volume:
    """Read a 3-D image (NIfTI, NRRD, MetaImage, or a folder of one DICOM series) as float32.

    Any orientation and data type. Refuses (with the file named): a missing, unreadable or
    truncated file, a folder without a DICOM series or with several, an image that is not 3-D (a
    trailing axis of length 1 is dropped), a zero voxel size in a header without sform, and, unless
    ``allow_empty`` (label maps), an image that is all NaN, all zero, constant, or a label map (at
    most :data:`MAX_LABEL_VALUES` distinct whole values, none above :data:`MAX_LABEL`). NaN and
    infinite voxels of a usable image are set to 0.
    """
    path = Path(path)
    if path.is_dir():
        data, affine = read_dicom_series(path)
    elif not path.exists():
        raise InputError(f"{path}: file not found")
    elif not path.is_file():
        raise InputError(f"{path}: not a regular file")
    else:
        kind = detect_format(path)
        if kind in (NIFTI1, NIFTI2):
            data, affine = _read_nifti(path, kind)
        elif kind:
            data, affine = read_with_simpleitk(path, kind)
        else:
            raise InputError(f"{path}: not an image lckd reads (NIfTI, NRRD, MetaImage, DICOM series folder)")
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputError(f"{path}: expected a 3-D image, got shape {tuple(data.shape)}")
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise InputError(f"{path}: the image has an invalid (singular or non-finite) orientation matrix")
    finite = np.isfinite(data)
    if not allow_empty:
        if not finite.any():
            raise InputError(f"{path}: every voxel is NaN or infinite")
        values = data[finite] if not finite.all() else data.ravel()
        if not np.any(values != 0):
            raise InputError(f"{path}: the image is empty (every voxel is zero)")
        _check_contrast(path, values)
    if not finite.all():
        data = np.where(finite, data, 0).astype(np.float32)
    return Volume(data=data, affine=affine, path=path)


def _check_contrast(path: Path, values: np.ndarray) -> None:
    """Refuse a constant image and a label map given as an MR sequence."""
    sample = values[:: max(1, values.size // 50_000)]
    if np.unique(sample).size > MAX_LABEL_VALUES:
        return  # the usual case, decided on a sample
    distinct = np.unique(values)
    if distinct.size == 1:
        raise InputError(f"{path}: every voxel has the same value ({distinct[0]:g}); this is not an MR image")
    if distinct.size <= MAX_LABEL_VALUES and np.array_equal(distinct, np.round(distinct)) and \
            distinct[0] >= 0 and distinct[-1] <= MAX_LABEL:
        shown = ", ".join(f"{v:g}" for v in distinct)
        raise InputError(f"{path}: looks like a label map or mask (only the values {shown}), not an MR image; "
                         f"give the MR sequence")


def _read_nifti(path: Path, kind: str) -> Tuple[np.ndarray, np.ndarray]:
    """A NIfTI-1/2 file as (data, affine); also when its name hides its compression or format."""
    gzipped = is_gzip(path)
    _check_nifti_voxel_size(path, kind, gzipped)
    name = path.name.lower()
    try:
        if name.endswith(_NIFTI_NAMES) and gzipped == name.endswith(".gz"):
            image = nib.load(str(path))
        else:  # the name lies about the content: read the bytes as what they are
            with (gzip.open(path, "rb") if gzipped else open(path, "rb")) as handle:
                raw = handle.read()
            image = (nib.Nifti1Image if kind == NIFTI1 else nib.Nifti2Image).from_bytes(raw)
        # C order: nibabel gives NIfTI's column-major layout, on which scipy's resampling to the working
        # grid runs about three times slower than on this copy
        data = np.ascontiguousarray(np.asarray(image.dataobj, dtype=np.float32))
    except Exception as error:  # nibabel raises many types for damaged files
        raise InputError(f"{path}: not a readable NIfTI image ({type(error).__name__}: {error})") from None
    return data, np.asarray(image.affine, dtype=np.float64)


def _check_nifti_voxel_size(path: Path, kind: str, gzipped: bool) -> None:
    """Refuse a zero voxel size where it defines the geometry (no sform): nibabel would read it as 1 mm."""
    header_class = nib.Nifti1Header if kind == NIFTI1 else nib.Nifti2Header
    try:
        with (gzip.open(path, "rb") if gzipped else open(path, "rb")) as handle:
            header = header_class.from_fileobj(handle, check=False)
        sform_code = int(header["sform_code"])
        voxel_size = np.asarray(header["pixdim"][1:4], dtype=np.float64)
    except Exception:  # unreadable header: the reader reports it
        return
    if sform_code == 0 and not np.all(np.isfinite(voxel_size) & (voxel_size != 0)):
        source = "the qform" if int(header["qform_code"]) > 0 else "the voxel size alone"
        raise InputError(f"{path}: the header's voxel size (pixdim) is {voxel_size.tolist()} and there is no sform, "
                         f"so {source} defines the geometry; a zero or non-finite voxel size has no physical meaning")


def check_writable(destination: PathLike) -> None:
    """Refuse, before any work, an output that cannot be created: its folder is a file, cannot be
    created, or does not take new files (permissions, read-only file system, immutable folder)."""
    destination = Path(destination)
    if destination.is_dir():
        raise OutputError(f"{destination}: the output path is a folder; give a file name")
    folder = destination.parent
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(f"{destination}: cannot be created, {existing} is a file, not a folder")
    if existing != folder:  # the folders would be created: the nearest existing one must take them
        if not os.access(existing, os.W_OK | os.X_OK):
            raise OutputError(f"{destination}: cannot be created, no permission to create folders in {existing}")
        return
    try:
        handle, probe = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=".probe", dir=folder)
    except OSError as error:
        raise OutputError(f"{destination}: cannot be written ({error.strerror or error})") from None
    os.close(handle)
    os.unlink(probe)


@contextlib.contextmanager
def atomic_path(destination: PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``destination``; rename it into place only on success.

    An :class:`OSError` on the way (creating the folder, writing, renaming) becomes an
    :class:`~lckd.errors.OutputError` naming ``destination``; the temporary file is removed.
    """
    destination = Path(destination)
    suffix = "".join(destination.suffixes) or ".tmp"
    temporary_path: Optional[Path] = None
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=suffix, dir=destination.parent)
        os.close(handle)
        temporary_path = Path(temporary)
        yield temporary_path
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary_path, 0o666 & ~umask)  # mkstemp made it 0600; give the usual permissions
        os.replace(temporary_path, destination)
    except OSError as error:  # full disk, read-only file system, permissions: one line, nothing left
        raise OutputError(f"{destination}: could not be written ({error.strerror or error}); "
                          f"nothing was written") from None
    finally:
        if temporary_path is not None and temporary_path.exists():
            temporary_path.unlink()


def save_nifti(path: PathLike, data: np.ndarray, affine: np.ndarray) -> Path:
    """Write ``data`` with ``affine`` (qform and sform set) atomically; returns the path."""
    save_niftis([(path, data, affine)])
    return Path(path)


def save_niftis(images: Sequence[Tuple[PathLike, np.ndarray, np.ndarray]]) -> None:
    """Write several ``(path, data, affine)`` images, each to a temporary file beside it; they are renamed
    into place only once every one is written, so a failure leaves none of them."""
    with contextlib.ExitStack() as stack:
        for path, data, affine in images:
            image = nib.Nifti1Image(np.asarray(data), np.asarray(affine, dtype=np.float64))
            image.set_qform(image.affine, code=1)
            image.set_sform(image.affine, code=1)
            nib.save(image, str(stack.enter_context(atomic_path(path))))
