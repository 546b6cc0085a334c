"""The PACS round trip against a real Orthanc with its DICOMweb plugin, started on localhost by the fixture:
upload a study, `lckd segment --dicomweb URL --study UID`, read the stored SEG back from Orthanc and check
its references and frames against the NIfTI result; unreachable, refusing and not-storing servers."""

from __future__ import annotations

import csv

import nibabel as nib
import orthanc_server
import pydicom
import pytest
from dicomweb_client import DICOMwebClient
from seg_readers import dciodvfy_errors, labels_by_highdicom

from conftest import DEMO_MODEL
from lckd.cli import main

#: The test Orthanc's Lua filter: while the flag file exists it fails on segmentations, and its STOW-RS
#: answer then leaves them out of the stored instances.
REFUSING_FILTER = """
function ReceivedInstanceFilter(dicom, origin, info)
  local flag = io.open('{flag}', 'r')
  if flag ~= nil and dicom['Modality'] == 'SEG' then
    flag:close()
    error('segmentations are not accepted here')
  end
  return true
end
"""

pytestmark = pytest.mark.xdist_group("orthanc")


def run(*args) -> int:
    return main(["segment", *[str(a) for a in args], "--model", str(DEMO_MODEL), "--progress", "none"])


def errors(capsys) -> list:
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("lckd: error")]


def all_files(phantom_study):
    return [path for paths in phantom_study.study.files.values() for path in paths]


@pytest.fixture(scope="module")
def orthanc(phantom_study, tmp_path_factory):
    """A real Orthanc (DICOMweb plugin) on free localhost ports holding the phantom study."""
    problem = orthanc_server.missing()
    if problem:
        pytest.skip(problem)
    folder = tmp_path_factory.mktemp("orthanc")
    with orthanc_server.running_orthanc(folder, lua=REFUSING_FILTER.replace("{flag}", str(refuse_flag(folder)))) \
            as server:
        assert server.upload(all_files(phantom_study)) == len(all_files(phantom_study))
        yield server


def refuse_flag(folder):
    """The file whose presence makes the test Orthanc refuse segmentations (beside its log)."""
    return folder / "refuse"


def stored_segmentations(server, study_uid):
    """The SeriesInstanceUIDs of the SEG series Orthanc holds for the study (QIDO-RS)."""
    series = DICOMwebClient(server.dicomweb).search_for_series(study_uid, search_filters={"Modality": "SEG"})
    return [pydicom.Dataset.from_json(entry).SeriesInstanceUID for entry in series]


def test_a_study_goes_from_the_pacs_through_lckd_and_its_seg_comes_back(orthanc, phantom_study, tmp_path, capsys):
    uid = phantom_study.study.study_uid
    local = tmp_path / "tumour.nii.gz"
    assert run("--dicomweb", orthanc.dicomweb, "--study", uid, "-o", local) == 0
    captured = capsys.readouterr()
    assert f"retrieved 291 instances of study {uid} from {orthanc.dicomweb}" in captured.err
    assert f"study {uid} (6 series) in {orthanc.dicomweb}/studies/{uid}:" in captured.err
    assert "T1ce   <- series 400 'AX T1 SE POST GD'" in captured.err
    assert captured.out.startswith(f"{orthanc.dicomweb}/studies/{uid}/series/")
    series_uid = captured.out.split("/series/")[1].split("/")[0]
    assert series_uid in stored_segmentations(orthanc, uid)
    (seg,) = DICOMwebClient(orthanc.dicomweb).retrieve_series(uid, series_uid)
    path = tmp_path / "stored.dcm"
    seg.save_as(path, enforce_file_format=True)
    t1ce = [pydicom.dcmread(p, stop_before_pixels=True) for p in phantom_study.study.files["t1ce"]]
    (referenced,) = seg.ReferencedSeriesSequence
    assert referenced.SeriesInstanceUID == phantom_study.study.series_uids["t1ce"]
    assert {item.ReferencedSOPInstanceUID for item in referenced.ReferencedInstanceSequence} == \
        {d.SOPInstanceUID for d in t1ce}
    frames_source = {frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
                     for frame in seg.PerFrameFunctionalGroupsSequence}
    assert frames_source <= {d.SOPInstanceUID for d in t1ce}
    result = nib.load(str(local))
    labels = result.get_fdata().astype("uint8")
    assert labels.any()
    found = labels_by_highdicom(path, t1ce, result.affine, result.shape)
    assert (found == labels).all()
    assert dciodvfy_errors(path) == []


def test_a_batch_of_study_uids_accounts_for_each_in_volumes_csv(orthanc, phantom_study, tmp_path, capsys):
    uids = tmp_path / "studies.txt"
    good = phantom_study.study.study_uid
    uids.write_text(f"# one study per line\n{good}\n1.2.3.404\nnot-a-uid\n")
    out = tmp_path / "results"
    assert run("--dicomweb", orthanc.dicomweb, "--batch", uids, "--out-dir", out, "--output-format", "nifti") == 1
    rows = {row["case"]: row for row in csv.DictReader(open(out / "volumes.csv"))}
    assert list(rows) == [good, "1.2.3.404", "not-a-uid"]
    assert rows[good]["status"] == "segmented" and rows[good]["output"].startswith(f"{orthanc.dicomweb}/studies/{good}")
    assert (out / f"{good}.nii.gz").is_file()
    assert rows["1.2.3.404"]["status"] == "failed"
    assert rows["1.2.3.404"]["reason"] == (f"{orthanc.dicomweb}: the server answered HTTP 404 Not Found when "
                                          f"retrieving study 1.2.3.404 (WADO-RS)")
    assert rows["not-a-uid"]["reason"] == "'not-a-uid' is not a DICOM UID (digits and dots, at most 64 characters)"
    assert sorted(p.name for p in out.iterdir()) == [f"{good}.nii.gz", "volumes.csv"]
    assert "1 of 3 folders segmented" in capsys.readouterr().err


def test_an_unreachable_or_refusing_server_is_one_line_naming_the_url(orthanc, tmp_path, capsys):
    local = tmp_path / "tumour.nii.gz"
    closed = f"http://127.0.0.1:{orthanc_server.free_port()}/dicom-web"
    assert run("--dicomweb", closed, "--study", "1.2.3", "-o", local) == 2
    assert errors(capsys) == [f"lckd: error: {closed}: cannot reach the server (Connection refused) when "
                              f"retrieving study 1.2.3 (WADO-RS)"]
    wrong_root = f"{orthanc.rest}/not-dicom-web"
    assert run("--dicomweb", wrong_root, "--study", "1.2.3", "-o", local) == 2
    assert errors(capsys) == [f"lckd: error: {wrong_root}: the server answered HTTP 404 Not Found when "
                              f"retrieving study 1.2.3 (WADO-RS)"]
    assert not local.exists()


def test_a_store_the_server_refuses_is_an_error_and_nothing_is_written(orthanc, phantom_study, tmp_path, capsys):
    uid = phantom_study.study.study_uid
    before = len(stored_segmentations(orthanc, uid))
    local = tmp_path / "tumour.dcm"
    refuse_flag(orthanc.log.parent).touch()
    try:
        assert run("--dicomweb", orthanc.dicomweb, "--study", uid, "-o", local) == 2
    finally:
        refuse_flag(orthanc.log.parent).unlink()
    (line,) = errors(capsys)
    assert line.startswith(f"lckd: error: {orthanc.dicomweb}: the server did not store it: storing segmentation ")
    assert line.endswith("(STOW-RS) was answered without the instance among the stored ones")
    assert len(stored_segmentations(orthanc, uid)) == before
    assert not local.exists() and not list(tmp_path.glob(".tumour*"))
