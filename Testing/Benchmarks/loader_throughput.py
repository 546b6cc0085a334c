"""Training data throughput: batches per second that `lckd train`'s loader delivers, per worker count.

Builds the run's cache from a folder of cases (as `lckd train` does), then draws batches from
``training.data.training_loader`` (tumour-centred sampling and the full MONAI augmentation) with
each ``--workers`` value and prints one JSON line per value. A training run goes no faster than
the smaller of this rate and the step rate of ``training_throughput.py``.

    python Testing/Benchmarks/loader_throughput.py --data runs/phantoms --preset paper --workers 4 8 12
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

from training.augmentation import Augmentation
from training.config import PRESETS
from training.data import load_cached, prepare_data, training_loader


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="a folder of BraTS-layout cases")
    parser.add_argument("--preset", default="paper", choices=sorted(PRESETS))
    parser.add_argument("--workers", type=int, nargs="+", default=[4])
    parser.add_argument("--batches", type=int, default=40, help="timed batches (after 2 x workers warm-up batches)")
    parser.add_argument("--cache", type=Path, help="cache folder to reuse (default: a temporary one)")
    args = parser.parse_args(argv)

    run = Path(tempfile.mkdtemp(prefix="lckd-loader-"))
    config = PRESETS[args.preset]
    split, folder = prepare_data(args.data, run, config, args.cache)
    names = [name for part in split.values() for name in part]  # every case: this measures loading only
    cases = [load_cached(folder / f"{name}.npz") for name in names]
    for workers in args.workers:
        warmup = 2 * max(workers, 1)
        trial = replace(config, num_workers=workers, iterations=warmup + args.batches)
        loader = iter(training_loader(cases, trial, Augmentation(trial), 0))
        for _ in range(warmup):
            next(loader)
        start = time.perf_counter()
        for _ in range(args.batches):
            next(loader)
        seconds = time.perf_counter() - start
        print(json.dumps({"preset": args.preset, "workers": workers, "batch": config.batch_size,
                          "tile": list(config.tile_size), "batches_per_s": round(args.batches / seconds, 3)}),
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
