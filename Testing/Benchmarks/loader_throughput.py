"""Training data throughput: batches per second that `lckd train`'s loader delivers, per worker count.

Builds the run's cache from a folder of cases (as `lckd train` does), then draws batches from
``training.data.training_loader`` (tumour-centred sampling and the preset's augmentation chain)
with each ``--workers`` value and prints one JSON line per value, with batches/s per worker. A
training run goes no faster than the smaller of this rate and the step rate of
``training_throughput.py``. ``--set augmentation=monai`` measures the MONAI chain (before the fast
one), ``fast`` the same augmentation in one resampling, ``released`` the paper preset's default.

    python Testing/Benchmarks/loader_throughput.py --data ../shared/data/brats2018 --preset paper \
        --workers 1 --set augmentation=monai
    python Testing/Benchmarks/loader_throughput.py --data ../shared/data/brats2018 --preset paper --workers 1 4 12
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import List, Optional

from training.augmentation import make_augmentation
from training.config import PRESETS, build_config, parse_overrides
from training.data import load_cached, prepare_data, training_loader


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="a folder of BraTS-layout cases")
    parser.add_argument("--preset", default="paper", choices=sorted(PRESETS))
    parser.add_argument("--workers", type=int, nargs="+", default=[4])
    parser.add_argument("--batches", type=int, default=40, help="timed batches (after 2 x workers warm-up batches)")
    parser.add_argument("--cache", type=Path, help="cache folder to reuse (default: a temporary one)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a training setting, as lckd train --set (e.g. augmentation=monai)")
    args = parser.parse_args(argv)

    run = Path(tempfile.mkdtemp(prefix="lckd-loader-"))
    config = build_config(args.preset, parse_overrides(args.set))
    split, folder = prepare_data(args.data, run, config, args.cache)
    names = [name for part in split.values() for name in part]  # every case: this measures loading only
    cases = [load_cached(folder / f"{name}.npz") for name in names]
    for workers in args.workers:
        warmup = 2 * max(workers, 1)
        trial = replace(config, num_workers=workers, iterations=warmup + args.batches)
        loader = iter(training_loader(cases, trial, make_augmentation(trial), 0))
        for _ in range(warmup):
            next(loader)
        start = time.perf_counter()
        for _ in range(args.batches):
            next(loader)
        seconds = time.perf_counter() - start
        rate = args.batches / seconds
        print(json.dumps({"preset": args.preset, "augmentation": config.augmentation, "workers": workers,
                          "batch": config.batch_size, "tile": list(config.tile_size),
                          "batches_per_s": round(rate, 3),
                          "batches_per_s_per_worker": round(rate / max(workers, 1), 3)}),
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
