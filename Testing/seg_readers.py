"""A DICOM SEG judged by tools nobody on this project wrote: dicom3tools' ``dciodvfy`` (the IOD validator),
highdicom's reader and dcmqi's ``segimage2itkimage`` (the converter Slicer's DICOM SEG support is built
on), each turning the SEG back into a BraTS label map on the reference series' grid."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import List, Sequence

import numpy as np
import pytest

#: The label each segmented property type code stands for (the Slicer module's terminology).
LABEL_OF_CODE = {"6574001": 1, "79654002": 2, "C113842": 4}
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def dciodvfy_errors(path: Path) -> List[str]:
    """The ``Error`` lines dciodvfy prints for ``path``; skips the test where dciodvfy is absent, so tests
    call it last, after their other checks."""
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy is not installed (Debian package dicom3tools; .ci/run installs it)")
    run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=120)
    return [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]


def slice_of(dataset, affine: np.ndarray) -> int:
    """The reference grid's slice index ``k`` of a source image, from its position."""
    position = LPS_TO_RAS @ np.asarray([float(v) for v in dataset.ImagePositionPatient])
    voxel = np.linalg.solve(affine[:3, :3], position - affine[:3, 3])
    assert np.allclose(voxel[:2], 0, atol=1e-3) and abs(voxel[2] - round(voxel[2])) < 1e-3
    return int(round(voxel[2]))


def labels_by_highdicom(seg_path: Path, source_images: Sequence, affine: np.ndarray, shape) -> np.ndarray:
    """highdicom's frames of every segment, per source image, as a label map on the reference grid."""
    import highdicom as hd

    seg = hd.seg.segread(seg_path)
    uids = [str(d.SOPInstanceUID) for d in source_images]
    labels = np.zeros(shape, dtype=np.uint8)
    for number in seg.get_segment_numbers():
        label = LABEL_OF_CODE[seg.get_segment_description(number).segmented_property_type.value]
        pixels = seg.get_pixels_by_source_instance(uids, segment_numbers=[number],
                                                   assert_missing_frames_are_empty=True)
        for dataset, frame in zip(source_images, pixels[..., 0]):
            labels[:, :, slice_of(dataset, affine)][frame.T > 0] = label
    return labels


def segimage2itkimage() -> str:
    found = shutil.which("segimage2itkimage") or str(Path(sys.executable).with_name("segimage2itkimage"))
    if not Path(found).is_file():
        pytest.skip("dcmqi's segimage2itkimage is not installed (pip install dcmqi; the test extra has it)")
    return found


def labels_by_dcmqi(seg_path: Path, folder: Path, affine: np.ndarray, shape) -> np.ndarray:
    """dcmqi's merged segments (``--mergeSegments``) placed on the reference grid by their own geometry."""
    import nibabel as nib

    folder.mkdir(parents=True, exist_ok=True)
    run = subprocess.run([segimage2itkimage(), "--inputDICOM", str(seg_path), "--outputDirectory", str(folder),
                          "-t", "nifti", "--mergeSegments"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    meta = json.loads((folder / "meta.json").read_text())
    label_of_id = {entry["labelID"]: LABEL_OF_CODE[entry["SegmentedPropertyTypeCodeSequence"]["CodeValue"]]
                   for group in meta["segmentAttributes"] for entry in group}
    assert len(meta["segmentAttributes"]) == 1, "the segments overlap: dcmqi wrote several files"
    image = nib.load(str(folder / "1.nii.gz"))
    values = np.asarray(image.dataobj)
    to_reference = np.linalg.inv(affine) @ image.affine
    ijk = np.argwhere(values > 0)
    where = ijk @ to_reference[:3, :3].T + to_reference[:3, 3]
    assert np.allclose(where, np.round(where), atol=1e-3), "dcmqi's grid is not the reference grid"
    where = np.round(where).astype(int)
    labels = np.zeros(shape, dtype=np.uint8)
    labels[tuple(where.T)] = [label_of_id[int(v)] for v in values[tuple(ijk.T)]]
    return labels
