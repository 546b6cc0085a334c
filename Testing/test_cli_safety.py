"""`lckd segment` never replaces a user's file, reports every batch folder, refuses what would give a
silently wrong result, and ends in one line (and a JSON `error` event) instead of a traceback."""

from __future__ import annotations

import csv
import errno
import json
import os
import struct
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import lckd.io
import lckd.segmenter
from conftest import synthetic_head
from lckd.cli import main


def run_cli(*args) -> int:
    return main([str(a) for a in args])


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def leftovers(folder: Path):
    return sorted(p.name for p in folder.rglob(".*") if p.is_file())


AFFINE = np.array([[2.0, 0, 0, -50], [0, 2.0, 0, -56], [0, 0, 2.0, -44], [0, 0, 0, 1]])


def write_brats_case(folder: Path, sequences=("flair", "t1", "t1ce", "t2"), seg: bool = False,
                     name: str | None = None, shape=(50, 56, 44)) -> Path:
    name = name or folder.name
    folder.mkdir(parents=True, exist_ok=True)
    for index, sequence in enumerate(sequences):
        nib.save(nib.Nifti1Image(synthetic_head(shape, AFFINE, seed=index), AFFINE),
                 str(folder / f"{name}_{sequence}.nii.gz"))
    if seg:
        labels = np.zeros(shape, np.uint8)
        labels[20:30, 20:30, 20:30] = 2
        nib.save(nib.Nifti1Image(labels, AFFINE), str(folder / f"{name}_seg.nii.gz"))
    return folder


# --- data loss ------------------------------------------------------------------------------------

@pytest.mark.parametrize("spelling", ["direct", "dot-dot", "symlinked output", "symlinked input", "hard link"])
def test_an_output_that_is_an_input_is_refused(write_case, tiny_model, tmp_path, capsys, spelling):
    files = write_case(("t1ce",), folder=tmp_path / "d")
    target = files["t1ce"]
    given = target
    if spelling == "dot-dot":
        output = tmp_path / "d" / ".." / "d" / "." / target.name
    elif spelling == "symlinked output":
        output = tmp_path / "link.nii.gz"
        output.symlink_to(target)
    elif spelling == "symlinked input":
        given = tmp_path / "input-link.nii.gz"
        given.symlink_to(target)
        output = target
    elif spelling == "hard link":
        output = tmp_path / "hard.nii.gz"
        os.link(target, output)
    else:
        output = target
    before = target.read_bytes()
    assert run_cli("segment", "--t1ce", given, "-o", output, "--model", tiny_model, "--progress", "none") != 0
    assert "it would be overwritten" in one_line(capsys)
    assert target.read_bytes() == before
    assert leftovers(tmp_path) == []


def test_an_output_that_is_a_file_of_the_case_folder_or_the_model_is_refused(tiny_model, tmp_path, capsys):
    case = write_brats_case(tmp_path / "Case_A", ("flair", "t1ce"), seg=True)
    seg = case / "Case_A_seg.nii.gz"
    before = seg.read_bytes()
    assert run_cli("segment", "--case", case, "-o", seg, "--model", tiny_model) != 0
    assert "a file of the case folder" in one_line(capsys)
    assert seg.read_bytes() == before
    model_bytes = tiny_model.read_bytes()
    assert run_cli("segment", "--case", case, "-o", tiny_model, "--model", tiny_model) != 0
    assert "the model file" in one_line(capsys)
    assert tiny_model.read_bytes() == model_bytes


def test_batch_keeps_cases_of_one_name_apart_and_reports_every_folder(tiny_model, tmp_path, capsys):
    root = tmp_path / "cases"
    write_brats_case(root / "HGG" / "X", ("flair", "t1ce"))
    write_brats_case(root / "LGG" / "X", ("t2",))
    (root / "notes").mkdir()
    (root / "notes" / "readme.txt").write_text("not a case")
    ambiguous = write_brats_case(root / "Y", ("t1ce",))
    nib.save(nib.Nifti1Image(synthetic_head((50, 56, 44), AFFINE), AFFINE), str(ambiguous / "Y_t1ce.nii"))
    out = tmp_path / "out"
    code = run_cli("segment", "--batch", root, "--out-dir", out, "--model", tiny_model, "--progress", "none")
    err = capsys.readouterr().err
    assert code == 1
    assert (out / "HGG" / "X.nii.gz").is_file() and (out / "LGG" / "X.nii.gz").is_file()
    rows = {row["case"]: row for row in csv.DictReader((out / "volumes.csv").open())}
    assert {name: row["status"] for name, row in rows.items()} == {
        "HGG/X": "segmented", "LGG/X": "segmented", "notes": "skipped", "Y": "failed"}
    assert rows["HGG/X"]["sequences"] == "flair+t1ce" and rows["LGG/X"]["sequences"] == "t2"
    assert "Y_t1ce.nii.gz and Y_t1ce.nii" in rows["Y"]["reason"]
    assert "no BraTS sequence files" in rows["notes"]["reason"]
    assert "2 of 4 folders segmented" in err and "1 failed, 1 skipped" in err and "Traceback" not in err


def test_batch_with_a_sequence_subset_writes_submission_names(tiny_model, tmp_path, capsys):
    root = tmp_path / "cases"
    write_brats_case(root / "A")
    write_brats_case(root / "B", ("flair", "t2"))
    out = tmp_path / "out"
    code = run_cli("segment", "--batch", root, "--out-dir", out, "--sequences", "t1,flair", "--model", tiny_model,
                   "--progress", "json")
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 1
    assert sorted(p.name for p in out.iterdir()) == ["A.nii.gz", "volumes.csv"]
    rows = {row["case"]: row for row in csv.DictReader((out / "volumes.csv").open())}
    assert rows["A"]["sequences"] == "flair+t1" and rows["A"]["status"] == "segmented"
    assert rows["B"]["status"] == "failed" and "no T1 file" in rows["B"]["reason"]
    assert [e["sequences"] for e in events if e["event"] == "done"] == [["flair", "t1"]]
    assert events[-1]["event"] == "error" and "1 of 2 folders segmented" in events[-1]["message"]


# --- one line instead of a traceback -------------------------------------------------------------

def _no_work(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded although the output cannot be written")

    monkeypatch.setattr(lckd.segmenter.Segmenter, "__init__", refuse)


def test_an_output_that_cannot_be_created_is_refused_before_any_work(write_case, tiny_model, tmp_path, capsys,
                                                                     monkeypatch):
    files = write_case(("t1",))
    a_file = tmp_path / "plain.txt"
    a_file.write_text("x")
    _no_work(monkeypatch)
    assert run_cli("segment", "--t1", files["t1"], "-o", a_file / "out.nii.gz", "--model", tiny_model) != 0
    assert "is a file, not a folder" in one_line(capsys)
    root = write_brats_case(tmp_path / "cases" / "A", ("t1",)).parent
    assert run_cli("segment", "--batch", root, "--out-dir", a_file / "out", "--model", tiny_model) != 0
    assert "is a file, not a folder" in one_line(capsys)


def _folder_refusing_new_files(tmp_path: Path) -> Path:
    """A folder this process cannot create files in: a read-only one, or (as root, who writes anywhere
    permissions allow) sysfs, which refuses new files to everyone."""
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o555)
        return locked
    try:
        Path("/sys/lckd-probe.nii.gz").touch()
    except OSError:
        return Path("/sys")
    pytest.skip("no folder refuses new files to root here")


def test_a_folder_that_takes_no_new_files_is_refused_before_any_work(write_case, tiny_model, tmp_path, capsys,
                                                                     monkeypatch):
    files = write_case(("t1",))
    locked = _folder_refusing_new_files(tmp_path)
    _no_work(monkeypatch)
    try:
        assert run_cli("segment", "--t1", files["t1"], "-o", locked / "out.nii.gz", "--model", tiny_model) != 0
        assert "cannot be written" in one_line(capsys)
    finally:
        if locked != Path("/sys"):
            locked.chmod(0o755)


def test_a_failing_write_is_one_line_and_leaves_nothing(write_case, tiny_model, tmp_path, capsys, monkeypatch):
    files = write_case(("t1",))

    def disk_full(image, filename):
        Path(filename).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename)

    monkeypatch.setattr(lckd.io.nib, "save", disk_full)
    out = tmp_path / "out" / "tumour.nii.gz"
    assert run_cli("segment", "--t1", files["t1"], "-o", out, "--model", tiny_model, "--progress", "none") != 0
    assert "No space left on device" in one_line(capsys)
    assert not out.exists() and leftovers(tmp_path) == []


@pytest.mark.parametrize("option", [["--threads", "-1"], ["--threads", "0"], ["--threads", "many"],
                                    ["--device", "tpu"], ["--device", "cuda:x"]])
def test_bad_threads_and_device_are_refused_up_front(write_case, tiny_model, tmp_path, capsys, option):
    files = write_case(("t1",))
    with pytest.raises(SystemExit) as stop:
        run_cli("segment", "--t1", files["t1"], "-o", tmp_path / "o.nii.gz", "--model", tiny_model, *option)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and f"argument {option[0]}" in err and "Traceback" not in err


def _tampered_model(source: Path, destination: Path, **changes) -> Path:
    header_length = struct.unpack("<Q", source.read_bytes()[:8])[0]
    raw = source.read_bytes()
    header = json.loads(raw[8:8 + header_length])
    card = json.loads(header["__metadata__"]["lckd_model_card"])
    for key, value in changes.items():
        if "." in key:
            outer, inner = key.split(".")
            card[outer][inner] = value
        else:
            card[key] = value
    header["__metadata__"]["lckd_model_card"] = json.dumps(card)
    encoded = json.dumps(header).encode()
    destination.write_bytes(struct.pack("<Q", len(encoded)) + encoded + raw[8 + header_length:])
    return destination


@pytest.mark.parametrize("field, value", [("tile_size", [-32, 64, 64]), ("tile_size", ["32", 64, 64]),
                                          ("tile_size", [0, 64, 64]), ("spacing_mm", [0.0, 2.0, 2.0]),
                                          ("spacing_mm", ["2", 2, 2]), ("normalisation.histogram_bins", -5),
                                          ("normalisation.name", "other"), ("network", "tiny"),
                                          ("mirror_axes", [3]), ("mirror_axes", [1, 1]), ("mirror_axes", "x")])
def test_a_tampered_model_card_names_the_field(write_case, tiny_model, tmp_path, capsys, field, value):
    files = write_case(("t1",))
    model = _tampered_model(tiny_model, tmp_path / "tampered.safetensors", **{field: value})
    assert run_cli("segment", "--t1", files["t1"], "-o", tmp_path / "o.nii.gz", "--model", model) != 0
    assert f"field {field.split('.')[0]}" in one_line(capsys)
    assert not (tmp_path / "o.nii.gz").exists()


def test_json_progress_ends_with_an_error_event_whatever_the_failure(write_case, tiny_model, tmp_path, capsys,
                                                                     monkeypatch):
    files = write_case(("t1",))
    args = ["segment", "--t1", files["t1"], "-o", tmp_path / "o.nii.gz", "--model", tiny_model, "--progress", "json"]

    def last_event():
        return json.loads(capsys.readouterr().out.splitlines()[-1])

    def crash(*args, **kwargs):
        raise ValueError("an unexpected bug")

    monkeypatch.setattr(lckd.segmenter.Segmenter, "segment_volumes", crash)
    with pytest.raises(ValueError):
        run_cli(*args)
    event = last_event()
    assert event["event"] == "error" and "an unexpected bug" in event["message"]
    with pytest.raises(SystemExit):
        run_cli(*args, "--threads", "0")
    assert last_event()["event"] == "error"


# --- silently wrong results -----------------------------------------------------------------------

def _qform_only_zero_voxel(path: Path) -> Path:
    nib.save(nib.Nifti1Image(synthetic_head((50, 56, 44), AFFINE), AFFINE), str(path))
    raw = bytearray(path.read_bytes())
    raw[80:84] = struct.pack("<f", 0.0)  # pixdim[1]
    raw[252:256] = struct.pack("<hh", 1, 0)  # qform_code 1, sform_code 0
    path.write_bytes(bytes(raw))
    return path


def test_images_that_would_give_a_wrong_result_are_refused(tmp_path, tiny_model, capsys):
    constant = tmp_path / "constant.nii.gz"
    nib.save(nib.Nifti1Image(np.full((50, 56, 44), 5, np.float32), AFFINE), str(constant))
    labels = tmp_path / "labels.nii.gz"
    values = np.zeros((50, 56, 44), np.int16)
    values[10:40, 10:40, 10:30], values[20:30, 20:30, 15:25], values[22:26, 22:26, 18:22] = 2, 1, 4
    nib.save(nib.Nifti1Image(values, AFFINE), str(labels))
    qform = _qform_only_zero_voxel(tmp_path / "qform.nii")
    folder = tmp_path / "a-folder"
    folder.mkdir()
    cases = {"constant": (constant, "same value (5)"), "label map": (labels, "values 0, 1, 2, 4"),
             "qform zero voxel": (qform, "voxel size"), "folder": (folder, "is a folder")}
    for name, (path, message) in cases.items():
        assert run_cli("segment", "--t1", path, "-o", tmp_path / "o.nii.gz", "--model", tiny_model) != 0, name
        err = one_line(capsys)
        assert message in err and str(path) in err, (name, err)
    assert not (tmp_path / "o.nii.gz").exists()


@pytest.mark.parametrize("second", ["Case_A_t1ce.nii", "Case_A-t1c.nii.gz"])
def test_two_files_for_one_sequence_are_refused_naming_both(tiny_model, tmp_path, capsys, second):
    case = write_brats_case(tmp_path / "Case_A", ("flair", "t1ce"))
    nib.save(nib.Nifti1Image(synthetic_head((50, 56, 44), AFFINE), AFFINE), str(case / second))
    assert run_cli("segment", "--case", case, "-o", tmp_path / "o.nii.gz", "--model", tiny_model) != 0
    err = one_line(capsys)
    assert "Case_A_t1ce.nii.gz" in err and second in err


def test_a_folder_as_model_and_a_missing_lckd_model_say_so(write_case, tmp_path, capsys, monkeypatch):
    files = write_case(("t1",))
    assert run_cli("segment", "--t1", files["t1"], "-o", tmp_path / "o.nii.gz", "--model", tmp_path) != 0
    assert "is a folder" in one_line(capsys)
    monkeypatch.setenv("LCKD_MODEL", str(tmp_path / "gone.safetensors"))
    assert run_cli("segment", "--t1", files["t1"], "-o", tmp_path / "o.nii.gz") != 0
    assert "LCKD_MODEL points to a missing file" in one_line(capsys)


def test_evaluate_refuses_a_label_map_of_another_shape_and_warns_about_unlabelled_cases(tiny_model, tmp_path,
                                                                                        capsys):
    data = tmp_path / "data"
    write_brats_case(data / "Labelled", seg=True)
    write_brats_case(data / "Unlabelled")
    seg = data / "Labelled" / "Labelled_seg.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((40, 56, 44), np.uint8), AFFINE), str(seg))
    code = run_cli("evaluate", "--data", data, "--model", tiny_model, "--out", tmp_path / "eval", "--no-progress")
    err = capsys.readouterr().err
    assert code != 0
    assert "warning: 1 case folder(s) without a label map are skipped: Unlabelled" in err
    assert f"{seg}: the label map's shape (40, 56, 44) differs" in err and "Traceback" not in err
    for command in (("evaluate", "--model", tiny_model), ("train", "--method", "lckd")):
        assert run_cli(*command, "--data", data, "--out", tmp_path / "x", "--fold", "1") != 0
        assert "--fold 1 needs --split FILE" in one_line(capsys)


def test_case_with_a_sequence_subset_and_a_results_folder_inside_the_batch(tiny_model, tmp_path, capsys):
    root = tmp_path / "cases"
    case = write_brats_case(root / "A")
    out = tmp_path / "a.nii.gz"
    assert run_cli("segment", "--case", case, "--sequences", "t2", "-o", out, "--model", tiny_model,
                   "--progress", "json") == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["sequences"] == ["t2"]
    assert run_cli("segment", "--t1", case / "A_t1.nii.gz", "--sequences", "t1", "-o", out, "--model", tiny_model) != 0
    assert "--sequences selects from a case folder" in one_line(capsys)
    for _ in range(2):  # the second run finds the first run's results below the batch folder: not a case
        assert run_cli("segment", "--batch", root, "--out-dir", root / "results", "--sequences", "t1ce",
                       "--model", tiny_model, "--progress", "none") == 0
    rows = list(csv.DictReader((root / "results" / "volumes.csv").open()))
    assert [(row["case"], row["status"], row["sequences"]) for row in rows] == [("A", "segmented", "t1ce")]
