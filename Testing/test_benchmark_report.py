"""`make bench`'s report: each device kind replaces only its own section of Benchmarks.md."""

from __future__ import annotations

import importlib.util
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
    bench.write_report(report, "cuda" if kind == "gpu" else "cpu", rows, [], [], None, (0.0, 0.0))


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


def test_device_kind_names_the_cpu_instruction_set(bench):
    import torch

    kind, title = bench.device_kind("cpu")
    capability = torch.backends.cpu.get_cpu_capability()
    assert kind.startswith(f"cpu-{capability.lower()}") and capability in title
    assert bench.device_kind("cuda") == ("gpu", "GPU")
