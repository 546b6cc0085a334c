"""Input the model cannot read is found before inference, and `lckd segment` refuses it in one line."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from real_data import CLINICAL, SHARED_DATA

from conftest import synthetic_head, world_coordinates
from lckd.cases import read_case_folder
from lckd.cli import main
from lckd.input_check import PREPROCESS_FIX, InputProblem, check_inputs
from lckd.io import Volume, load_volume

DATA = SHARED_DATA
PATIENT = CLINICAL
needs_data = pytest.mark.skipif(not PATIENT.is_dir(), reason=f"the real data are not there ({DATA})")

GRID = np.array([[2.0, 0, 0, -50], [0, 2.0, 0, -56], [0, 0, 2.0, -44], [0, 0, 0, 1]])
SHAPE = (50, 56, 44)


def _volume(data: np.ndarray, affine: np.ndarray, name: str) -> Volume:
    return Volume(data=data.astype(np.float32), affine=affine, path=Path(name))


def _raw_head(shape=SHAPE, affine=GRID, seed=0) -> np.ndarray:
    """A head as a scanner gives it: brain, a bright scalp shell and noise in the background."""
    world = world_coordinates(shape, affine)
    radius = ((world / np.array([45.0, 55.0, 40.0])) ** 2).sum(axis=-1)
    rng = np.random.default_rng(seed)
    scalp = (radius > 1.1) & (radius < 1.3)
    return synthetic_head(shape, affine, seed) + 300.0 * scalp + np.abs(rng.normal(0, 20, shape))


def test_skull_stripped_co_registered_inputs_pass():
    volumes = {name: _volume(synthetic_head(SHAPE, GRID, seed), GRID, f"{name}.nii.gz")
               for seed, name in enumerate(("flair", "t1", "t1ce", "t2"))}
    assert check_inputs(volumes) == []


def test_raw_head_is_not_skull_stripped():
    problems = check_inputs({"t1": _volume(_raw_head(), GRID, "raw_t1.nii.gz")})
    assert len(problems) == 1
    file, message, fix = problems[0]
    assert file == "raw_t1.nii.gz" and "not skull-stripped" in message and "zero background" in message
    assert "--preprocess" in fix and fix == PREPROCESS_FIX
    assert problems[0].line() == f"{file}: {message}; {fix}"


def test_head_sized_tissue_with_a_zero_background_is_not_skull_stripped():
    # a scanner that zeroes the background: what remains is a 3.4 L head, not a brain
    affine = np.array([[2.0, 0, 0, -120], [0, 2.0, 0, -130], [0, 0, 2.0, -110], [0, 0, 0, 1]])
    shape = (120, 130, 110)
    world = world_coordinates(shape, affine)
    head = (((world / np.array([80.0, 100.0, 100.0])) ** 2).sum(axis=-1) < 1.0) * 300.0
    (problem,) = check_inputs({"t2": _volume(head, affine, "t2.nii.gz")})
    assert "not skull-stripped" in problem.message and " L of tissue" in problem.message


def test_thick_slices_are_found():
    affine = GRID.copy()
    affine[2, 2] = 5.5
    shape = (50, 56, 16)
    (problem,) = check_inputs({"t1ce": _volume(synthetic_head(shape, affine), affine, "thick.nii.gz")})
    assert problem.file == "thick.nii.gz" and "very thick slices (5.5 mm" in problem.message


def test_sequences_apart_in_physical_space_are_not_co_registered():
    moved = GRID.copy()
    moved[0, 3] += 70.0  # the same head, 70 mm to the right: no longer on the reference's brain
    volumes = {"t1ce": _volume(synthetic_head(SHAPE, GRID), GRID, "t1ce.nii.gz"),
               "flair": _volume(synthetic_head(SHAPE, GRID, 1), moved, "flair.nii.gz")}
    (problem,) = check_inputs(volumes)
    assert problem.file == "flair.nii.gz" and "not co-registered with T1ce" in problem.message
    assert check_inputs(volumes, reference="flair")[0].file == "t1ce.nii.gz"


def test_problem_unpacks_as_file_message_fix():
    problem = InputProblem("a.nii.gz", "wrong", "fix it")
    assert tuple(problem) == ("a.nii.gz", "wrong", "fix it")


def test_check_reads_paths(write_case):
    files = write_case(sequences=("t1", "t2"))
    assert check_inputs(files) == []


def _write(path: Path, data: np.ndarray, affine=GRID) -> Path:
    nib.save(nib.Nifti1Image(data.astype(np.float32), affine), str(path))
    return path


def test_segment_refuses_raw_scans_in_one_line_unless_told(tmp_path, tiny_model, capsys):
    raw = _write(tmp_path / "raw_t1.nii.gz", _raw_head())
    out = tmp_path / "seg.nii.gz"
    assert main(["segment", "--t1", str(raw), "-o", str(out), "--model", str(tiny_model)]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1
    assert error.startswith(f"lckd: error: {raw}: not skull-stripped") and "--preprocess" in error
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["raw_t1.nii.gz"]
    assert main(["segment", "--t1", str(raw), "-o", str(out), "--model", str(tiny_model),
                 "--assume-preprocessed"]) == 0
    assert out.is_file()


def test_preprocess_and_assume_preprocessed_exclude_each_other(tmp_path, tiny_model):
    with pytest.raises(SystemExit):
        main(["segment", "--t1", "x.nii.gz", "-o", str(tmp_path / "s.nii.gz"), "--preprocess",
              "--assume-preprocessed"])


# -- the real data --------------------------------------------------------------------------------

@needs_data
def test_every_brats_case_passes():
    cases = sorted((DATA / "brats2018").iterdir()) + sorted((DATA / "brats2023").iterdir())
    assert len(cases) >= 15 and all(case.is_dir() for case in cases)
    for case in cases:
        volumes = {name: load_volume(path) for name, path in read_case_folder(case).sequences.items()}
        assert len(volumes) == 4
        assert check_inputs(volumes) == [], case.name


@needs_data
def test_clinical_patient_in_brats_space_passes_and_raw_scans_do_not():
    sequences = ("flair", "t1", "t1ce", "t2")
    assert check_inputs({s: PATIENT / "brats-space" / f"{s}.nii.gz" for s in sequences}) == []
    problems = check_inputs({s: PATIENT / "native" / f"{s}.nii.gz" for s in sequences})
    skull = [Path(p.file).name for p in problems if "not skull-stripped" in p.message]
    assert sorted(skull) == sorted(f"{s}.nii.gz" for s in sequences)
    assert sorted(Path(p.file).name for p in problems if "not co-registered" in p.message) == \
        ["flair.nii.gz", "t2.nii.gz"]
    # HD-BET-stripped on the scanner's grids: skull-stripped, but 5.5 mm slices, and only T1 and T1ce
    # share the scanner's placement closely (FLAIR and T2 are 8-14 degrees off; T1 is 9 degrees off)
    problems = check_inputs({s: PATIENT / "native-hdbet" / f"{s}.nii.gz" for s in sequences})
    assert sum("very thick slices (5.5 mm" in p.message for p in problems) == 4
    assert sorted(Path(p.file).name for p in problems if "not co-registered with T1ce" in p.message) == \
        ["flair.nii.gz", "t1.nii.gz", "t2.nii.gz"]
