"""`make bench`'s report: each device kind replaces only its own section of Benchmarks.md."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent / "Benchmarks" / "run_benchmarks.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("run_benchmarks", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write(bench, monkeypatch, report: Path, kind: str, seconds: float) -> None:
    monkeypatch.setattr(bench, "device_kind", lambda device: (kind, kind.upper()))
    rows = [{"name": "lckd segment, paper preset", "wall_s": seconds, "peak_gb": 1.0, "note": ""},
            {"name": "MONAI SegResNet", "wall_s": 2 * seconds, "peak_gb": 1.0, "note": ""}]
    bench.write_report(report, "cuda" if kind == "gpu" else "cpu", rows, [], [], None, [], None, (0.0, 0.0))


def test_each_kind_keeps_its_own_section(bench, monkeypatch, tmp_path):
    report = tmp_path / "Benchmarks.md"
    report.write_text("# Benchmarks\n\nIntro.\n\n## Notes\n\nHand-written.\n")
    write(bench, monkeypatch, report, "cpu-avx512-bf16", 11.0)
    write(bench, monkeypatch, report, "gpu", 0.5)
    write(bench, monkeypatch, report, "cpu-avx2", 33.0)
    write(bench, monkeypatch, report, "cpu-avx512-bf16", 12.0)
    text = report.read_text()
    assert text.startswith("# Benchmarks\n\nIntro.\n")
    assert text.rstrip().endswith("## Notes\n\nHand-written.")
    starts = [text.index(f"<!-- make bench {kind}:") for kind in ("cpu-avx512-bf16", "cpu-avx2", "gpu")]
    assert starts == sorted(starts)  # CPU kinds together, before the GPU's
    for kind, seconds in (("cpu-avx512-bf16", "12.00"), ("cpu-avx2", "33.00"), ("gpu", "0.50")):
        assert text.count(f"<!-- make bench {kind}:") == 1 and text.count(f"<!-- /make bench {kind} -->") == 1
        section = text[text.index(f"<!-- make bench {kind}:"):text.index(f"<!-- /make bench {kind} -->")]
        assert f"| lckd segment, paper preset | {seconds} | 1.00 | 0.50 |" in section
    assert "11.00" not in text


def test_loader_and_preprocessing_tables(bench, monkeypatch, tmp_path):
    """The rows loader_throughput.py and preprocessing_steps.py print become two tables of the CPU section."""
    monkeypatch.setattr(bench, "device_kind", lambda device: ("cpu-x", "CPU X"))
    rows = [{"name": "MONAI SegResNet", "wall_s": 2.0, "peak_gb": 1.0, "note": ""}]
    loader = [{"augmentation": chain, "batch": 2, "tile": [80, 160, 160], "batches_per_s_per_worker": rate}
              for chain, rate in (("monai", 0.2), ("fast", 1.0))]
    preprocessing = {"rows": [{"step": "brain extraction (t1, deepbet)", "seconds": 7.4, "cpu_seconds": 11.1,
                               "peak_rss_mib": 1502}],
                     "problems": 6, "volumes_ml": {"WT": 15.4}, "working_grid": [238, 212, 166]}
    report = tmp_path / "Benchmarks.md"
    bench.write_report(report, "cpu", rows, [], [], None, loader, preprocessing, (0.0, 0.0))
    text = report.read_text()
    assert "| monai | 2 | 80x160x160 | 0.200 | 1.0 |" in text
    assert "| fast | 2 | 80x160x160 | 1.000 | 5.0 |" in text
    assert "working grid 238x212x166, 6 input problems found" in text
    assert "| brain extraction (t1, deepbet) | 7.40 | 11.10 | 1502 |" in text
    assert text.index("| fast |") < text.index("<!-- /make bench cpu-x -->")


def test_device_kind_names_the_cpu_instruction_set(bench):
    import torch

    kind, title = bench.device_kind("cpu")
    capability = torch.backends.cpu.get_cpu_capability()
    assert kind.startswith(f"cpu-{capability.lower()}") and capability in title
    assert bench.device_kind("cuda") == ("gpu", "GPU")


@pytest.mark.parametrize("bf16, amx, suffix, words", [(False, False, "", "(no native bf16)"),
                                                       (True, False, "-bf16", "with native bf16"),
                                                       (True, True, "-amx", "with AMX (native bf16)")])
def test_amx_and_avx512_bf16_keep_separate_sections(bench, monkeypatch, bf16, amx, suffix, words):
    """bf16 runs on AMX tiles on one CPU and on AVX-512 on another: their timings must not replace each other."""
    import torch

    import lckd.inference

    monkeypatch.setattr(bench, "native_bf16", lambda device: bf16)
    monkeypatch.setattr(lckd.inference, "cpu_has_amx", lambda: amx)
    capability = torch.backends.cpu.get_cpu_capability()
    assert bench.device_kind("cpu") == (f"cpu-{capability.lower()}{suffix}", f"CPU, {capability} {words}")


def test_precision_agreement_names_its_cases(bench, monkeypatch, tmp_path):
    monkeypatch.setattr(bench, "device_kind", lambda device: ("cpu-x", "CPU X"))
    rows = [{"name": "MONAI SegResNet", "wall_s": 2.0, "peak_gb": 1.0, "note": ""}]
    agreement = {"model": "m.safetensors", "source": "BraTS 2018", "cases": 2, "subsets": 15,
                 "dice_mean": {"ET": 0.99, "TC": 0.995, "WT": 0.999}, "dice_min": {"ET": 0.9, "TC": 0.95, "WT": 0.98},
                 "worst": {"ET": {"subset": "t1", "case": "Brats18_X", "fp32_voxels": 12}},
                 "paper_tile_mean_abs_probability_difference": 0.001}
    report = tmp_path / "Benchmarks.md"
    bench.write_report(report, "cpu", rows, [], [], agreement, [], None, (0.0, 0.0))
    text = report.read_text()
    assert "m.safetensors, 2 BraTS 2018 cases x 15 subsets" in text
    assert "| lowest | 0.9000 | 0.9500 | 0.9800 |" in text and "ET t1 (case Brats18_X, 12 voxels in fp32)" in text


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPT.parent / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_method_comparison_goal_figures(tmp_path):
    comparison = load_script("method_comparison")
    assert comparison.WITHOUT_T1CE == ("flair", "t1", "t2", "flair+t1", "flair+t2", "t1+t2")
    subsets = {key: {"ET": 0.0, "TC": 0.0, "WT": 0.0} for key in
               ("flair", "t1", "t1ce", "t2", "flair+t1", "flair+t1ce", "flair+t2", "t1+t1ce", "t1+t2", "t1ce+t2",
                "flair+t1+t1ce", "flair+t1+t2", "flair+t1ce+t2", "t1+t1ce+t2", "flair+t1+t1ce+t2")}
    subsets["flair+t1+t1ce+t2"] = {"ET": 0.6, "TC": 0.75, "WT": 0.9}
    subsets["flair"] = {"ET": 0.3, "TC": 0.3, "WT": 0.6}  # mean 0.4, one of six -> 0.4 / 6
    subsets["t1ce"] = {"ET": 0.9, "TC": 0.9, "WT": 0.9}  # has T1ce: only in the third figure (7 subsets)
    result = {"subsets": subsets, "average": {"ET": 0.1, "TC": 0.2, "WT": 0.3},
              "hd95_average": {"ET": 10.0, "TC": 20.0, "WT": 30.0}, "cases": 3}
    assert sorted(comparison.SINGLES_AND_PAIRS_WITHOUT_T1CE) == sorted(comparison.WITHOUT_T1CE + ("t1ce",))
    assert comparison.goal_figures(result) == pytest.approx((0.75, 0.4 / 6, 1.3 / 7))
    folder = tmp_path / "eval-a"
    folder.mkdir()
    (folder / "evaluation.json").write_text(json.dumps(result))
    table = comparison.markdown(comparison.parse_runs([f"A={folder}", f"B={folder / 'evaluation.json'}"]))
    assert "| A | 10.0 | 20.0 | 30.0 | 10.0 | 20.0 | 30.0 | 0.750 | 0.067 | 0.186 |" in table
    assert "| flair+t1+t1ce+t2 | 60.0 | 75.0 | 90.0 | 60.0 | 75.0 | 90.0 |" in table
    with pytest.raises(SystemExit, match="no evaluation.json"):
        comparison.parse_runs([f"C={tmp_path}"])
    # folds pooled by case count: 3 cases at 0.9 and 1 case at 0.5 give 0.8
    other = {**result, "cases": 1, "subsets": {k: {"ET": 0.5, "TC": 0.5, "WT": 0.5} for k in subsets},
             "hd95": {k: {"ET": 4.0, "TC": 4.0, "WT": 4.0} for k in subsets}}
    result["hd95"] = {k: {"ET": 8.0, "TC": 8.0, "WT": 8.0} for k in subsets}
    (folder / "evaluation.json").write_text(json.dumps(result))
    (tmp_path / "other.json").write_text(json.dumps(other))
    pooled = comparison.parse_runs([f"CV={folder},{tmp_path / 'other.json'}"])["CV"]
    assert pooled["cases"] == 4
    assert pooled["subsets"]["t1ce"] == pytest.approx({"ET": 0.8, "TC": 0.8, "WT": 0.8})
    assert pooled["hd95"]["flair"]["WT"] == pytest.approx(7.0)
    assert pooled["average"]["ET"] == pytest.approx(sum(s["ET"] for s in pooled["subsets"].values()) / 15)
    assert "per_case" not in pooled  # only when every pooled evaluation has per-case figures
    result["per_case"] = {"Case_A": {"dice": result["subsets"], "hd95": result["hd95"]}}
    other["per_case"] = {"Case_B": {"dice": other["subsets"], "hd95": other["hd95"]}}
    (folder / "evaluation.json").write_text(json.dumps(result))
    (tmp_path / "other.json").write_text(json.dumps(other))
    pooled = comparison.parse_runs([f"CV={folder},{tmp_path / 'other.json'}"])["CV"]
    assert list(pooled["per_case"]) == ["Case_A", "Case_B"]
    assert pooled["per_case"]["Case_B"]["dice"]["t1ce"] == {"ET": 0.5, "TC": 0.5, "WT": 0.5}


def test_ensemble_candidates_average_models_and_vary_the_first_models_thresholds():
    from lckd.sequences import REGIONS

    tried = load_script("ensemble_and_thresholds").candidates(["A", "B"], [0.4, 0.5])
    names = [name for name, _, _ in tried]
    assert names[:3] == ["A", "B", "A+B"] and len(names) == 3 + 7
    assert all(list(t) == [0.5] * 3 for _, _, t in tried[:3]) and tried[2][1] == ("A", "B")
    by_name = {name: (members, threshold) for name, members, threshold in tried}
    members, threshold = by_name["A ET>0.4 TC>0.5 WT>0.4"]
    assert members == ("A",)
    assert dict(zip(REGIONS, threshold)) == {"ET": 0.4, "TC": 0.5, "WT": 0.4}


def test_label_contrast_is_the_label_median_over_normal_brain():
    import numpy as np

    contrast = load_script("label_contrast").contrast
    image = np.zeros((4, 4, 4), dtype=np.float32)
    labels = np.zeros((4, 4, 4), dtype=np.uint8)
    image[1:3] = 50.0  # normal-appearing brain
    image[1, 1, 1:3], labels[1, 1, 1:3] = 80.0, 4  # a label 1.6 times as bright
    assert contrast(image, labels, 4) == pytest.approx(1.6)
    assert np.isnan(contrast(image, labels, 1))  # no such label in this case


def test_learning_curve_table_slope_and_plot(tmp_path):
    curve = load_script("learning_curve")
    keys = ("flair", "t1", "t1ce", "t2", "flair+t1", "flair+t1ce", "flair+t2", "t1+t1ce", "t1+t2", "t1ce+t2",
            "flair+t1+t1ce", "flair+t1+t2", "flair+t1ce+t2", "t1+t1ce+t2", "flair+t1+t1ce+t2")
    places = []
    for count, dice in ((7, 0.5), (14, 0.6), (28, 0.7)):  # +0.1 per doubling in every subset
        folder = tmp_path / f"eval-{count}"
        folder.mkdir()
        result = {"subsets": {k: {"ET": dice, "TC": dice, "WT": dice} for k in keys}, "cases": 7}
        (folder / "evaluation.json").write_text(json.dumps(result))
        places.append(f"{count}={folder}")
    assert curve.per_doubling([7, 14, 28], [0.5, 0.6, 0.7]) == pytest.approx(0.1)
    points = curve.parse_points(list(reversed(places)))
    assert list(points) == [7, 14, 28]
    table = curve.markdown(points, {28: points[7]})
    assert "| 14 | validation | 7 | 0.600 | 0.600 | 0.600 |" in table
    assert "| 28 | its training cases | 7 | 0.500 | 0.500 | 0.500 |" in table
    assert "all four +10.0 points, without T1ce +10.0 points, singles, pairs w/o T1ce +10.0 points" in table
    curve.plot(points, {28: points[7]}, tmp_path / "curve.png")
    assert (tmp_path / "curve.png").stat().st_size > 5_000
    with pytest.raises(SystemExit, match="expected N=FOLDER"):
        curve.parse_points(["seven=x"])


def test_calibration_stores_its_chosen_thresholds_in_the_card(tmp_path):
    from conftest import make_tiny_model_file
    from lckd.model_file import read_card

    calibration = load_script("uncertainty_calibration")
    model = make_tiny_model_file(tmp_path / "m.safetensors", mirror_axes=[2])
    chosen = {"ET": {"threshold": 0.9301}, "TC": {"threshold": 0.9269}, "WT": {"threshold": 0.8754}}
    summary = {"model": {"case": {calibration.SHIPPED_CASE: chosen}}}
    assert calibration.write_thresholds(model, summary) == {"ET": 0.93, "TC": 0.93, "WT": 0.88}
    card = read_card(model)
    assert card.review_below == {"ET": 0.93, "TC": 0.93, "WT": 0.88} and card.mirror_axes == [2]
