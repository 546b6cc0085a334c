"""Seconds per paper tile (80x160x160, random weights, 2 threads by default) for each inference
optimisation, one variant per process (the allocator setting is process-wide).

Times one call of what the sliding window runs per tile (``TilePredictor``) after one warm-up call;
prints one JSON line ``{"variant", "description", "seconds", "runs"}`` (the best of ``--runs``).

    python Testing/Benchmarks/tile_ablation.py --variant bf16-channels-last-allocator
    python Testing/Benchmarks/tile_ablation.py --list
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from typing import Dict, List, Optional, Tuple

import torch

from lckd.allocator import keep_freed_memory
from lckd.inference import TilePredictor
from lckd.network import PRESETS, LCKDNet

TILE = (80, 160, 160)

#: name -> (description, freeze, dtype, channels-last, bf16 autocast, allocator setting), in the order applied
VARIANTS: Dict[str, Tuple[str, bool, torch.dtype, bool, bool, bool]] = {
    "fp32-plain": ("fp32, weight standardisation every call, InstanceNorm3d", False, torch.float32, False, False,
                   False),
    "fp32-frozen": ("fp32, frozen weight standardisation, InstanceNorm as GroupNorm", True, torch.float32, False,
                    False, False),
    "fp32-channels-last": ("+ channels-last (small-input norms contiguous)", True, torch.float32, True, False, False),
    "fp32-channels-last-allocator": ("+ freed memory kept (`lckd segment`'s allocator setting)", True, torch.float32,
                                     True, False, True),
    "bf16-autocast": ("bf16 autocast over the frozen fp32 network (the earlier --precision bf16)", True,
                      torch.float32, False, True, False),
    "bf16-weights": ("bf16 weights and activations, contiguous", True, torch.bfloat16, False, False, False),
    "bf16-channels-last": ("bf16, channels-last", True, torch.bfloat16, True, False, False),
    "bf16-channels-last-allocator": ("bf16, channels-last, freed memory kept (what `lckd segment` runs on a CPU "
                                     "with native bf16)", True, torch.bfloat16, True, False, True),
}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", choices=sorted(VARIANTS))
    parser.add_argument("--list", action="store_true", help="print the variants in order and exit")
    parser.add_argument("--runs", type=int, default=2, help="timed calls after one warm-up (best reported)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    if args.list or args.variant is None:
        print("\n".join(VARIANTS))
        return 0
    description, freeze, dtype, channels_last, autocast, allocator = VARIANTS[args.variant]
    if allocator:
        keep_freed_memory()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = LCKDNet(PRESETS["paper"]).eval()
    if freeze:
        model.freeze_for_inference(dtype, channels_last=channels_last)
    predictor = TilePredictor(model, [True] * 4, reuse_absent=True)
    tile = torch.randn(1, 4, *TILE)
    context = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    times = []
    with torch.no_grad(), context:
        for index in range(args.runs + 1):
            start = time.perf_counter()
            predictor(tile)
            if index:
                times.append(time.perf_counter() - start)
    print(json.dumps({"variant": args.variant, "description": description, "seconds": round(min(times), 3),
                      "runs": args.runs}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
