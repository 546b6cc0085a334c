"""`lckd segment` end to end with a tiny model, and every bad input refused cleanly."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from lckd.cli import main


def run_cli(*args) -> int:
    return main([str(a) for a in args])


def read(path: Path) -> nib.Nifti1Image:
    return nib.load(str(path))


def test_segment_writes_label_map_on_reference_grid(write_case, tiny_model, tmp_path, capsys):
    files = write_case(("flair", "t1"))
    # T1ce on a different (LPS, 1.5 mm) grid becomes the reference
    lps = np.array([[-1.5, 0, 0, 48], [0, -1.5, 0, 50], [0, 0, 1.5, -40], [0, 0, 0, 1]])
    files.update(write_case(("t1ce",), shape=(64, 70, 54), affine=lps, folder=tmp_path / "other"))
    out = tmp_path / "out" / "tumour.nii.gz"
    assert run_cli("segment", "--flair", files["flair"], "--t1", files["t1"], "--t1ce", files["t1ce"],
                   "-o", out, "--model", tiny_model, "--progress", "none") == 0
    image, reference = read(out), read(files["t1ce"])
    assert image.shape == reference.shape
    np.testing.assert_allclose(image.affine, reference.affine)
    data = np.asarray(image.dataobj)
    assert data.dtype == np.uint8 and set(np.unique(data)) <= {0, 1, 2, 4}
    printed = capsys.readouterr().out
    assert "mL" in printed and " s " in printed


@pytest.mark.parametrize("sequences", [("flair", "t1", "t1ce", "t2"), ("flair", "t2")])
def test_released_postprocessing_reads_t1ce_on_the_output_grid(write_case, tiny_model, tmp_path, sequences):
    """--postprocess released equals the rule applied to the plain label map, with the given T1ce."""
    from lckd.postprocessing import released_postprocess

    files = write_case(sequences)
    maps = {}
    for rule in ("none", "released"):
        out = tmp_path / f"{rule}.nii.gz"
        flags = [a for s in sequences for a in (f"--{s}", files[s])]
        assert run_cli("segment", *flags, "-o", out, "--model", tiny_model, "--progress", "none",
                       "--postprocess", rule) == 0
        maps[rule] = read(out)
    spacing = maps["none"].header.get_zooms()[:3]
    t1ce = np.asarray(read(files["t1ce"]).dataobj, dtype=np.float32) if "t1ce" in files else None
    plain = np.asarray(maps["none"].dataobj)
    assert plain.any()  # a random tiny model labels voxels, so the rule has something to act on
    expected = released_postprocess(plain, spacing, t1ce)
    assert (np.asarray(maps["released"].dataobj) == expected).all()


def test_card_mirroring_is_applied_unless_no_tta(write_case, tmp_path, capsys):
    """A card with mirror_axes averages the mirrored passes (progress counts every pass); --no-tta
    gives exactly what the same weights give without mirroring in the card."""
    from conftest import make_tiny_model_file

    plain_model = make_tiny_model_file(tmp_path / "plain.safetensors", seed=3)
    mirrored_model = make_tiny_model_file(tmp_path / "mirrored.safetensors", seed=3, mirror_axes=[2])
    files = write_case(("flair", "t2"))
    maps, totals = {}, {}
    for name, model, extra in (("plain", plain_model, []), ("mirrored", mirrored_model, []),
                               ("no-tta", mirrored_model, ["--no-tta"])):
        out = tmp_path / f"{name}.nii.gz"
        assert run_cli("segment", "--flair", files["flair"], "--t2", files["t2"], "-o", out, "--model", model,
                       "--progress", "json", "--postprocess", "none", *extra) == 0
        events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        totals[name] = [e for e in events if e["event"] == "progress"][-1]["total"]
        maps[name] = np.asarray(read(out).dataobj)
    assert (maps["no-tta"] == maps["plain"]).all() and (maps["mirrored"] != maps["plain"]).any()
    assert totals["mirrored"] == 2 * totals["plain"] == 2 * totals["no-tta"]


def test_json_progress_and_brats2023_labels(write_case, tiny_model, tmp_path, capsys):
    files = write_case(("t2",))
    out = tmp_path / "t2only.nii.gz"
    assert run_cli("segment", "--t2", files["t2"], "-o", out, "--model", tiny_model, "--progress", "json",
                   "--labels", "brats2023", "--postprocess") == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert events[-1]["event"] == "done" and events[-1]["sequences"] == ["t2"]
    assert set(events[-1]["volumes_ml"]) == {"ET", "TC", "WT"}
    progress = [e for e in events if e["event"] == "progress"]
    assert progress[-1]["fraction"] == 1.0 and progress[-1]["done"] == progress[-1]["total"]
    assert set(np.unique(np.asarray(read(out).dataobj))) <= {0, 1, 2, 3}


@pytest.mark.parametrize("layout", [("brats2018", "_", ("flair", "t1", "t1ce", "t2")),
                                    ("brats2023", "-", ("t2f", "t1n", "t1c", "t2w"))])
def test_case_folder_and_batch(write_case, tiny_model, tmp_path, layout):
    _, separator, names = layout
    root = tmp_path / "cases"
    for case in ("Case_A", "Case_B"):
        files = write_case(("flair", "t1ce"), folder=root / case)
        for sequence, path in files.items():
            suffix = names[("flair", "t1", "t1ce", "t2").index(sequence)]
            path.rename(root / case / f"{case}{separator}{suffix}.nii.gz")
    assert run_cli("segment", "--case", root / "Case_A", "-o", tmp_path / "a.nii.gz", "--model", tiny_model) == 0
    assert run_cli("segment", "--batch", root, "--out-dir", tmp_path / "batch", "--model", tiny_model) == 0
    assert sorted(p.name for p in (tmp_path / "batch").iterdir()) == ["Case_A.nii.gz", "Case_B.nii.gz", "volumes.csv"]
    rows = (tmp_path / "batch" / "volumes.csv").read_text().splitlines()
    assert rows[0].startswith("case,sequences,seconds") and len(rows) == 3


def _bad_inputs(tmp_path: Path, files):
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(files["t1"].read_bytes()[:300])
    four_d = tmp_path / "four_d.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((8, 8, 8, 3), np.float32), np.eye(4)), str(four_d))
    nan = tmp_path / "nan.nii.gz"
    nib.save(nib.Nifti1Image(np.full((8, 8, 8), np.nan, np.float32), np.eye(4)), str(nan))
    zero = tmp_path / "zero.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.eye(4)), str(zero))
    noise_model = tmp_path / "noise.safetensors"
    noise_model.write_bytes(os.urandom(4096))
    pickle_model = tmp_path / "model.safetensors"
    pickle_model.write_bytes(pickle.dumps({"state_dict": [1, 2, 3]}))
    return {
        "no sequence": ([], "no input sequence"),
        "missing file": (["--t1", tmp_path / "absent.nii.gz"], "file not found"),
        "truncated": (["--t1", truncated], "not a readable NIfTI"),
        "not 3-D": (["--t1", four_d], "expected a 3-D image"),
        "all NaN": (["--t1", nan], "NaN"),
        "all zero": (["--t1", zero], "empty"),
        "same file twice": (["--t1", files["t1"], "--flair", files["t1"]], "same file"),
        "random model": (["--t1", files["t1"], "--model", noise_model], "not an LCKD model"),
        "pickle model": (["--t1", files["t1"], "--model", pickle_model], "never loaded"),
    }


def test_bad_inputs_fail_with_one_clear_line_and_write_nothing(write_case, tiny_model, tmp_path, capsys):
    files = write_case(("t1",))
    for name, (args, message) in _bad_inputs(tmp_path, files).items():
        out = tmp_path / "out.nii.gz"
        model = [] if "--model" in args else ["--model", tiny_model]
        code = run_cli("segment", *args, *model, "-o", out)
        err = capsys.readouterr().err.strip()
        assert code != 0, name
        assert message in err, (name, err)
        assert len(err.splitlines()) == 1 and "Traceback" not in err, (name, err)
        assert not out.exists(), name
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")], name


def test_python_dash_m_reports_errors_without_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "lckd", "segment", "--t1", str(tmp_path / "none.nii.gz"),
                             "-o", str(tmp_path / "o.nii.gz")], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "file not found" in result.stderr or "no default model" in result.stderr
    assert "Traceback" not in result.stderr


def test_segment_process_flushes_everything_before_its_fast_exit(write_case, tiny_model, tmp_path):
    files = write_case(("t1",))
    out = tmp_path / "own-process.nii.gz"
    result = subprocess.run([sys.executable, "-m", "lckd", "segment", "--t1", str(files["t1"]), "-o", str(out),
                             "--model", str(tiny_model), "--progress", "json"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1])["event"] == "done"
    assert read(out).shape == read(files["t1"]).shape


def test_a_profiled_segment_process_exits_normally_so_the_profile_is_written(write_case, tiny_model, tmp_path):
    files = write_case(("t2",))
    profile = tmp_path / "segment.prof"
    result = subprocess.run([sys.executable, "-m", "cProfile", "-o", str(profile), "-m", "lckd", "segment",
                             "--t2", str(files["t2"]), "-o", str(tmp_path / "o.nii.gz"), "--model", str(tiny_model),
                             "--progress", "none"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert profile.stat().st_size > 0
