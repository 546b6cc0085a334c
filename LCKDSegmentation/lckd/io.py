"""NIfTI reading with validation, and atomic writing of files.

Every reader error is an :class:`~lckd.errors.InputError` naming the file and the problem. Every
writer goes through a temporary file in the destination folder and a rename, so a failed run
never leaves a partial output behind.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Union

import nibabel as nib
import numpy as np

from .errors import InputError

PathLike = Union[str, "os.PathLike[str]"]


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
    """Read a 3-D NIfTI image as float32 in any orientation and data type.

    Refuses (with the file named): a missing or unreadable/truncated file, an image that is not
    3-D (a trailing axis of length 1 is dropped), and, unless ``allow_empty``, an image that is
    all NaN or all zero. NaN and infinite voxels of a usable image are set to 0.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        image = nib.load(str(path))
        data = np.asarray(image.dataobj, dtype=np.float32)
    except Exception as error:  # nibabel raises many types for damaged files
        raise InputError(f"{path}: not a readable NIfTI image ({type(error).__name__}: {error})") from None
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputError(f"{path}: expected a 3-D image, got shape {tuple(data.shape)}")
    affine = np.asarray(image.affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise InputError(f"{path}: the image has an invalid (singular or non-finite) orientation matrix")
    finite = np.isfinite(data)
    if not allow_empty:
        if not finite.any():
            raise InputError(f"{path}: every voxel is NaN or infinite")
        if not np.any(data[finite] != 0):
            raise InputError(f"{path}: the image is empty (every voxel is zero)")
    if not finite.all():
        data = np.where(finite, data, 0).astype(np.float32)
    return Volume(data=data, affine=affine, path=path)


@contextlib.contextmanager
def atomic_path(destination: PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``destination``; rename it into place only on success."""
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(destination.suffixes) or ".tmp"
    handle, temporary = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=suffix, dir=destination.parent)
    os.close(handle)
    temporary_path = Path(temporary)
    try:
        yield temporary_path
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary_path, 0o666 & ~umask)  # mkstemp made it 0600; give the usual permissions
        os.replace(temporary_path, destination)
    finally:
        if temporary_path.exists():
            temporary_path.unlink()


def save_nifti(path: PathLike, data: np.ndarray, affine: np.ndarray) -> Path:
    """Write ``data`` with ``affine`` (qform and sform set) atomically; returns the path."""
    image = nib.Nifti1Image(np.asarray(data), np.asarray(affine, dtype=np.float64))
    image.set_qform(image.affine, code=1)
    image.set_sform(image.affine, code=1)
    with atomic_path(path) as temporary:
        nib.save(image, str(temporary))
    return Path(path)
