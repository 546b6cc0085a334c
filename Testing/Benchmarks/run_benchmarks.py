"""`make bench`: whole-case timings and peak memory, written to Resources/Docs/Benchmarks.md.

One run, one synthetic 240x240x155 phantom case, each measurement in a fresh process (so peak
memory is that process's own): `lckd segment` with the `paper` preset (random weights: the speed
does not depend on the values) for 4, 2 and 1 sequences, the bundled demo model, and MONAI
SegResNet configured like MONAI Auto3DSeg's BraTS model through MONAI's sliding-window inferer.
Options: ``--quick`` skips the paper preset's 2- and 1-sequence runs; ``--device cuda`` on a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
REPORT = ROOT / "Resources" / "Docs" / "Benchmarks.md"

SEGRESNET_SCRIPT = """
import sys, time, torch, nibabel as nib, numpy as np
from monai.inferers import SlidingWindowInferer
from monai.networks.nets import SegResNet
device = torch.device(sys.argv[2])
paths = sys.argv[1].split(",")
image = torch.from_numpy(np.stack([np.asarray(nib.load(p).dataobj, dtype=np.float32) for p in paths]))[None]
torch.manual_seed(0)
# MONAI Auto3DSeg's BraTS SegResNet: init_filters 16, blocks_down (1, 2, 2, 4), blocks_up (1, 1, 1)
net = SegResNet(spatial_dims=3, in_channels=4, out_channels=3, init_filters=16,
                blocks_down=(1, 2, 2, 4), blocks_up=(1, 1, 1)).eval().to(device)
inferer = SlidingWindowInferer(roi_size=(128, 128, 128), sw_batch_size=1, overlap=0.5, mode="gaussian")
start = time.perf_counter()
with torch.no_grad():
    out = torch.sigmoid(inferer(image.to(device), net))
if device.type == "cuda":
    torch.cuda.synchronize()
print(time.perf_counter() - start)
"""


def run_measured(command: List[str]) -> Dict[str, float]:
    """Run a command; return its wall time (s) and peak resident memory (GB) from wait4."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    out = process.stdout.read().decode()
    err = process.stderr.read().decode()
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{err[-2000:]}")
    return {"wall_s": wall, "peak_gb": usage.ru_maxrss / 1024 / 1024, "stdout": out}


def segment(model: Path, files: Dict[str, Path], output: Path, device: str, precision: str = "fp32") -> Dict:
    command = [sys.executable, "-m", "lckd", "segment", "-o", str(output), "--model", str(model),
               "--device", device, "--precision", precision, "--progress", "json"]
    for name, path in files.items():
        command += [f"--{name}", str(path)]
    result = run_measured(command)
    done = json.loads(result["stdout"].strip().splitlines()[-1])
    result["stages"] = done["stage_seconds"]
    return result


def label_dice(a: Path, b: Path) -> float:
    import nibabel as nib

    x, y = (np.asarray(nib.load(str(p)).dataobj) > 0 for p in (a, b))
    total = x.sum() + y.sum()
    return 1.0 if total == 0 else float(2 * (x & y).sum() / total)


def native_bf16(device: str) -> bool:
    """bf16 is only worth measuring where the hardware has it (emulated bf16 is many times slower)."""
    import torch

    from lckd.segmenter import cpu_has_native_bf16

    if device.startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return cpu_has_native_bf16()


def machine() -> str:
    import torch

    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    capability = torch.backends.cpu.get_cpu_capability()
    return (f"{cpu}, {os.cpu_count()} logical cores, torch {torch.__version__} (CPU capability {capability}), "
            f"GPU: {gpu}, Python {platform.python_version()}")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--report", type=Path, default=REPORT)
    args = parser.parse_args(argv)

    from lckd.cli import BUNDLED_MODEL
    from lckd.model_file import ModelCard, save_model
    from lckd.network import PRESETS, LCKDNet
    from lckd.phantom.generator import write_cases

    work = Path(tempfile.mkdtemp(prefix="lckd-bench-"))
    case = write_cases(work / "case", n_cases=1, seed=7)[0]
    from lckd.cases import read_case_folder

    files = read_case_folder(case).sequences
    paper = work / "paper.safetensors"
    save_model(paper, LCKDNet(PRESETS["paper"]), ModelCard(preset="paper", network=PRESETS["paper"].to_dict(),
                                                            tile_size=[80, 160, 160], name="paper-random"))
    rows = []

    def add(name: str, result: Dict, note: str = "") -> None:
        rows.append({"name": name, "wall_s": result["wall_s"], "peak_gb": result["peak_gb"], "note": note})
        print(f"{name:<52} {result['wall_s']:7.1f} s {result['peak_gb']:6.2f} GB {note}", flush=True)

    subsets = [("flair", "t1", "t1ce", "t2")] + ([] if args.quick else [("flair", "t1ce"), ("t1ce",)])
    for subset in subsets:
        result = segment(paper, {s: files[s] for s in subset}, work / "out.nii.gz", args.device)
        add(f"lckd segment, paper preset, {len(subset)} sequence(s) ({'+'.join(subset)})", result,
            f"infer {result['stages']['infer']:.1f} s")
    if BUNDLED_MODEL.is_file():
        fp32 = segment(BUNDLED_MODEL, dict(files), work / "demo32.nii.gz", args.device)
        add("lckd segment, bundled demo model, 4 sequences", fp32)
        if native_bf16(args.device):
            bf16 = segment(BUNDLED_MODEL, dict(files), work / "demo16.nii.gz", args.device, precision="bf16")
            add("lckd segment, bundled demo model, 4 sequences, bf16 autocast", bf16,
                f"Dice vs fp32 labels {label_dice(work / 'demo32.nii.gz', work / 'demo16.nii.gz'):.4f}")
        else:
            print("bf16 not measured: this CPU has no native bf16 (AVX-512-BF16 or AMX)", flush=True)
    script = work / "segresnet.py"
    script.write_text(SEGRESNET_SCRIPT)
    order = ("flair", "t1", "t1ce", "t2")
    segresnet = run_measured([sys.executable, str(script), ",".join(str(files[s]) for s in order), args.device])
    add("MONAI SegResNet (Auto3DSeg BraTS config), 128^3 windows, overlap 0.5", segresnet,
        f"inference alone {float(segresnet['stdout'].split()[-1]):.1f} s")

    reference = next(r["wall_s"] for r in rows if r["name"].startswith("MONAI SegResNet"))
    lines = [
        "# Benchmarks", "",
        "Measured by `make bench` (`Testing/Benchmarks/run_benchmarks.py`) in one run on one synthetic",
        "240x240x155 phantom case; every row is a fresh process (wall time includes start-up and model",
        "loading; peak memory is that process's maximum resident set).", "",
        f"Machine: {machine()}; device `{args.device}`.", "",
        "| run | wall (s) | peak memory (GB) | ratio to SegResNet | note |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    for row in rows:
        lines.append(f"| {row['name']} | {row['wall_s']:.1f} | {row['peak_gb']:.2f} | "
                     f"{row['wall_s'] / reference:.2f} | {row['note']} |")
    text = "\n".join(lines) + "\n"
    existing = args.report.read_text() if args.report.exists() else ""
    marker = "\n## Notes"
    notes = existing[existing.index(marker):] if marker in existing else ""
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(text + notes)
    print(f"written to {args.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
