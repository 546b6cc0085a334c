"""Time of a study's round trip through a PACS beside the plain NIfTI route, on one real case (issue 47).

A BraTS case of ``../shared/data`` is written as a DICOM study (four sequences, a localiser, a reformat;
made in a temporary folder, never kept), uploaded to a real Orthanc with its DICOMweb plugin started on
localhost (the upload is not timed), then segmented by fresh ``lckd segment`` processes with the same
model, the routes taking turns ``--repeats`` times so that load on the machine falls on all of them alike:

* ``nifti``: ``--flair F --t1 F --t1ce F --t2 F -o OUT.nii.gz`` on the case's NIfTI files;
* ``study``: ``--study DIR -o OUT.dcm`` on the DICOM study folder (series recognised, DICOM SEG written);
* ``dicomweb``: ``--dicomweb URL --study UID``: retrieve (WADO-RS), segment, store the SEG (STOW-RS).

Prints a Markdown table: wall seconds of each process (start to exit) and the median of the pipeline's
steps as ``--progress json`` reports them (retrieve; load: reading the files or the study; prepare, infer,
finish; write: encoding and writing the output; store: encoding the SEG and STOW-RS).

    python Testing/Benchmarks/dicom_round_trip.py [--case NAME] [--repeats N] [--model FILE] [--no-tta]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

TESTING = Path(__file__).resolve().parents[1]
BRATS2018 = TESTING.parents[1] / "shared" / "data" / "brats2018"
ROUTES = ("nifti", "study", "dicomweb")
STAGES = ("retrieve", "load", "prepare", "infer", "finish", "write", "store")


def cpu_name() -> str:
    """The CPU's model name, family and widest vector extension (from /proc/cpuinfo)."""
    fields: Dict[str, str] = {}
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    flags = fields.get("flags", "").split()
    vectors = "AVX-512" if "avx512f" in flags else "AVX2, no AVX-512" if "avx2" in flags else "no AVX2"
    name = fields.get("model name", platform.processor() or "unknown CPU")
    return f"{name} (family {fields.get('cpu family', '?')}, {vectors})"


def run(command: List[str]) -> Dict[str, object]:
    """One fresh `lckd segment` process: its wall seconds and its JSON done event."""
    started = time.perf_counter()
    finished = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if finished.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {finished.stderr[-2000:]}")
    done = [json.loads(line) for line in finished.stdout.splitlines() if line.startswith("{")][-1]
    return dict(wall=wall, stages=done["stage_seconds"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", default="Brats18_2013_2_1", help="a BraTS 2018 case of ../shared/data")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", type=Path, help="model file (default: lckd segment's default model)")
    parser.add_argument("--no-tta", action="store_true", help="pass --no-tta to every run")
    args = parser.parse_args()
    sys.path.insert(0, str(TESTING))
    import nibabel as nib
    import numpy as np
    import orthanc_server
    from dicom_studies import write_study

    case = BRATS2018 / args.case
    if not case.is_dir():
        sys.stderr.write(f"{case}: not there (the real data lies in ../shared/data)\n")
        return 1
    problem = orthanc_server.missing()
    if problem:
        sys.stderr.write(problem + "\n")
        return 1
    files = {name: case / f"{args.case}_{name}.nii.gz" for name in ("flair", "t1", "t1ce", "t2")}
    images = {name: nib.load(str(path)) for name, path in files.items()}
    lckd = [sys.executable, "-m", "lckd", "segment", "--progress", "json"]
    lckd += (["--model", str(args.model)] if args.model else []) + (["--no-tta"] if args.no_tta else [])
    results: Dict[str, List[Dict[str, object]]] = {route: [] for route in ROUTES}
    with tempfile.TemporaryDirectory(prefix="lckd-round-trip-") as scratch:
        scratch = Path(scratch)
        study = write_study(scratch / "study", {n: np.asarray(i.dataobj) for n, i in images.items()},
                            images["t1ce"].affine)
        with orthanc_server.running_orthanc(scratch / "orthanc") as server:
            clock = time.perf_counter()
            uploaded = server.upload([p for paths in study.files.values() for p in paths])
            upload_s = time.perf_counter() - clock
            load_before = os.getloadavg()
            for repeat in range(args.repeats):
                commands = {
                    "nifti": lckd + [a for n, p in files.items() for a in (f"--{n}", str(p))]
                    + ["-o", str(scratch / f"nifti{repeat}.nii.gz")],
                    "study": lckd + ["--study", str(study.folder), "-o", str(scratch / f"study{repeat}.dcm")],
                    "dicomweb": lckd + ["--dicomweb", server.dicomweb, "--study", study.study_uid],
                }
                for route in ROUTES:
                    results[route].append(run(commands[route]))
                    sys.stderr.write(f"{route} {repeat + 1}: {results[route][-1]['wall']:.1f} s\n")
            load_after = os.getloadavg()
    print(f"{args.case} ({'x'.join(str(s) for s in images['t1ce'].shape)}, four sequences), model "
          f"{args.model or 'default'}{', --no-tta' if args.no_tta else ''}; {cpu_name()}, {os.cpu_count()} cores; "
          f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after; upload of {uploaded} instances "
          f"to Orthanc (not counted) {upload_s:.1f} s\n")
    print("| route | wall s per run | median wall s | " + " | ".join(STAGES) + " |")
    print("| --- | --- | ---: | " + " | ".join("---:" for _ in STAGES) + " |")
    for route in ROUTES:
        walls = [r["wall"] for r in results[route]]
        stages = [statistics.median(r["stages"].get(stage, 0.0) for r in results[route]) for stage in STAGES]
        print(f"| {route} | {', '.join(f'{w:.1f}' for w in walls)} | {statistics.median(walls):.1f} | "
              + " | ".join(f"{s:.2f}" if s else "" for s in stages) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
