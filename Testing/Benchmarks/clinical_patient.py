"""Issue 14's volume criterion for any model file: the clinical patient TCGA-FG-6692, segmented as the
TrainingHistory.md tables measure it.

    python Testing/Benchmarks/clinical_patient.py MODEL.safetensors [MODEL2.safetensors ...] [--threads 2]

For each model, two runs of `lckd segment` with all four sequences and ``--postprocess specks`` (the
model's own test-time mirroring): on the BraTS-space scans (whole-tumour volume, and Dice ET / TC / WT
against the SIMPLE fusion of five BraTS algorithms), and on the raw native scans with ``--preprocess``
(whole-tumour volume and the share of it inside HD-BET's brain mask of the reference sequence, T1ce).
Issue 14's band is the fusion's whole-tumour volume +-30 %. Prints one Markdown row per model.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Tuple

import nibabel as nib
import numpy as np

from lckd.labels import region_volumes_ml, regions_from_labels
from training.evaluation import REGION_INDEX, REPORTED_REGIONS, dice

PATIENT = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "clinical" / "TCGA-FG-6692"
SEQUENCES = ("flair", "t1", "t1ce", "t2")
BAND = 0.3  # issue 14: within +-30 % of the reference volume


def _labels(path: Path) -> Tuple[np.ndarray, float]:
    """A label map and its voxel volume in mm3."""
    image = nib.load(str(path))
    return np.asarray(image.dataobj), float(np.prod(image.header.get_zooms()[:3]))


def _segment(model: Path, folder: Path, output: Path, threads: int, preprocess: bool) -> float:
    """Run `lckd segment` on the four scans of ``folder``; seconds it took."""
    command = [sys.executable, "-m", "lckd", "segment", "-o", str(output), "--model", str(model),
               "--postprocess", "specks", "--threads", str(threads), "--progress", "none"]
    for sequence in SEQUENCES:
        command += [f"--{sequence}", str(folder / f"{sequence}.nii.gz")]
    if preprocess:
        command.append("--preprocess")
    start = time.perf_counter()
    subprocess.run(command, check=True)
    return time.perf_counter() - start


def measure(model: Path, threads: int, work: Path) -> Dict[str, object]:
    """The figures of one model on the clinical patient."""
    reference, reference_mm3 = _labels(PATIENT / "brats-space" / "reference_fusion_simple.nii.gz")
    seconds = (_segment(model, PATIENT / "brats-space", work / "brats-space.nii.gz", threads, preprocess=False),
               _segment(model, PATIENT / "native", work / "native.nii.gz", threads, preprocess=True))
    labels, voxel_mm3 = _labels(work / "brats-space.nii.gz")
    native, native_mm3 = _labels(work / "native.nii.gz")
    found, truth = regions_from_labels(labels), regions_from_labels(reference)
    native_tumour = native > 0
    brain = np.asarray(nib.load(str(PATIENT / "native-hdbet" / "t1ce_brainmask.nii.gz")).dataobj) > 0
    return {
        "reference_ml": region_volumes_ml(reference, reference_mm3)["WT"],
        "brats_ml": region_volumes_ml(labels, voxel_mm3)["WT"],
        "dice": {region: dice(found[REGION_INDEX[region]], truth[REGION_INDEX[region]]) for region in REPORTED_REGIONS},
        "native_ml": region_volumes_ml(native, native_mm3)["WT"],
        "inside_brain": float((native_tumour & brain).sum() / max(int(native_tumour.sum()), 1)),
        "seconds": seconds,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", type=Path, help="model files (.safetensors)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads for each run (default 2)")
    args = parser.parse_args()
    if not PATIENT.is_dir():
        sys.stderr.write(f"{PATIENT}: the clinical patient is not there\n")
        return 1
    rows: List[str] = []
    for model in args.models:
        with tempfile.TemporaryDirectory() as work:
            figures = measure(model, args.threads, Path(work))
        low, high = (1 - BAND) * figures["reference_ml"], (1 + BAND) * figures["reference_ml"]
        dice = " / ".join(f"{figures['dice'][r]:.3f}" for r in REPORTED_REGIONS)
        verdicts = ["in" if low <= figures[key] <= high else "out" for key in ("brats_ml", "native_ml")]
        rows.append(f"| {model} | {figures['brats_ml']:.1f} ({verdicts[0]}) | {dice} | "
                    f"{figures['native_ml']:.1f} ({verdicts[1]}) | {100 * figures['inside_brain']:.2f} % | "
                    f"{figures['seconds'][0]:.1f} / {figures['seconds'][1]:.1f} |")
        print(rows[-1], flush=True)
    print(f"\nreference (SIMPLE fusion) {figures['reference_ml']:.1f} mL, band {low:.1f}-{high:.1f} mL\n")
    print("| model | BraTS space WT mL | Dice ET / TC / WT vs fusion | native --preprocess WT mL "
          "| inside HD-BET brain | seconds (BraTS space / native) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
