"""What the members' spread costs ``lckd segment`` on one case: CPU seconds of the sliding window with and
without the members handed over (what the always-printed quality estimate needs), of the estimate itself,
and of the voxel map on the output grid and its file (only with ``--uncertainty``).

CPU seconds (``time.process_time``) of this process, so that other processes on a shared machine do not
count; one torch thread unless ``--threads`` says otherwise. Each step runs ``--repeats`` times; the
table gives the lowest.

    nice -n 15 python Testing/Benchmarks/uncertainty_cost.py \\
        LCKDSegmentation/Resources/Models/lckd-brats2018-cpu.safetensors ../shared/data/brats2018/Brats18_CBICA_AOZ_1
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, Tuple

import numpy as np
import torch

from lckd.cases import read_case_folder
from lckd.inference import sliding_window_probabilities
from lckd.io import load_volume, save_niftis
from lckd.preparation import prepare_case, probabilities_to_reference
from lckd.segmenter import Segmenter
from lckd.uncertainty import MemberSpread, uncertainty_map


def timed(step: Callable[[], object], repeats: int) -> Tuple[float, object]:
    """The lowest CPU time of ``repeats`` runs of ``step``, and what its last run returned."""
    times, result = [], None
    for _ in range(repeats):
        clock = time.process_time()
        result = step()
        times.append(time.process_time() - clock)
    return min(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("case", type=Path, help="a case folder with all four sequences")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    segmenter = Segmenter(args.model, device="cpu", precision="fp32")
    case = read_case_folder(args.case)
    volumes = {name: load_volume(path) for name, path in case.sequences.items()}
    prepared = prepare_case(volumes, segmenter.card.spacing_mm, segmenter.normalisation)
    images = torch.from_numpy(prepared.images)

    def window(spread=None):
        return sliding_window_probabilities(segmenter.model, images, prepared.present, segmenter.card.tile_size,
                                            mirror_axes=segmenter.mirror_axes, on_member=spread)

    def collected():
        spread = MemberSpread()
        return spread, window(spread)

    def on_output_grid():
        return probabilities_to_reference(uncertainty_map(probabilities).numpy()[None], prepared)[0]

    window()  # warm-up: oneDNN prepares its kernels on the first pass
    found: Dict[str, float] = {"sliding window, members not handed over (before)": timed(window, args.repeats)[0]}
    found["sliding window, members collected (always now)"], (spread, probabilities) = timed(collected, args.repeats)
    found["quality estimate from the collected members"] = timed(lambda: spread.quality(probabilities),
                                                                 args.repeats)[0]
    found["voxel map on the output grid (--uncertainty)"], voxel_map = timed(on_output_grid, args.repeats)
    with tempfile.TemporaryDirectory() as folder:
        target = Path(folder) / "uncertainty.nii.gz"
        found["writing the map, .nii.gz (--uncertainty)"] = timed(
            lambda: save_niftis([(target, voxel_map.astype(np.float32), prepared.reference_grid.affine)]),
            args.repeats)[0]
    print(f"{case.name}, all four sequences, {spread.members} members, network grid "
          f"{tuple(prepared.images.shape[1:])}, output grid {prepared.reference_grid.shape}, "
          f"{torch.get_num_threads()} torch thread(s)")
    print("| step | CPU s |\n| --- | ---: |")
    for step, seconds in found.items():
        print(f"| {step} | {seconds:.2f} |")


if __name__ == "__main__":
    main()
