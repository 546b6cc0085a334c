"""NRRD, MetaImage and DICOM series read like NIfTI (same voxels, same RAS affine, same label map), and a
file's content decides its format where its name lies."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path
from typing import Dict

import nibabel as nib
import numpy as np
import pytest

from lckd.cli import BUNDLED_MODEL, main
from lckd.io import load_volume

sitk = pytest.importorskip("SimpleITK")

SAMPLE = Path(__file__).resolve().parents[1] / "LCKDSegmentation" / "Resources" / "SampleData" / "Phantom_t1ce.nii.gz"


def oblique(affine: np.ndarray, degrees: float = 12.0) -> np.ndarray:
    """``affine`` turned about the RAS z and x axes (still right-handed: DICOM keeps its slice order)."""
    a, b = np.radians(degrees), np.radians(degrees / 2)
    about_z = np.array([[np.cos(a), -np.sin(a), 0, 0], [np.sin(a), np.cos(a), 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    about_x = np.array([[1, 0, 0, 0], [0, np.cos(b), -np.sin(b), 0], [0, np.sin(b), np.cos(b), 0], [0, 0, 0, 1]])
    return about_z @ about_x @ affine


def lps(affine: np.ndarray) -> np.ndarray:
    """The same field of view with the i and j voxel axes reversed (the LPS voxel order DICOM scanners use)."""
    shape = nib.load(str(SAMPLE)).shape
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[:2, 3] = [shape[0] - 1, shape[1] - 1]
    return affine @ flip


def _phantom_as_nifti(folder: Path, affine_of) -> Path:
    image = nib.load(str(SAMPLE))
    data = np.asarray(image.dataobj).astype(np.int16)
    path = folder / "t1ce.nii.gz"
    nib.save(nib.Nifti1Image(data[::-1, ::-1] if affine_of is lps else data, affine_of(image.affine)), str(path))
    return path


@pytest.fixture(scope="module")
def phantom_nifti(tmp_path_factory) -> Path:
    """The bundled T1ce phantom (int16) on an oblique grid, as NIfTI."""
    return _phantom_as_nifti(tmp_path_factory.mktemp("oblique"), oblique)


def _write_formats(nifti: Path, folder: Path) -> Dict[str, Path]:
    """``nifti`` written as NRRD, detached NRRD, MHA, MHD and a DICOM series folder."""
    image = sitk.ReadImage(str(nifti))
    paths = {}
    for name in ("t1ce.nrrd", "t1ce.nhdr", "t1ce.mha", "t1ce.mhd"):
        paths[name] = folder / name
        sitk.WriteImage(image, str(paths[name]), True)
    paths["dicom"] = write_dicom_series(image, folder / "dicom", "1.2.826.0.1.3680043.2.1125.7.1")
    return paths


def write_dicom_series(image, folder: Path, series_uid: str, description: str = "T1ce") -> Path:
    """Write a SimpleITK 3-D image as an int16 MR DICOM series, one file per slice, with its geometry."""
    folder.mkdir(parents=True, exist_ok=True)
    image = sitk.Cast(image, sitk.sitkInt16)
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    orientation = "\\".join(f"{v:.10f}" for v in list(direction[:, 0]) + list(direction[:, 1]))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(image.GetDepth()):
        plane = image[:, :, k]
        position = image.TransformIndexToPhysicalPoint((0, 0, k))
        tags = {"0008|0016": "1.2.840.10008.5.1.4.1.1.4", "0008|0018": f"{series_uid}.{k + 1}",
                "0008|0060": "MR", "0008|103e": description, "0020|000d": f"{series_uid}.0",
                "0020|000e": series_uid, "0020|0013": str(k + 1), "0020|0037": orientation,
                "0020|0032": "\\".join(f"{v:.10f}" for v in position), "0018|0050": f"{image.GetSpacing()[2]:.6f}"}
        for tag, value in tags.items():
            plane.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice{k:04d}.dcm"))
        writer.Execute(plane)
    return folder


@pytest.fixture(scope="module")
def formats(phantom_nifti, tmp_path_factory) -> Dict[str, Path]:
    return _write_formats(phantom_nifti, tmp_path_factory.mktemp("formats"))


def test_itk_geometry_becomes_the_affine_nibabel_gives(phantom_nifti):
    from lckd.image_formats import itk_affine

    np.testing.assert_allclose(itk_affine(sitk.ReadImage(str(phantom_nifti))), nib.load(str(phantom_nifti)).affine,
                               atol=1e-5)


@pytest.mark.parametrize("name", ["t1ce.nrrd", "t1ce.nhdr", "t1ce.mha", "t1ce.mhd", "dicom"])
def test_every_format_reads_as_the_same_volume(phantom_nifti, formats, name):
    expected, volume = load_volume(phantom_nifti), load_volume(formats[name])
    np.testing.assert_array_equal(volume.data, expected.data)
    np.testing.assert_allclose(volume.affine, expected.affine, atol=1e-4)


def test_content_decides_where_the_name_lies(phantom_nifti, formats, tmp_path):
    expected = load_volume(phantom_nifti)
    plain = tmp_path / "plain.nii.gz"  # not compressed, named as compressed
    plain.write_bytes(gzip.decompress(phantom_nifti.read_bytes()))
    compressed = tmp_path / "compressed.nii"  # compressed, named as plain
    shutil.copy(phantom_nifti, compressed)
    nrrd = tmp_path / "really-nrrd.nii.gz"
    shutil.copy(formats["t1ce.nrrd"], nrrd)
    nifti = tmp_path / "really-nifti.mha"
    shutil.copy(phantom_nifti, nifti)
    for path in (plain, compressed, nrrd, nifti):
        volume = load_volume(path)
        np.testing.assert_array_equal(volume.data, expected.data, err_msg=str(path))
        np.testing.assert_allclose(volume.affine, expected.affine, atol=1e-4, err_msg=str(path))


def test_a_folder_of_several_dicom_series_is_refused_naming_them(phantom_nifti, tmp_path, capsys, tiny_model):
    image = sitk.ReadImage(str(phantom_nifti))[:, :, :4]
    folder = tmp_path / "two-series"
    write_dicom_series(image, folder, "1.2.826.0.1.3680043.2.1125.7.2", "T1ce axial")
    for path in write_dicom_series(image, tmp_path / "other", "1.2.826.0.1.3680043.2.1125.7.3", "FLAIR").iterdir():
        shutil.move(str(path), folder / f"b-{path.name}")
    assert main(["segment", "--t1ce", str(folder), "-o", str(tmp_path / "o.nii.gz"), "--model", str(tiny_model)]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "holds 2 DICOM series" in err
    assert "1.2.826.0.1.3680043.2.1125.7.2 'T1ce axial'" in err and "'FLAIR'" in err


@pytest.mark.slow
def test_segment_gives_the_same_label_map_from_every_format(tmp_path):
    """The bundled demo model on the phantom in the LPS voxel order: NIfTI, NRRD, MHA and DICOM give one
    label map. (On an oblique grid the affines agree to the float precision of each format's header,
    and a few voxels at region borders can differ.)"""
    nifti = _phantom_as_nifti(tmp_path, lps)
    formats = _write_formats(nifti, tmp_path)
    maps = {}
    for name, path in [("nifti", nifti), ("nrrd", formats["t1ce.nrrd"]), ("mha", formats["t1ce.mha"]),
                       ("dicom", formats["dicom"])]:
        output = tmp_path / f"{name}-labels.nii.gz"
        assert main(["segment", "--t1ce", str(path), "-o", str(output), "--model",
                     str(BUNDLED_MODEL.with_name("lckd-phantom-demo.safetensors")),
                     "--progress", "none"]) == 0, name
        maps[name] = nib.load(str(output))
    reference = maps["nifti"]
    labels = np.asarray(reference.dataobj)
    assert set(np.unique(labels)) == {0, 1, 2, 4}  # a real tumour, so equality means something
    for name, image in maps.items():
        np.testing.assert_array_equal(np.asarray(image.dataobj), labels, err_msg=name)
        np.testing.assert_allclose(image.affine, reference.affine, atol=1e-4, err_msg=name)
