"""DICOM studies written at test time, as a scanner and a PACS export give them.

:func:`write_study` turns volumes (a phantom's, or a real case's read from ``../shared/data``) into one
MR study: a series per sequence with the descriptions, sequence parameters and contrast attributes a
scanner writes, a three-plane localiser and a derived (reformatted) series as distractors, every file
without an extension, the series mixed in a PACS-export folder tree. Nothing of it is committed: tests
write it into their temporary folders.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, MRImageStorage, generate_uid

LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

#: What a 3 T scanner writes for each sequence: description, protocol, scanning sequence, TR/TE/TI (ms).
SCANNER_SEQUENCES = {
    "flair": dict(description="AX T2 FLAIR", protocol="t2_tirm_tra_dark-fluid", scanning="SE\\IR",
                  repetition=9000.0, echo=81.0, inversion=2500.0),
    "t1": dict(description="AX T1 SE", protocol="t1_se_tra", scanning="SE", repetition=550.0, echo=9.5),
    "t1ce": dict(description="AX T1 SE POST GD", protocol="t1_se_tra_post", scanning="SE", repetition=550.0,
                 echo=9.5, contrast="GADOBUTROL 1.0 mmol/mL"),
    "t2": dict(description="AX T2 TSE", protocol="t2_tse_tra", scanning="SE", repetition=5000.0, echo=98.0),
}


@dataclass
class WrittenStudy:
    """Where a study was written and the UIDs a test checks against."""

    folder: Path
    study_uid: str
    series_uids: Dict[str, str]  # sequence or distractor name -> SeriesInstanceUID
    files: Dict[str, List[Path]] = field(default_factory=dict)


def study_attributes(patient_id: str, patient_name: str, study_uid: str) -> Dataset:
    """The patient and study attributes every instance of a study carries."""
    ds = Dataset()
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_uid
    ds.StudyDate = "20240102"
    ds.StudyTime = "101500"
    ds.StudyID = "1"
    ds.AccessionNumber = "ACC0001"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "MRI BRAIN W/WO CONTRAST"
    return ds


def _slices(data: np.ndarray, affine_ras: np.ndarray):
    """(pixel array rows x columns, ImagePositionPatient, ImageOrientationPatient, PixelSpacing) per k."""
    lps = LPS_FROM_RAS @ np.asarray(affine_ras, dtype=float)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    row_direction, column_direction = lps[:3, 0] / spacing[0], lps[:3, 1] / spacing[1]
    orientation = [float(v) for v in np.concatenate([row_direction, column_direction])]
    for k in range(data.shape[2]):
        position = lps @ np.array([0.0, 0.0, float(k), 1.0])
        yield np.ascontiguousarray(data[:, :, k].T), [float(v) for v in position[:3]], orientation, \
            [float(spacing[1]), float(spacing[0])]


def series_datasets(data: np.ndarray, affine_ras: np.ndarray, study: Dataset, *, series_uid: str, number: int,
                    description: str, protocol: str = "", scanning: str = "SE", repetition: float = 500.0,
                    echo: float = 10.0, inversion: Optional[float] = None, contrast: Optional[str] = None,
                    image_type: Sequence[str] = ("ORIGINAL", "PRIMARY", "M", "ND"),
                    frame_of_reference: str = "", slice_thickness: Optional[float] = None) -> List[Dataset]:
    """One MR Image Storage instance per slice of ``data`` (indexed [i, j, k], RAS ``affine_ras``)."""
    pixels = np.clip(np.rint(data), -32768, 32767).astype(np.int16)
    frame_of_reference = frame_of_reference or generate_uid()
    thickness = slice_thickness or float(np.linalg.norm(np.asarray(affine_ras)[:3, 2]))
    datasets = []
    for index, (plane, position, orientation, pixel_spacing) in enumerate(_slices(pixels, affine_ras)):
        ds = Dataset()
        ds.update(study)
        ds.SOPClassUID = MRImageStorage
        ds.SOPInstanceUID = generate_uid()
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_of_reference
        ds.PositionReferenceIndicator = ""
        ds.Modality = "MR"
        ds.Laterality = ""
        ds.PatientPosition = "HFS"
        ds.Manufacturer = "LCKD test scanner"
        ds.ManufacturerModelName = "dicom_studies.py"
        ds.SeriesNumber = number
        ds.InstanceNumber = index + 1
        ds.SeriesDescription = description
        ds.ProtocolName = protocol or description
        ds.ImageType = list(image_type)
        ds.ScanningSequence = scanning
        ds.SequenceVariant = "SK\\SP\\OSP" if "IR" in scanning else "SK\\SP"
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "2D"
        ds.RepetitionTime = f"{repetition:g}"
        ds.EchoTime = f"{echo:g}"
        if inversion is not None:
            ds.InversionTime = f"{inversion:g}"
        ds.EchoTrainLength = 16 if repetition > 2000 else 1
        ds.MagneticFieldStrength = "3"
        ds.ImagingFrequency = "123.2"
        ds.ImagedNucleus = "1H"
        ds.SliceThickness = f"{thickness:.4g}"
        if contrast:
            ds.ContrastBolusAgent = contrast
            ds.ContrastBolusRoute = "IV"
        ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in orientation]
        ds.PixelSpacing = [f"{v:.6f}" for v in pixel_spacing]
        ds.SliceLocation = f"{position[2]:.6f}"
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = plane.shape
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.PixelData = plane.tobytes()
        datasets.append(ds)
    return datasets


def save(datasets: Sequence[Dataset], paths: Sequence[Path]) -> List[Path]:
    """Write each dataset as a DICOM Part 10 file (explicit VR little endian) to its path."""
    for ds, path in zip(datasets, paths):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds.file_meta = meta
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(path, enforce_file_format=True)
    return list(paths)


def _localiser(shape, affine_ras, study: Dataset, series_uid: str) -> List[Dataset]:
    """A three-plane scout: one axial, one coronal and one sagittal image through the volume's centre."""
    centre = np.asarray(affine_ras) @ np.append((np.asarray(shape) - 1) / 2.0, 1.0)
    planes = {"axial": ([1, 0, 0], [0, 1, 0]), "coronal": ([1, 0, 0], [0, 0, 1]), "sagittal": ([0, 1, 0], [0, 0, 1])}
    datasets = []
    for index, (row, column) in enumerate(planes.values()):
        affine = np.eye(4)
        affine[:3, 0], affine[:3, 1] = np.multiply(row, 2.0), np.multiply(column, 2.0)
        affine[:3, 2] = np.cross(row, column) * 5.0
        affine[:3, 3] = centre[:3] - affine[:3, 0] * 64 - affine[:3, 1] * 64
        image = np.full((128, 128, 1), 300.0)
        (ds,) = series_datasets(image, affine, study, series_uid=series_uid, number=1, description="3-Plane Loc",
                                protocol="localizer", scanning="GR", repetition=8.6, echo=4.0,
                                image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"), slice_thickness=5.0)
        ds.InstanceNumber = index + 1
        datasets.append(ds)
    return datasets


def _reformat(data: np.ndarray, affine_ras: np.ndarray, study: Dataset, series_uid: str, frame: str) -> List[Dataset]:
    """A coronal reformat of the post-contrast T1 (DERIVED\\SECONDARY\\MPR), as a console makes it."""
    coronal = np.transpose(data, (0, 2, 1))[:, ::-1, :]  # i, k (rows run inferior-wards), j
    affine = np.asarray(affine_ras, dtype=float).copy()
    affine[:, [1, 2]] = affine[:, [2, 1]]
    affine[:3, 3] += affine[:3, 1] * (data.shape[2] - 1)
    affine[:3, 1] *= -1
    return series_datasets(coronal, affine, study, series_uid=series_uid, number=601, description="COR T1 POST MPR",
                           protocol="t1_se_tra_post", repetition=550.0, echo=9.5, contrast="GADOBUTROL 1.0 mmol/mL",
                           image_type=("DERIVED", "SECONDARY", "MPR"), frame_of_reference=frame)


def write_study(folder: Path, images: Dict[str, np.ndarray], affine_ras: np.ndarray, *,
                patient_id: str = "LCKD-TEST-001", patient_name: str = "Test^Phantom",
                distractors: bool = True, descriptions: Optional[Dict[str, Dict]] = None) -> WrittenStudy:
    """Write ``{sequence: data}`` (all on ``affine_ras``) as one study into ``folder``, PACS-export style:
    ``folder/DICOM/<two-level tree>/IM<n>`` with no extensions and the series interleaved."""
    study_uid = generate_uid()
    study = study_attributes(patient_id, patient_name, study_uid)
    frame = generate_uid()
    series: Dict[str, List[Dataset]] = {}
    uids: Dict[str, str] = {}
    if distractors:
        uids["localiser"] = generate_uid()
        series["localiser"] = _localiser(next(iter(images.values())).shape, affine_ras, study, uids["localiser"])
    for number, (name, data) in enumerate(images.items(), start=2):
        attributes = dict(SCANNER_SEQUENCES[name], **(descriptions or {}).get(name, {}))
        uids[name] = generate_uid()
        series[name] = series_datasets(data, affine_ras, study, series_uid=uids[name], number=100 * number,
                                       frame_of_reference=frame, **attributes)
    if distractors and "t1ce" in images:
        uids["reformat"] = generate_uid()
        series["reformat"] = _reformat(images["t1ce"], affine_ras, study, uids["reformat"], frame)
    # interleave the series' files over a two-level folder tree, as PACS exports and CDs do
    order = [ds for group in itertools.zip_longest(*series.values()) for ds in group if ds is not None]
    files: Dict[str, List[Path]] = {name: [] for name in series}
    name_of = {uid: name for name, uid in uids.items()}
    for index, ds in enumerate(order):
        path = Path(folder) / "DICOM" / f"S{index // 200:04d}" / f"IM{index:05d}"
        save([ds], [path])
        files[name_of[ds.SeriesInstanceUID]].append(path)
    return WrittenStudy(folder=Path(folder), study_uid=study_uid, series_uids=uids, files=files)
