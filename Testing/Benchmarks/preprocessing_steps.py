"""Time and memory of each `lckd segment --preprocess` step on the clinical patient (issue 14).

The four raw scans of ``../shared/data/clinical/TCGA-FG-6692/native`` (0.9x0.9x5.5 mm, 26 slices),
in one fresh process, step by step as :meth:`lckd.segmenter.Segmenter.segment_files` runs them:
loading, the input check (what a run without ``--preprocess`` pays), rigid registration of each
sequence onto T1ce, resampling onto the 1 mm working grid, brain extraction (deepbet), and the
network's inference with mapping onto T1ce's grid (default model). For each step: wall seconds,
CPU seconds of the process (all threads) and the process's peak resident memory after it (a
high-water mark: a step that needs less than an earlier one shows the earlier peak). Prints a
Markdown table; ``--json FILE`` also writes the rows.

    python Testing/Benchmarks/preprocessing_steps.py [--threads N] [--device cpu|cuda] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

PATIENT = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "clinical" / "TCGA-FG-6692"
SEQUENCES = ("flair", "t1", "t1ce", "t2")


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", type=Path, help="model file (default: lckd segment's default model)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the rows as JSON")
    args = parser.parse_args()
    if not (PATIENT / "native").is_dir():
        sys.stderr.write(f"{PATIENT / 'native'}: the clinical patient is not there\n")
        return 1
    import numpy as np
    import torch

    from lckd.brain_extraction import brain_mask
    from lckd.cli import default_model
    from lckd.geometry import Grid, resample, working_grid
    from lckd.input_check import check_inputs
    from lckd.io import Volume, load_volume
    from lckd.raw_preprocessing import EXTRACTION_PREFERENCE, WORKING_SPACING_MM
    from lckd.registration import register_rigid
    from lckd.segmenter import Segmenter

    if args.threads:
        torch.set_num_threads(args.threads)
    rows: List[Dict[str, object]] = []
    state: Dict[str, object] = {}

    def step(name: str, work: Callable[[], object]) -> object:
        wall, cpu = time.perf_counter(), time.process_time()
        result = work()
        rows.append(dict(step=name, seconds=round(time.perf_counter() - wall, 2),
                         cpu_seconds=round(time.process_time() - cpu, 2), peak_rss_mib=round(_peak_mib())))
        return result

    segmenter = step("load model", lambda: Segmenter(args.model or default_model(), device=args.device))
    volumes = step("load the 4 scans", lambda: {s: load_volume(PATIENT / "native" / f"{s}.nii.gz") for s in SEQUENCES})
    problems = step("input check (4 scans)", lambda: check_inputs(volumes))
    state["problems"] = len(problems)
    registered = {"t1ce": volumes["t1ce"]}
    for name in ("flair", "t1", "t2"):
        registered[name] = step(f"register {name} onto t1ce",
                                lambda n=name: register_rigid(volumes["t1ce"], volumes[n]))
    fixed = volumes["t1ce"]
    reference_grid = Grid(shape=tuple(fixed.shape), affine=fixed.affine)
    grid = working_grid(reference_grid, (WORKING_SPACING_MM,) * 3)
    on_grid = step("resample 4 onto the 1 mm grid",
                   lambda: {n: resample(v.data, v.affine, grid, order=1) for n, v in registered.items()})
    source = next(name for name in EXTRACTION_PREFERENCE if name in on_grid)
    brain = step(f"brain extraction ({source}, deepbet)",
                 lambda: brain_mask(on_grid[source], use_gpu=segmenter.device.type == "cuda"))
    stripped = {n: Volume(data=np.where(brain, d, 0).astype(np.float32), affine=grid.affine)
                for n, d in on_grid.items()}
    result = step("inference and mapping onto t1ce's grid",
                  lambda: segmenter.segment_volumes(stripped, "t1ce", output_grid=reference_grid))
    state["volumes_ml"] = {k: round(v, 2) for k, v in result.volumes_ml.items()}
    state["working_grid"] = list(grid.shape)

    print(f"`--preprocess` steps on TCGA-FG-6692 native (working grid {grid.shape}; {state['problems']} input "
          f"problems found; result {state['volumes_ml']} mL; torch threads {torch.get_num_threads()})\n")
    print("| step | seconds | CPU seconds | peak RSS after (MiB) |")
    print("| --- | --- | --- | --- |")
    for row in rows:
        print(f"| {row['step']} | {row['seconds']} | {row['cpu_seconds']} | {row['peak_rss_mib']} |")
    if args.json:
        args.json.write_text(json.dumps(dict(rows=rows, **state), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
