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


def test_method_comparison_goal_figures(tmp_path):
    spec = importlib.util.spec_from_file_location("method_comparison", SCRIPT.parent / "method_comparison.py")
    comparison = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(comparison)
    assert comparison.WITHOUT_T1CE == ("flair", "t1", "t2", "flair+t1", "flair+t2", "t1+t2")
    subsets = {key: {"ET": 0.0, "TC": 0.0, "WT": 0.0} for key in
               ("flair", "t1", "t1ce", "t2", "flair+t1", "flair+t1ce", "flair+t2", "t1+t1ce", "t1+t2", "t1ce+t2",
                "flair+t1+t1ce", "flair+t1+t2", "flair+t1ce+t2", "t1+t1ce+t2", "flair+t1+t1ce+t2")}
    subsets["flair+t1+t1ce+t2"] = {"ET": 0.6, "TC": 0.75, "WT": 0.9}
    subsets["flair"] = {"ET": 0.3, "TC": 0.3, "WT": 0.6}  # mean 0.4, one of six -> 0.4 / 6
    subsets["t1ce"] = {"ET": 0.9, "TC": 0.9, "WT": 0.9}  # has T1ce: not in the second figure
    result = {"subsets": subsets, "average": {"ET": 0.1, "TC": 0.2, "WT": 0.3},
              "hd95_average": {"ET": 10.0, "TC": 20.0, "WT": 30.0}, "cases": 3}
    assert comparison.goal_figures(result) == pytest.approx((0.75, 0.4 / 6))
    folder = tmp_path / "eval-a"
    folder.mkdir()
    (folder / "evaluation.json").write_text(json.dumps(result))
    table = comparison.markdown(comparison.parse_runs([f"A={folder}", f"B={folder / 'evaluation.json'}"]))
    assert "| A | 10.0 | 20.0 | 30.0 | 10.0 | 20.0 | 30.0 | 0.750 | 0.067 |" in table
    assert "| flair+t1+t1ce+t2 | 60.0 | 75.0 | 90.0 | 60.0 | 75.0 | 90.0 |" in table
    with pytest.raises(SystemExit, match="no evaluation.json"):
        comparison.parse_runs([f"C={tmp_path}"])
