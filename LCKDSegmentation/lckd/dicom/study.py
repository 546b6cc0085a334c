"""A folder holding one DICOM study, in any arrangement: its instances grouped into series.

Every file below the folder is read by content (file names and extensions do not matter; files that
are not DICOM, and DICOMDIR indexes, are passed over). The folder must hold one patient's one study.
A series keeps its instances' headers (no pixel data), which say what the series is
(:mod:`.recognition`), whether its slices make a regular volume (:func:`geometry_problem`), and
what a DICOM Segmentation object must reference (:mod:`.segmentation_object`). Its voxels are read
with SimpleITK (:func:`read_series_volume`), like a DICOM series folder given as a sequence file.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import InputError
from ..image_formats import read_dicom_files
from ..io import Volume

#: Media Storage Directory (DICOMDIR): an index of the files, not an image.
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"
#: Two slice positions or orientations closer than this are the same (mm; direction cosines).
POSITION_TOLERANCE_MM = 0.01
ORIENTATION_TOLERANCE = 1e-4
#: Slice steps may differ from the usual step by this fraction before the spacing counts as uneven.
SPACING_TOLERANCE = 0.01


@dataclass
class Series:
    """One series of a study: its identifying attributes and its instances' headers (pydicom datasets
    without pixel data) with their files."""

    uid: str
    datasets: List  # pydicom Dataset headers, in the order the files were found
    paths: List[Path]

    @property
    def first(self):
        return self.datasets[0]

    def attribute(self, keyword: str, default=""):
        """An attribute of the series' first instance ('' when absent)."""
        value = getattr(self.first, keyword, default)
        return default if value is None else value

    @property
    def number(self) -> Optional[int]:
        value = self.attribute("SeriesNumber", None)
        return int(value) if value not in (None, "") else None

    @property
    def description(self) -> str:
        return str(self.attribute("SeriesDescription")).strip()

    def label(self) -> str:
        """How messages name the series: its number, description and UID."""
        number = f"series {self.number}" if self.number is not None else "series"
        description = f" {self.description!r}" if self.description else ""
        return f"{number}{description} ({self.uid}, {len(self.datasets)} images)"

    def file_label(self, study_folder: Path) -> Path:
        """A name for the series where messages name an input file: the study folder and the series."""
        number = f"series {self.number}" if self.number is not None else f"series {self.uid}"
        return Path(study_folder) / (f"{number} {self.description}".strip())


@dataclass
class Study:
    """The series of one study found below ``folder``."""

    folder: Path
    uid: str
    patient: str
    series: List[Series]
    other_files: int = 0  # files that are not DICOM instances (or are DICOMDIR indexes)

    def find(self, uid: str) -> Optional[Series]:
        return next((series for series in self.series if series.uid == uid), None)


def _read_header(path: Path):
    """The header of a DICOM file, or None for a file that is not DICOM (or a DICOMDIR index)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        dataset = pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, EOFError, OSError):
        return None
    except Exception as error:  # pydicom raises many types for damaged files
        raise InputError(f"{path}: a damaged DICOM file ({type(error).__name__}: {error})") from None
    meta_class = str(getattr(getattr(dataset, "file_meta", None), "MediaStorageSOPClassUID", ""))
    if meta_class == MEDIA_STORAGE_DIRECTORY or "SeriesInstanceUID" not in dataset:
        return None
    return dataset


def read_study(folder: Path | str) -> Study:
    """Group the DICOM instances below ``folder`` by series; refuse a folder without DICOM images, one
    holding several patients, or one holding several studies (each named with its files' count)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder (--study takes the folder that holds one study's DICOM files)")
    by_series: Dict[str, Series] = {}
    other_files = 0
    for root, folders, files in os.walk(folder):
        folders.sort()
        for name in sorted(files):
            path = Path(root) / name
            dataset = _read_header(path)
            if dataset is None:
                other_files += 1
                continue
            uid = str(dataset.SeriesInstanceUID)
            entry = by_series.setdefault(uid, Series(uid=uid, datasets=[], paths=[]))
            entry.datasets.append(dataset)
            entry.paths.append(path)
    if not by_series:
        raise InputError(f"{folder}: holds no DICOM images ({other_files} files, none of them a DICOM instance)")
    series = sorted(by_series.values(), key=lambda s: (s.number if s.number is not None else 1 << 30, s.uid))
    datasets = [dataset for entry in series for dataset in entry.datasets]
    patients = Counter(_patient(dataset) for dataset in datasets)
    if len(patients) > 1:
        listed = "; ".join(f"{patient} ({count} files)" for patient, count in patients.most_common())
        raise InputError(f"{folder}: holds images of {len(patients)} patients ({listed}); a study folder must hold "
                         f"one patient's study")
    studies = Counter(str(getattr(dataset, "StudyInstanceUID", "")) for dataset in datasets)
    if len(studies) > 1:
        listed = "; ".join(f"{uid or 'no StudyInstanceUID'} ({count} files)" for uid, count in studies.most_common())
        raise InputError(f"{folder}: holds {len(studies)} studies ({listed}); give one study per folder "
                         f"(with --batch, one study per sub-folder)")
    return Study(folder=folder, uid=next(iter(studies)), patient=next(iter(patients)), series=series,
                 other_files=other_files)


def _patient(dataset) -> str:
    """Who an instance belongs to: its PatientID (its PatientName only where it has no ID)."""
    patient_id = str(getattr(dataset, "PatientID", "") or "").strip()
    if patient_id:
        return f"PatientID {patient_id!r}"
    return f"PatientName {str(getattr(dataset, 'PatientName', '') or '').strip()!r}"


def _vector(dataset, keyword: str, length: int) -> Optional[np.ndarray]:
    value = getattr(dataset, keyword, None)
    try:
        vector = np.asarray([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return vector if vector.shape == (length,) and np.all(np.isfinite(vector)) else None


@dataclass
class SliceGeometry:
    """Where a series' slices lie: the common orientation and each slice's offset along its normal."""

    orientation: np.ndarray  # row and column direction cosines (LPS), 6 values
    normal: np.ndarray
    offsets: np.ndarray  # mm along the normal, one per instance, in the series' instance order


def slice_geometry(series: Series) -> Tuple[Optional[SliceGeometry], str]:
    """The series' slice geometry, or None and why its images are not one stack of parallel slices."""
    if any(int(getattr(d, "NumberOfFrames", 1) or 1) > 1 for d in series.datasets):
        return None, "multi-frame images (lckd reads series of single-frame images)"
    orientations = [_vector(d, "ImageOrientationPatient", 6) for d in series.datasets]
    positions = [_vector(d, "ImagePositionPatient", 3) for d in series.datasets]
    if any(o is None for o in orientations) or any(p is None for p in positions):
        return None, "images without a position or orientation (ImagePositionPatient, ImageOrientationPatient)"
    distinct: List[np.ndarray] = []
    for orientation in orientations:
        if not any(np.allclose(orientation, seen, atol=ORIENTATION_TOLERANCE) for seen in distinct):
            distinct.append(orientation)
    if len(distinct) > 1:
        return None, f"images in {len(distinct)} orientations"
    orientation = distinct[0]
    normal = np.cross(orientation[:3], orientation[3:])
    offsets = np.asarray([float(position @ normal) for position in positions])
    return SliceGeometry(orientation=orientation, normal=normal, offsets=offsets), ""


def geometry_problem(series: Series) -> str:
    """Why the series' images do not make one regular 3-D volume ('' when they do): not one stack of
    parallel slices, slices of different sizes, two images at one position, missing slices, or uneven
    slice spacing."""
    geometry, problem = slice_geometry(series)
    if geometry is None:
        return problem
    shapes = Counter((int(getattr(d, "Rows", 0)), int(getattr(d, "Columns", 0))) for d in series.datasets)
    if len(shapes) > 1:
        return f"images of {len(shapes)} sizes ({', '.join(f'{r}x{c}' for r, c in shapes)})"
    spacings = {tuple(np.round(_vector(d, "PixelSpacing", 2), 4)) if _vector(d, "PixelSpacing", 2) is not None
                else None for d in series.datasets}
    if None in spacings or len(spacings) > 1:
        return "images without one pixel spacing (PixelSpacing)"
    if len(series.datasets) < 3:
        return f"only {len(series.datasets)} images, not a volume"
    offsets = np.sort(geometry.offsets)
    steps = np.diff(offsets)
    if np.any(steps < POSITION_TOLERANCE_MM):
        repeats = int(np.sum(steps < POSITION_TOLERANCE_MM))
        return (f"{repeats} images repeat another's slice position (several echoes, phases or acquisitions in one "
                f"series)")
    usual = float(np.median(steps))
    uneven = np.abs(steps - usual) > max(POSITION_TOLERANCE_MM, SPACING_TOLERANCE * usual)
    if np.any(uneven):
        index = int(np.argmax(np.abs(steps - usual)))
        gap = float(steps[index])
        where = f"between the slices at {offsets[index]:.1f} and {offsets[index + 1]:.1f} mm along the slice normal"
        missing = gap / usual - 1
        if missing > 0.5 and abs(missing - round(missing)) < 0.1:
            return (f"missing slices: a gap of {gap:.2f} mm {where}, where the others are {usual:.2f} mm apart "
                    f"({round(missing)} slice{'s' if round(missing) > 1 else ''} missing)")
        return (f"uneven slice spacing: {int(np.sum(uneven))} of {len(steps)} steps differ from {usual:.2f} mm "
                f"(e.g. {gap:.2f} mm {where})")
    return ""


def sorted_paths(series: Series) -> List[Path]:
    """The series' files in slice order (ascending along the slice normal)."""
    geometry, problem = slice_geometry(series)
    if geometry is None:
        raise InputError(f"{series.label()}: {problem}")
    return [series.paths[index] for index in np.argsort(geometry.offsets, kind="stable")]


def read_series_volume(series: Series, study_folder: Path) -> Volume:
    """The series' voxels (SimpleITK, as a DICOM series folder is read) after its geometry is checked."""
    problem = geometry_problem(series)
    if problem:
        raise InputError(f"{study_folder}: {series.label()}: {problem}")
    data, affine = read_dicom_files(sorted_paths(series), series.file_label(study_folder))
    return Volume(data=data, affine=affine, path=series.file_label(study_folder))


def headers_of(paths: Sequence[Path]) -> List:
    """The DICOM headers of ``paths`` (a DICOM series folder given as a sequence input)."""
    headers = []
    for path in paths:
        dataset = _read_header(Path(path))
        if dataset is not None:
            headers.append(dataset)
    return headers
