"""`make bench`: whole-case timings, peak memory and training throughput, written to
Resources/Docs/Benchmarks.md (one section per device kind, the rest of the file kept).

One run, one synthetic 240x240x155 phantom case, each measurement in a fresh process (so peak
memory is that process's own): `lckd segment` with the `paper` preset (random weights: the speed
does not depend on the values) for 4, 2 and 1 sequences in fp32 and, where the device computes
bf16 natively, bf16; the bundled default model (fp32 and bf16, with the Dice between their label maps
per region); MONAI SegResNet configured like MONAI Auto3DSeg's BraTS model through MONAI's
sliding-window inferer; on a GPU also a warm case (the model already loaded, as in `lckd segment
--batch`); the training step of the `phantom` preset (and of `paper` on a GPU); on a CPU the
per-tile effect of each inference optimisation (`tile_ablation.py`) and, with native bf16, the
bf16/fp32 agreement over all 15 subsets (`precision_agreement.py`). Where the real data lies
beside the repository (``../shared/data``, Testing/real_data.py): the training loader's batches/s
per worker for the paper preset with each augmentation chain (`loader_throughput.py`, BraTS 2018)
and each `--preprocess` step on the clinical patient (`preprocessing_steps.py`).
Options: ``--quick`` skips the paper preset's 2- and 1-sequence runs, the ablation, the
agreement, the loader and the preprocessing steps; ``--device cuda`` on a GPU; ``--case DIR``
uses an existing case folder instead of generating phantom seed 7.
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
from typing import Dict, List, Optional, Tuple

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
REPORT = ROOT / "Resources" / "Docs" / "Benchmarks.md"
AUGMENTATION_CHAINS = ("monai", "fast", "released")  # the first is the reference the others are compared to

SEGRESNET_SCRIPT = """
import sys, time, torch, nibabel as nib, numpy as np
if sys.argv[3] == "keep":
    from lckd.allocator import keep_freed_memory
    keep_freed_memory()
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


WARM_SCRIPT = """
import json, sys, time, torch
from lckd.segmenter import Segmenter
segmenter = Segmenter(sys.argv[1], device=sys.argv[2], precision=sys.argv[3])
files = json.loads(sys.argv[4])
for _ in range(3):
    start = time.perf_counter()
    result = segmenter.segment_files(files)
    if segmenter.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
peak = torch.cuda.max_memory_allocated() / 1e9 if segmenter.device.type == "cuda" else 0.0
print(json.dumps({"seconds": seconds, "stages": result.seconds, "gpu_peak_gb": peak}))
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
    """`lckd segment` in a fresh process; adds its stage seconds."""
    command = [sys.executable, "-m", "lckd", "segment", "-o", str(output), "--model", str(model),
               "--device", device, "--precision", precision, "--progress", "json"]
    for name, path in files.items():
        command += [f"--{name}", str(path)]
    result = run_measured(command)
    done = json.loads(result["stdout"].strip().splitlines()[-1])
    result["stages"] = done["stage_seconds"]
    return result


def label_dice(a: Path, b: Path) -> str:
    """Dice per region (ET, TC, WT) between two label maps, as a note."""
    import nibabel as nib

    from lckd.labels import regions_from_labels
    from training.evaluation import REGION_INDEX, REPORTED_REGIONS, dice

    first, second = (regions_from_labels(np.asarray(nib.load(str(p)).dataobj)) for p in (a, b))
    scores = [f"{dice(first[REGION_INDEX[r]], second[REGION_INDEX[r]]):.4f}" for r in REPORTED_REGIONS]
    return " / ".join(scores) + f" ({' / '.join(REPORTED_REGIONS)})"


def native_bf16(device: str) -> bool:
    """bf16 is only worth measuring where the hardware has it (emulated bf16 is many times slower)."""
    import torch

    from lckd.inference import cpu_has_native_bf16

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
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (f"{cpu}, {cores} usable logical cores of {os.cpu_count()}, {torch.get_num_threads()} torch threads, "
            f"torch {torch.__version__} (CPU capability {capability}), "
            f"GPU: {gpu}, Python {platform.python_version()}")


def device_kind(device: str) -> Tuple[str, str]:
    """The report section's key and title: one per GPU, one per CPU instruction set (without native
    bf16, with AVX-512-BF16, with AMX: bf16 runs on different units), since the development and CI
    machines differ and a run replaces only its own kind."""
    if device.startswith("cuda"):
        return "gpu", "GPU"
    import torch

    from lckd.inference import cpu_has_amx

    capability = torch.backends.cpu.get_cpu_capability()
    if not native_bf16(device):
        return f"cpu-{capability.lower()}", f"CPU, {capability} (no native bf16)"
    if cpu_has_amx():
        return f"cpu-{capability.lower()}-amx", f"CPU, {capability} with AMX (native bf16)"
    return f"cpu-{capability.lower()}-bf16", f"CPU, {capability} with native bf16"


def stage_note(stages: Dict[str, float]) -> str:
    return ", ".join(f"{name} {value:.2f} s" for name, value in stages.items())


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--case", type=Path, help="a BraTS-layout case folder (default: phantom seed 7, 1 mm)")
    parser.add_argument("--report", type=Path, default=REPORT)
    args = parser.parse_args(argv)

    from lckd.cases import read_case_folder
    from lckd.cli import BUNDLED_MODEL
    from lckd.model_file import ModelCard, save_model
    from lckd.network import PRESETS, LCKDNet

    load_before = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="lckd-bench-"))
    if args.case is None:
        from lckd.phantom.generator import write_cases

        args.case = write_cases(work / "case", n_cases=1, seed=7)[0]
    files = read_case_folder(args.case).sequences
    paper = work / "paper.safetensors"
    save_model(paper, LCKDNet(PRESETS["paper"]), ModelCard(preset="paper", network=PRESETS["paper"].to_dict(),
                                                            tile_size=[80, 160, 160], name="paper-random"))
    bf16 = native_bf16(args.device)
    if not bf16:
        print("bf16 not measured: this CPU has no native bf16 (AVX-512-BF16 or AMX)", flush=True)
    precisions = ["fp32", "bf16"] if bf16 else ["fp32"]
    automatic = "bf16" if bf16 and not args.device.startswith("cuda") else "fp32"  # what --precision auto picks

    def named(precision: str) -> str:
        return f"{precision} (the default here)" if precision == automatic else precision
    rows, training = [], []

    def add(name: str, result: Dict, note: str = "") -> None:
        rows.append({"name": name, "wall_s": result["wall_s"], "peak_gb": result["peak_gb"], "note": note})
        print(f"{name:<60} {result['wall_s']:7.1f} s {result['peak_gb']:6.2f} GB {note}", flush=True)

    subsets = [("flair", "t1", "t1ce", "t2")] + ([] if args.quick else [("flair", "t1ce"), ("t1ce",)])
    for subset in subsets:
        for precision in precisions:
            result = segment(paper, {s: files[s] for s in subset}, work / "out.nii.gz", args.device, precision)
            add(f"lckd segment, paper preset, {len(subset)} sequence(s) ({'+'.join(subset)}), {named(precision)}",
                result, stage_note(result["stages"]))
    if args.device.startswith("cuda"):
        script = work / "warm.py"
        script.write_text(WARM_SCRIPT)
        for precision in precisions:
            warm = run_measured([sys.executable, str(script), str(paper), args.device, precision,
                                 json.dumps({s: str(p) for s, p in files.items()})])
            timing = json.loads(warm["stdout"].strip().splitlines()[-1])
            add(f"paper preset, 4 sequences, {named(precision)}, warm (third case in one process, as --batch)",
                {"wall_s": timing["seconds"], "peak_gb": warm["peak_gb"]},
                f"{stage_note(timing['stages'])}; GPU peak {timing['gpu_peak_gb']:.2f} GB")
    if BUNDLED_MODEL.is_file():
        name = f"lckd segment, bundled default model ({BUNDLED_MODEL.stem}), 4 sequences"
        bundled = segment(BUNDLED_MODEL, dict(files), work / "bundled-fp32.nii.gz", args.device)
        add(f"{name}, {named('fp32')}", bundled, stage_note(bundled["stages"]))
        if bf16:
            bundled = segment(BUNDLED_MODEL, dict(files), work / "bundled-bf16.nii.gz", args.device, precision="bf16")
            same = label_dice(work / "bundled-fp32.nii.gz", work / "bundled-bf16.nii.gz")
            add(f"{name}, {named('bf16')}", bundled,
                f"{stage_note(bundled['stages'])}; Dice vs the fp32 label map {same}")
    script = work / "segresnet.py"
    script.write_text(SEGRESNET_SCRIPT)
    order = ("flair", "t1", "t1ce", "t2")
    for allocator in ("default", "keep"):
        segresnet = run_measured([sys.executable, str(script), ",".join(str(files[s]) for s in order), args.device,
                                  allocator])
        add("MONAI SegResNet (Auto3DSeg BraTS config), 128^3 windows, overlap 0.5"
            + (", with lckd segment's allocator setting" if allocator == "keep" else ""), segresnet,
            f"inference alone {float(segresnet['stdout'].split()[-1]):.2f} s")

    ablation, agreement = [], None
    if not args.device.startswith("cuda") and not args.quick:
        script = Path(__file__).with_name("tile_ablation.py")
        variants = run_measured([sys.executable, str(script), "--list"])["stdout"].split()
        for variant in variants:
            if variant.startswith("bf16") and not bf16:
                continue
            measured = run_measured([sys.executable, str(script), "--variant", variant])
            ablation.append(json.loads(measured["stdout"].strip().splitlines()[-1]))
            print(json.dumps(ablation[-1]), flush=True)
        if bf16:
            measured = run_measured([sys.executable, str(Path(__file__).with_name("precision_agreement.py"))])
            agreement = json.loads(measured["stdout"].strip().splitlines()[-1])
            print(json.dumps(agreement), flush=True)

    loader, preprocessing = real_data_measurements(work, args.device) if not args.quick else ([], None)

    throughput = Path(__file__).with_name("training_throughput.py")
    presets = ["phantom", "paper"] if args.device.startswith("cuda") else ["phantom"]
    for preset in presets:
        measured = run_measured([sys.executable, str(throughput), "--preset", preset, "--device", args.device])
        training.append(json.loads(measured["stdout"].strip().splitlines()[-1]))
        print(json.dumps(training[-1]), flush=True)

    write_report(args.report, args.device, rows, training, ablation, agreement, loader, preprocessing,
                 (load_before, os.getloadavg()[0]))
    print(f"written to {args.report}")
    return 0


def real_data_measurements(work: Path, device: str) -> Tuple[List[Dict], Optional[Dict]]:
    """The loader rate per augmentation chain (BraTS 2018) and the `--preprocess` steps (clinical
    patient), each in a fresh process; empty where ``../shared/data`` is not beside the repository."""
    sys.path.insert(0, str(ROOT / "Testing"))
    from real_data import BRATS2018, CLINICAL

    loader: List[Dict] = []
    if BRATS2018.is_dir() and not device.startswith("cuda"):
        script = Path(__file__).with_name("loader_throughput.py")
        for chain in AUGMENTATION_CHAINS:
            measured = run_measured([sys.executable, str(script), "--data", str(BRATS2018), "--preset", "paper",
                                     "--workers", "1", "--batches", "20", "--cache", str(work / "loader-cache"),
                                     "--set", f"augmentation={chain}"])
            loader.append(json.loads(measured["stdout"].strip().splitlines()[-1]))
            print(json.dumps(loader[-1]), flush=True)
    preprocessing = None
    if (CLINICAL / "native").is_dir():
        steps = work / "preprocessing.json"
        run_measured([sys.executable, str(Path(__file__).with_name("preprocessing_steps.py")), "--device", device,
                      "--json", str(steps)])
        preprocessing = json.loads(steps.read_text())
        print(json.dumps(preprocessing), flush=True)
    return loader, preprocessing


def section_position(text: str, kind: str) -> int:
    """Where a kind's first section goes: CPU kinds before the GPU's, otherwise after the other
    generated sections, otherwise before the hand-written notes (the end when there are none)."""
    if kind != "gpu" and "<!-- make bench gpu:" in text:
        return text.index("<!-- make bench gpu:")
    if "<!-- /make bench " in text:
        last = text.index("-->", text.rindex("<!-- /make bench ")) + len("-->")
        return last + len(text[last:]) - len(text[last:].lstrip("\n"))
    return text.index("## Notes") if "## Notes" in text else len(text)


def write_report(report: Path, device: str, rows: List[Dict], training: List[Dict], ablation: List[Dict],
                 agreement: Optional[Dict], loader: List[Dict], preprocessing: Optional[Dict],
                 load: Tuple[float, float]) -> None:
    """Replace this device kind's section of the report (between its markers), keep the rest."""
    kind, title = device_kind(device)
    reference = next(r["wall_s"] for r in rows if r["name"].startswith("MONAI SegResNet"))
    lines = [
        f"<!-- make bench {kind}: generated by Testing/Benchmarks/run_benchmarks.py; edits here are replaced -->",
        f"## {title}: `run_benchmarks.py --device {device}`", "",
        f"Machine: {machine()}; run ending {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; one-minute "
        f"load average {load[0]:.1f} at the start and {load[1]:.1f} at the end.", "",
        "| run | wall (s) | peak resident memory (GB) | ratio to SegResNet | stages and notes |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    for row in rows:
        lines.append(f"| {row['name']} | {row['wall_s']:.2f} | {row['peak_gb']:.2f} | "
                     f"{row['wall_s'] / reference:.2f} | {row['note']} |")
    lines += ["", "Training step (`training_throughput.py`: forward, Dice + BCE + LCKD KD, backward, SGD; "
              "all four sequences; data loading excluded):", "",
              "| preset | device | batch | tile | bf16 autocast | s per step (median) | iterations/s | GPU peak (GB) |",
              "| --- | --- | ---: | --- | --- | ---: | ---: | ---: |"]
    for t in training:
        peak = "" if t["peak_gpu_gb"] is None else f"{t['peak_gpu_gb']:.2f}"
        lines.append(f"| {t['preset']} | {t['device']} ({t['threads']} threads) | {t['batch']} | "
                     f"{'x'.join(str(v) for v in t['tile'])} | {'yes' if t['amp'] else 'no'} | {t['median_s']:.3f} | "
                     f"{t['iterations_per_s']:.2f} | {peak} |")
    if ablation:
        lines += ["", "Per paper tile (`tile_ablation.py`: one 80x160x160 tile, 4 sequences, random weights, "
                  "2 threads, one process per variant, best of 3 calls after a warm-up):", "",
                  "| variant | s per tile | vs the first row |", "| --- | ---: | ---: |"]
        for a in ablation:
            lines.append(f"| {a['description']} | {a['seconds']:.2f} | {a['seconds'] / ablation[0]['seconds']:.2f} |")
    if agreement:
        worst = "; ".join(f"{region} {w['subset']} (case {w['case']}, {w['fp32_voxels']} voxels in fp32)"
                          for region, w in agreement["worst"].items())
        lines += ["", f"bf16 against fp32 (`precision_agreement.py`): {agreement['model']}, {agreement['cases']} "
                  f"{agreement['source']} cases x {agreement['subsets']} subsets, Dice between the "
                  "label maps:", "",
                  "| | ET | TC | WT |", "| --- | ---: | ---: | ---: |",
                  "| mean | " + " | ".join(f"{agreement['dice_mean'][r]:.4f}" for r in ("ET", "TC", "WT")) + " |",
                  "| lowest | " + " | ".join(f"{agreement['dice_min'][r]:.4f}" for r in ("ET", "TC", "WT")) + " |",
                  "", f"Lowest pairs: {worst}. Paper preset, one tile, random weights: mean |p_bf16 - p_fp32| "
                  f"{agreement['paper_tile_mean_abs_probability_difference']:.4f}."]
    if loader:
        lines += ["", "Training loader (`loader_throughput.py --preset paper --workers 1`, the 14 BraTS 2018 cases of "
                  "../shared/data, 20 batches after a warm-up; the issue-15 target is 4x the MONAI chain):", "",
                  "| augmentation chain | batch | tile | batches/s per worker | vs monai |",
                  "| --- | ---: | --- | ---: | ---: |"]
        for row in loader:
            lines.append(f"| {row['augmentation']} | {row['batch']} | {'x'.join(str(v) for v in row['tile'])} | "
                         f"{row['batches_per_s_per_worker']:.3f} | "
                         f"{row['batches_per_s_per_worker'] / loader[0]['batches_per_s_per_worker']:.1f} |")
    if preprocessing:
        lines += ["", "`lckd segment --preprocess` step by step (`preprocessing_steps.py`) on the raw clinical "
                  f"scans of TCGA-FG-6692 (working grid {'x'.join(str(v) for v in preprocessing['working_grid'])}, "
                  f"{preprocessing['problems']} input problems found, result {preprocessing['volumes_ml']} mL):", "",
                  "| step | wall (s) | CPU (s) | peak resident memory after (MiB) |", "| --- | ---: | ---: | ---: |"]
        for row in preprocessing["rows"]:
            lines.append(f"| {row['step']} | {row['seconds']:.2f} | {row['cpu_seconds']:.2f} | {row['peak_rss_mib']} |")
    lines.append(f"<!-- /make bench {kind} -->")
    section = "\n".join(lines)
    text = report.read_text() if report.exists() else "# Benchmarks\n"
    start, end = f"<!-- make bench {kind}:", f"<!-- /make bench {kind} -->"
    if start in text and end in text:
        text = text[:text.index(start)] + section + text[text.index(end) + len(end):]
    else:
        at = section_position(text, kind)
        text = (text[:at] + section + "\n\n" + text[at:]) if at < len(text) else (
            text.rstrip("\n") + "\n\n" + section + "\n")
    report.parent.mkdir(parents=True, exist_ok=True)
    partial = report.with_name(report.name + ".partial")
    partial.write_text(text)
    os.replace(partial, report)  # an interrupted run leaves the previous report whole


if __name__ == "__main__":
    sys.exit(main())
