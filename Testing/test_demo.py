"""`make demo` as a newcomer runs it: on a fresh clone (no ../shared/data) and on their own case folder."""

from __future__ import annotations

import re
from pathlib import Path

import demo
import pytest


@pytest.mark.slow
def test_fresh_clone_demo_segments_a_phantom_with_the_phantom_model(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(demo, "REAL_CASES", tmp_path / "no-shared-data")
    assert demo.main([]) == 0
    printed = capsys.readouterr().out
    assert "case: synthetic phantom, segmented by the phantom-trained demo model" in printed
    assert "model: lckd-phantom-demo" in printed and demo.OWN_CASE_HINT in printed
    rows = {line.split()[0]: [float(v) for v in line.split()[1:]] for line in printed.splitlines()
            if re.match(r"(flair|t1|t1ce|t2)(\+\w+)* ", line)}
    assert list(rows) == ["+".join(subset) for subset in demo.PHANTOM_SUBSETS]
    for subset, figures in rows.items():  # Dice ET, TC, WT: the phantom's obvious tumour is found
        assert figures[2] > 0.7, (subset, figures)
    assert (tmp_path / "demo_output" / "overlay.png").stat().st_size > 10_000


def test_demo_on_your_own_case_folder_without_labels_prints_volumes(tmp_path, monkeypatch, capsys, write_case,
                                                                     tiny_model):
    folder = tmp_path / "Patient7"
    folder.mkdir()
    for name, path in write_case(("flair", "t1ce", "t2"), folder=tmp_path / "written").items():
        path.rename(folder / f"Patient7_{name}.nii.gz")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LCKD_MODEL", str(tiny_model))
    assert demo.main(["--case", str(folder)]) == 0
    printed = capsys.readouterr().out
    assert "case: your case Patient7" in printed and "volumes instead of Dice" in printed
    assert [line.split()[0] for line in printed.splitlines() if re.match(r"(flair|t1ce)[+\w]* ", line)] == \
        ["flair+t1ce+t2", "flair+t2", "t1ce"]
    assert demo.OWN_CASE_HINT not in printed
    assert (tmp_path / "demo_output" / "overlay.png").is_file()


def test_demo_names_a_missing_case_folder(tmp_path, capsys):
    assert demo.main(["--case", str(tmp_path / "nowhere")]) == 2
    assert str(Path(tmp_path / "nowhere")) in capsys.readouterr().err
