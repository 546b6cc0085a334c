"""The label map as one DICOM Segmentation instance (highdicom) on its reference series.

One segment per tumour label the map holds (necrosis / non-enhancing core, oedema, enhancing
tumour), coded with the types of the Slicer module's terminology (:mod:`lckd.terminology`) in the
brain, with their recommended colours; the algorithm identified by the model's name and version;
binary frames on the reference series' own slices (each frame references its source image, empty
frames left out). A map without tumour still gives an object: the three segments, with no voxel.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np

from .. import __version__
from ..errors import InputError
from ..io import PathLike, atomic_path
from ..labels import NECROSIS, OEDEMA
from ..terminology import BRAIN, SEGMENTS, TYPE_CODES, load_terminology

#: The model catalogue beside the bundled models: a model file's version is the catalogue's when the
#: file is one of its entries (same SHA-256).
MODEL_CATALOGUE = Path(__file__).resolve().parents[2] / "Resources" / "Models.json"
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
#: A source image must lie this close (in voxels) to a slice of the label map's grid.
GRID_TOLERANCE_VOXELS = 0.05


@dataclass
class Algorithm:
    """What made the segmentation: the model's name and version and the run's settings."""

    name: str
    version: str
    parameters: Dict[str, str] = field(default_factory=dict)


def model_version(model_path: PathLike, catalogue: Path = MODEL_CATALOGUE) -> str:
    """The catalogue version of a model file (matched by SHA-256), else ``sha256:`` and the file's digest
    (first 16 hex digits), which names exactly the weights that were used."""
    digest = hashlib.sha256(Path(model_path).read_bytes()).hexdigest()
    try:
        models = json.loads(catalogue.read_text(encoding="utf-8"))["models"]
    except (OSError, ValueError, KeyError):
        models = []
    match = next((entry for entry in models if entry.get("sha256") == digest and entry.get("version")), None)
    return str(match["version"]) if match else f"sha256:{digest[:16]}"


def frame_slices(source_images: Sequence, affine: np.ndarray, shape: Sequence[int], name: str) -> List[int]:
    """The label map's slice index ``k`` of each source image; refuses images that do not lie on the
    map's grid (its in-plane axes, spacing and slices), naming the series ``name``."""
    lps_axes = LPS_TO_RAS @ affine[:3, :3]  # LPS and RAS differ by the same sign flips both ways
    spacing = np.linalg.norm(lps_axes, axis=0)
    inverse = np.linalg.inv(affine)
    slices = []
    for image in source_images:
        orientation = np.asarray([float(v) for v in image.ImageOrientationPatient])
        pixel_spacing = [float(v) for v in image.PixelSpacing]
        position = LPS_TO_RAS @ np.asarray([float(v) for v in image.ImagePositionPatient])
        voxel = inverse[:3, :3] @ position + inverse[:3, 3]
        k = int(round(voxel[2]))
        on_grid = (int(image.Rows) == shape[1] and int(image.Columns) == shape[0]
                   and np.allclose(orientation[:3], lps_axes[:, 0] / spacing[0], atol=1e-4)
                   and np.allclose(orientation[3:], lps_axes[:, 1] / spacing[1], atol=1e-4)
                   and np.allclose(pixel_spacing, [spacing[1], spacing[0]], rtol=1e-4)
                   and np.all(np.abs(voxel - [0, 0, k]) < GRID_TOLERANCE_VOXELS) and 0 <= k < shape[2])
        if not on_grid:
            raise InputError(f"{name}: image {image.SOPInstanceUID} does not lie on the label map's grid; a DICOM "
                             f"SEG is written on the reference series' own slices")
        slices.append(k)
    if len(set(slices)) != len(slices):
        raise InputError(f"{name}: two images lie on one slice of the label map")
    return slices


def _code(entry: Dict):
    from highdicom.sr import CodedConcept

    return CodedConcept(entry["CodeValue"], entry["CodingSchemeDesignator"], entry["CodeMeaning"])


def segment_descriptions(labels_present: Sequence[int], algorithm: Algorithm) -> List:
    """highdicom segment descriptions, numbered 1.. in the order of ``labels_present``."""
    from highdicom import AlgorithmIdentificationSequence
    from highdicom.color import CIELabColor
    from highdicom.seg import SegmentAlgorithmTypeValues, SegmentDescription
    from highdicom.sr import CodedConcept
    from pydicom.sr.codedict import codes

    types = load_terminology()["types"]
    identification = AlgorithmIdentificationSequence(
        name=algorithm.name, family=codes.cid7162.ArtificialIntelligence, version=algorithm.version,
        source=f"LCKDSegmentation lckd {__version__}", parameters=algorithm.parameters or None)
    brain = CodedConcept(BRAIN[1], BRAIN[0], BRAIN[2])
    descriptions = []
    for number, label in enumerate(labels_present, start=1):
        entry = types[TYPE_CODES[SEGMENTS[label]]]
        descriptions.append(SegmentDescription(
            segment_number=number, segment_label=SEGMENTS[label],
            segmented_property_category=_code(entry["category"]), segmented_property_type=_code(entry),
            algorithm_type=SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=identification,
            anatomic_regions=[brain], display_color=CIELabColor.from_rgb(*entry["recommendedDisplayRGBValue"])))
    return descriptions


def build_segmentation(labels: np.ndarray, affine: np.ndarray, source_images: Sequence, algorithm: Algorithm,
                       *, et_label: int, series_number: int, reference_name: str, description: str):
    """The highdicom Segmentation of ``labels`` (indexed [i, j, k], RAS ``affine``) on ``source_images``
    (the reference series' headers; any order)."""
    from highdicom import UID
    from highdicom.seg import Segmentation, SegmentationTypeValues

    if not source_images:
        raise InputError(f"{reference_name}: no DICOM images to put the segmentation on")
    slices = frame_slices(source_images, affine, labels.shape, reference_name)
    present = [label for label in (NECROSIS, OEDEMA, et_label) if np.any(labels == label)]
    declared = present or [NECROSIS, OEDEMA, et_label]
    segment_number = np.zeros(256, dtype=np.uint8)
    for number, label in enumerate(declared, start=1):
        segment_number[label] = number
    frames = np.stack([segment_number[labels[:, :, k].T] for k in slices])  # (frames, rows, columns)
    if not present:  # no voxel in any segment: highdicom needs the segments as explicit (empty) binary planes
        frames = np.zeros(frames.shape + (len(declared),), dtype=bool)
    return Segmentation(
        source_images=list(source_images), pixel_array=frames, segmentation_type=SegmentationTypeValues.BINARY,
        segment_descriptions=segment_descriptions(declared, algorithm), series_instance_uid=UID(),
        series_number=series_number, sop_instance_uid=UID(), instance_number=1, manufacturer="LCKDSegmentation",
        manufacturer_model_name=algorithm.name, software_versions=f"lckd {__version__}",
        device_serial_number=algorithm.version, content_description=description[:64], content_label="TUMOUR",
        omit_empty_frames=bool(present),  # without any voxel, every frame is kept (highdicom would say so)
        series_description=f"LCKD tumour ({algorithm.name})"[:64])


def write_segmentation(segmentation, path: PathLike) -> Path:
    """Write a Segmentation instance atomically (DICOM Part 10 file)."""
    with atomic_path(path) as temporary:
        segmentation.save_as(temporary, enforce_file_format=True)
    return Path(path)
