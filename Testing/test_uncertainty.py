"""The members' spread (lckd.uncertainty): the voxel map and the quality estimate on constructed probabilities
whose answer is known, the members handed over by the sliding window, and `lckd segment --uncertainty`,
the quality estimate and the review flag end to end with a tiny model."""

from __future__ import annotations

import copy
import csv
import json
import math

import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import make_tiny_model_file
from lckd.cli import main
from lckd.ensemble import NetworkEnsemble
from lckd.inference import sliding_window_probabilities
from lckd.network import PRESETS, LCKDNet
from lckd.sequences import REGIONS, presence_mask
from lckd.uncertainty import (
    REVIEW_BELOW,
    MemberSpread,
    binary_entropy,
    member_count,
    needs_review,
    review_message,
    uncertainty_map,
)

TILE = (32, 64, 64)
ET, WT, TC = (REGIONS.index(region) for region in ("ET", "WT", "TC"))


def run_cli(*args) -> int:
    return main([str(a) for a in args])


def box(shape, low, high) -> torch.Tensor:
    """A boolean box ``[low, high)`` along every axis of ``shape``."""
    mask = torch.zeros(shape, dtype=torch.bool)
    mask[tuple(slice(a, b) for a, b in zip(low, high))] = True
    return mask


def member(et=None, wt=None, tc=None, shape=(8, 8, 8), inside=0.9, outside=0.1) -> torch.Tensor:
    """Region probabilities ``(3, ...)``: ``inside`` on each region's mask, ``outside`` elsewhere."""
    probabilities = torch.full((3,) + shape, outside)
    for channel, mask in ((ET, et), (WT, wt), (TC, tc)):
        if mask is not None:
            probabilities[channel][mask] = inside
    return probabilities


def spread_of(members) -> MemberSpread:
    spread = MemberSpread()
    for probabilities in members:
        spread(probabilities)
    return spread


# -- the measures on constructed probabilities -------------------------------------------------------

def test_binary_entropy_is_zero_when_certain_and_one_bit_at_a_half():
    values = binary_entropy(torch.tensor([0.0, 1.0, 0.5, 0.1, 0.9]))
    assert values[0] < 1e-4 and values[1] < 1e-4 and values[2] == pytest.approx(1.0)
    expected = -(0.1 * math.log2(0.1) + 0.9 * math.log2(0.9))
    assert values[3] == pytest.approx(expected, abs=1e-6) and values[4] == pytest.approx(expected, abs=1e-6)


def test_the_map_is_the_most_uncertain_region_of_each_voxel():
    probabilities = torch.zeros(3, 2, 1, 1)
    probabilities[:, 0, 0, 0] = torch.tensor([0.99, 0.5, 0.02])  # WT undecided
    probabilities[:, 1, 0, 0] = torch.tensor([0.0, 1.0, 0.1])  # only TC a little uncertain
    found = uncertainty_map(probabilities)
    assert found.shape == (2, 1, 1)
    assert found[0, 0, 0] == pytest.approx(1.0)
    assert found[1, 0, 0] == pytest.approx(float(binary_entropy(torch.tensor(0.1))), abs=1e-6)
    assert float(uncertainty_map(torch.ones(3, 4, 4, 4)).max()) < 1e-4  # agreement on every region: certain


def test_identical_members_agree_perfectly():
    tumour = box((8, 8, 8), (2, 2, 2), (6, 6, 6))
    spread = spread_of([member(et=tumour, wt=tumour, tc=tumour)] * 5)
    averaged = member(et=tumour, wt=tumour, tc=tumour)
    assert spread.members == 5 and spread.quality(averaged) == {"ET": 1.0, "TC": 1.0, "WT": 1.0}
    assert needs_review(spread.quality(averaged)) == []


def test_quality_is_the_mean_dice_of_each_member_against_the_average():
    shape = (10, 10, 10)
    whole = box(shape, (0, 0, 0), (10, 10, 4))  # 400 voxels
    half = box(shape, (0, 0, 0), (10, 10, 2))  # 200 of them
    shifted = box(shape, (0, 0, 2), (10, 10, 6))  # 400 voxels, 200 shared with whole
    core = box(shape, (2, 2, 0), (4, 4, 4))  # 16 voxels
    members = [member(wt=whole, tc=core, shape=shape), member(wt=whole, tc=core, shape=shape),
               member(wt=half, shape=shape), member(wt=shifted, tc=core, shape=shape)]
    averaged = member(wt=whole, tc=core, shape=shape)  # what the average gives (> 0.5)
    quality = spread_of(members).quality(averaged)
    # WT: 1, 1, 2*200/600, 2*200/800; TC: 1, 1, 0 (member empty, average not), 1; ET: all empty -> 1
    assert quality["WT"] == pytest.approx((1 + 1 + 2 / 3 + 1 / 2) / 4)
    assert quality["TC"] == pytest.approx(3 / 4)
    assert quality["ET"] == 1.0


def test_a_single_member_has_no_spread():
    tumour = box((8, 8, 8), (2, 2, 2), (6, 6, 6))
    assert spread_of([member(wt=tumour)]).quality(member(wt=tumour)) is None
    assert needs_review(None) == []
    assert member_count(3, 8) == 24 and member_count(1, 1) == 1


def test_the_review_flag_names_the_regions_below_their_threshold():
    quality = {region: REVIEW_BELOW[region] + 0.01 for region in REVIEW_BELOW}
    assert needs_review(quality) == []
    quality["ET"] = REVIEW_BELOW["ET"] - 0.01
    quality["WT"] = 0.0
    assert needs_review(quality) == ["ET", "WT"]
    assert review_message("ET") == "enhancing tumour uncertain: review"
    assert review_message("TC") == "tumour core uncertain: review"
    assert all(0 < value < 1 for value in REVIEW_BELOW.values())


# -- the members handed over by the sliding window --------------------------------------------------------

def test_the_sliding_window_hands_over_every_network_on_every_mirror_image():
    torch.manual_seed(2)
    networks = [LCKDNet(PRESETS["tiny"]).freeze_for_inference() for _ in range(2)]
    ensemble = NetworkEnsemble([copy.deepcopy(network) for network in networks])
    images = torch.randn(4, 40, 70, 90)
    present = presence_mask(("flair", "t1ce"))
    received = []
    averaged = sliding_window_probabilities(ensemble, images, present, TILE, mirror_axes=(2,),
                                            on_member=lambda p: received.append(p.clone()))
    assert len(received) == 4 and all(p.shape == (3, 40, 70, 90) for p in received)
    torch.testing.assert_close(torch.stack(received).mean(dim=0), averaged, atol=1e-6, rtol=0)
    # the same average as without collecting the members (blending per network, then averaging)
    torch.testing.assert_close(sliding_window_probabilities(ensemble, images, present, TILE, mirror_axes=(2,)),
                               averaged, atol=1e-5, rtol=0)
    # mirror image by mirror image, network by network: member 1 is the second network on the case itself
    alone = sliding_window_probabilities(networks[1], images, present, TILE)
    torch.testing.assert_close(received[1], alone, atol=1e-5, rtol=0)
    assert (received[0] - received[1]).abs().max() > 1e-2


def test_a_single_network_hands_over_its_mirror_images():
    torch.manual_seed(3)
    network = LCKDNet(PRESETS["tiny"]).freeze_for_inference()
    images = torch.randn(4, 40, 70, 90)
    present = presence_mask(("t2",))
    received = []
    averaged = sliding_window_probabilities(network, images, present, TILE, mirror_axes=(0, 1),
                                            on_member=lambda p: received.append(p.clone()))
    assert len(received) == 4
    torch.testing.assert_close(torch.stack(received).mean(dim=0), averaged, atol=1e-6, rtol=0)


# -- lckd segment ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mirrored_model(tmp_path_factory):
    """A tiny network whose card asks for mirroring along x: two members."""
    return make_tiny_model_file(tmp_path_factory.mktemp("mirrored") / "tiny.safetensors", seed=6, mirror_axes=[2])


def test_segment_writes_the_map_on_the_label_grid_and_reports_the_quality(write_case, mirrored_model, tmp_path,
                                                                       capsys):
    files = write_case(("flair", "t1ce"))
    out, uncertain = tmp_path / "out" / "tumour.nii.gz", tmp_path / "out" / "uncertainty.nii.gz"
    assert run_cli("segment", "--flair", files["flair"], "--t1ce", files["t1ce"], "-o", out, "--uncertainty",
                   uncertain, "--model", mirrored_model, "--progress", "json") == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    done = events[-1]
    assert done["event"] == "done" and done["uncertainty"] == str(uncertain) and done["members"] == 2
    assert set(done["quality"]) == {"ET", "TC", "WT"} and all(0 <= v <= 1 for v in done["quality"].values())
    assert done["review"] == needs_review(done["quality"])
    labels, voxel_map, reference = nib.load(str(out)), nib.load(str(uncertain)), nib.load(str(files["t1ce"]))
    assert voxel_map.shape == labels.shape == reference.shape
    np.testing.assert_allclose(voxel_map.affine, labels.affine)
    values = np.asarray(voxel_map.dataobj)
    assert values.dtype == np.float32 and values.min() >= 0 and values.max() <= 1
    assert values.max() > 0.1  # a random tiny network is unsure somewhere


def test_segment_prints_the_quality_and_flags_regions_for_review(write_case, mirrored_model, tmp_path, capsys,
                                                                 monkeypatch):
    files = write_case(("t2",))
    out = tmp_path / "tumour.nii.gz"
    monkeypatch.setattr("lckd.uncertainty.REVIEW_BELOW", {"ET": 1.01, "TC": 0.0, "WT": 1.01})
    assert run_cli("segment", "--t2", files["t2"], "-o", out, "--model", mirrored_model, "--progress", "none") == 0
    printed = capsys.readouterr().out.splitlines()
    assert "quality ET " in printed[0] and " TC " in printed[0] and " WT " in printed[0]
    assert printed[1:] == [f"{out}: enhancing tumour uncertain: review", f"{out}: whole tumour uncertain: review"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t2.nii.gz", "tumour.nii.gz"]  # no map unless asked


def test_the_cards_own_review_thresholds_replace_the_fallback(write_case, tmp_path, capsys, monkeypatch):
    model = make_tiny_model_file(tmp_path / "own.safetensors", seed=6, mirror_axes=[2],
                                 review_below={"ET": 0.0, "TC": 0.0, "WT": 0.0})
    files = write_case(("t2",))
    monkeypatch.setattr("lckd.uncertainty.REVIEW_BELOW", {"ET": 1.01, "TC": 0.0, "WT": 1.01})
    assert run_cli("segment", "--t2", files["t2"], "-o", tmp_path / "tumour.nii.gz", "--model", model,
                   "--progress", "none") == 0
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 1 and "quality ET " in printed[0]  # the fallback would flag ET and WT (test above)


def test_batch_table_has_the_quality_and_review_columns(write_case, mirrored_model, tmp_path):
    root = tmp_path / "cases"
    for case in ("Case_A", "Case_B"):
        for sequence, path in write_case(("flair", "t2"), folder=root / case).items():
            path.rename(root / case / f"{case}_{sequence}.nii.gz")
    assert run_cli("segment", "--batch", root, "--out-dir", tmp_path / "batch", "--model", mirrored_model) == 0
    with open(tmp_path / "batch" / "volumes.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2
    for row in rows:
        quality = {region: float(row[f"{region}_quality"]) for region in ("ET", "TC", "WT")}
        assert all(0 <= value <= 1 for value in quality.values())
        assert row["review"].split() == needs_review(quality)


def test_uncertainty_refusals_write_nothing(write_case, tiny_model, mirrored_model, tmp_path, capsys):
    files = write_case(("flair",))
    out = tmp_path / "tumour.nii.gz"
    # one network, no mirroring: no spread to map (also with --no-tta on a mirrored card)
    for model, extra in ((tiny_model, []), (mirrored_model, ["--no-tta"])):
        assert run_cli("segment", "--flair", files["flair"], "-o", out, "--uncertainty", tmp_path / "u.nii.gz",
                       "--model", model, *extra) == 2
        assert "no spread to map" in capsys.readouterr().err
    # the map may not replace the label map or an input, and must be NIfTI
    for target, message in ((out, "the label map"), (files["flair"], "the FLAIR input"),
                            (tmp_path / "u.nrrd", "must be a NIfTI file")):
        assert run_cli("segment", "--flair", files["flair"], "-o", out, "--uncertainty", target,
                       "--model", mirrored_model) == 2
        assert message in capsys.readouterr().err
    assert run_cli("segment", "--batch", tmp_path, "--out-dir", tmp_path / "b", "--uncertainty",
                   tmp_path / "u.nii.gz", "--model", mirrored_model) == 2
    assert "--uncertainty" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["flair.nii.gz"]


def test_a_single_member_segments_without_a_quality_estimate(write_case, tiny_model, tmp_path, capsys):
    files = write_case(("t1",))
    assert run_cli("segment", "--t1", files["t1"], "-o", tmp_path / "tumour.nii.gz", "--model", tiny_model,
                   "--progress", "json") == 0
    done = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert done["quality"] is None and done["review"] == [] and done["members"] == 1


# -- a real case with the bundled default model ------------------------------------------------------

@pytest.mark.slow
def test_on_a_real_case_the_map_marks_the_tumour_not_the_brain_and_grows_without_sequences(tmp_path, capsys):
    """Properties any reasonable model has (the case may or may not be among its training cases): the members
    agree far from the tumour, the map is highest where the tumour is drawn, and with FLAIR alone the tumour
    is less certain than with all four sequences."""
    from real_data import BRATS2018, require
    from scipy import ndimage

    from lckd.cases import find_cases

    case = find_cases(require(BRATS2018))[0]
    found = {}
    for name, sequences in (("all four", ("flair", "t1", "t1ce", "t2")), ("FLAIR alone", ("flair",))):
        out, uncertain = tmp_path / f"{len(sequences)}.nii.gz", tmp_path / f"{len(sequences)}-map.nii.gz"
        flags = [a for s in sequences for a in (f"--{s}", case.sequences[s])]
        assert run_cli("segment", *flags, "-o", out, "--uncertainty", uncertain, "--progress", "json",
                       "--device", "cpu", "--threads", "1") == 0
        done = json.loads(capsys.readouterr().out.splitlines()[-1])
        assert done["members"] > 1 and all(0 <= value <= 1 for value in done["quality"].values())
        labels, values = np.asarray(nib.load(str(out)).dataobj), np.asarray(nib.load(str(uncertain)).dataobj)
        assert values.shape == labels.shape and 0 <= values.min() and values.max() <= 1
        tumour = labels > 0
        assert tumour.sum() > 1000, f"{name}: no tumour found in {case.name}"
        brain = nib.load(str(case.sequences["flair"])).get_fdata() != 0
        far = brain & (ndimage.distance_transform_edt(~tumour) > 20)  # 1 mm voxels: over 2 cm from the tumour
        edge = tumour & ~ndimage.binary_erosion(tumour, iterations=2)
        assert values[far].mean() < 0.15 and values[edge].mean() > 4 * values[far].mean(), name
        found[name] = float(values[tumour].mean())
    assert found["FLAIR alone"] > found["all four"], found
