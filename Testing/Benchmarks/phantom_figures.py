"""Figures of the phantom generator for Resources/Docs/Phantom.md: seconds per case, tumour sizes,
contrast ratios. Usage: python Testing/Benchmarks/phantom_figures.py [--cases 50]"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time

import numpy as np

from lckd.labels import regions_from_labels
from lckd.phantom.generator import make_case
from lckd.sequences import REGIONS, SEQUENCES


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        for spacing in ("1", "2"):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "lckd", "phantom", folder + "/s" + spacing, "--cases", "3",
                            "--spacing", spacing, "--no-progress"], check=True, capture_output=True)
            print(f"lckd phantom --cases 3 --spacing {spacing}: {(time.perf_counter() - start) / 3:.1f} s per case "
                  f"(including interpreter start-up shared by the 3 cases)")
    volumes = {region: [] for region in REGIONS}
    ratios = {kind: {name: [] for name in SEQUENCES} for kind in ("ET", "oedema", "necrosis", "CSF", "GM")}
    for index in range(args.cases):
        case = make_case(seed=0, index=index, spacing=2.0)
        regions = regions_from_labels(case.labels)
        for i, region in enumerate(REGIONS):
            volumes[region].append(regions[i].sum() * case.voxel_volume_ml())
        healthy = (case.labels == 0) & (case.images["t1"] != 0)
        white = healthy & (case.images["t1"] > np.percentile(case.images["t1"][healthy], 85))
        masks = {"ET": case.labels == 4, "oedema": case.labels == 2, "necrosis": case.labels == 1,
                 "CSF": healthy & (case.images["t2"] > np.percentile(case.images["t2"][healthy], 97)),
                 "GM": healthy & (case.images["t1"] < np.percentile(case.images["t1"][healthy], 40))
                 & (case.images["t2"] < np.percentile(case.images["t2"][healthy], 80))}
        for kind, mask in masks.items():
            if mask.sum() > 10:
                for name in SEQUENCES:
                    ratios[kind][name].append(case.images[name][mask].mean() / case.images[name][white].mean())
    for region, values in volumes.items():
        values = np.array(values)
        print(f"{region}: {values.min():.1f} to {values.max():.1f} mL (median {np.median(values):.1f}, "
              f"{(values == 0).sum()} cases without)")
    print("mean intensity / mean normal white matter (brightest 15 % of healthy T1):")
    print("tissue    " + "".join(f"{n:>8}" for n in SEQUENCES))
    for kind, per in ratios.items():
        print(f"{kind:<10}" + "".join(f"{np.mean(per[n]):8.2f}" for n in SEQUENCES))
    return 0


if __name__ == "__main__":
    sys.exit(main())
