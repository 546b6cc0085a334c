"""The split files in ``training/splits`` against the real BraTS 2018 cases (skipped without them)."""

from __future__ import annotations

from pathlib import Path

import pytest
from real_data import BRATS2018, require

from lckd.cases import find_cases
from training.data import read_split_file

SPLITS = Path(__file__).resolve().parents[1] / "training" / "splits"


@pytest.fixture(scope="module")
def cases():
    return find_cases(require(BRATS2018))


@pytest.mark.parametrize("name", ["brats2018-seed0.json", "brats2018-by-source.json"])
def test_single_splits_hold_out_cases_never_trained_on(cases, name):
    split = read_split_file(SPLITS / name, cases)
    assert split["validation"] and split["train"]
    assert not set(split["validation"]) & set(split["train"] + split["election"] + split["meta"])


def test_the_five_folds_validate_every_case_once(cases):
    held_out = [read_split_file(SPLITS / "brats2018-5fold.json", cases, fold)["validation"] for fold in range(5)]
    names = [name for fold in held_out for name in fold]
    assert sorted(names) == sorted(case.name for case in cases) and len(names) == 14


def test_the_all_cases_split_trains_on_every_case_and_validates_none(cases):
    split = read_split_file(SPLITS / "brats2018-all.json", cases)
    assert split["validation"] == []
    assert split["train"] == sorted(case.name for case in cases)
