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
from dataclasses import dataclass
from typing import Dict, List, Optional

import torch

from lckd.allocator import keep_freed_memory
from lckd.inference import TilePredictor
from lckd.network import PRESETS, LCKDNet

TILE = (80, 160, 160)



@dataclass(frozen=True)
class Variant:
    description: str
    freeze: bool = True  # freeze_for_inference (weight standardisation once, InstanceNorm as GroupNorm)
    dtype: torch.dtype = torch.float32
    channels_last: bool = False
    autocast: bool = False  # bf16 autocast over float32 weights
    allocator: bool = False  # lckd segment's keep_freed_memory()
    strided_stem: bool = False  # undo the channels-last stem form (width-unfold in fp32, phase-split in bf16)


#: in the order the optimisations were applied; the fourth and last rows are what `lckd segment` runs
#: without and with native bf16
VARIANTS: Dict[str, Variant] = {
    "fp32-plain": Variant("fp32, weight standardisation every call, InstanceNorm3d", freeze=False),
    "fp32-frozen": Variant("fp32, frozen weight standardisation, InstanceNorm as GroupNorm"),
    "fp32-channels-last-strided-stem": Variant("+ channels-last (small-input norms contiguous)", channels_last=True,
                                               strided_stem=True),
    "fp32-channels-last-allocator-strided-stem": Variant("+ freed memory kept (`lckd segment`'s allocator setting)",
                                                         channels_last=True, allocator=True, strided_stem=True),
    "fp32-channels-last-allocator": Variant("+ width-unfold stem (what `lckd segment` runs without native bf16)",
                                            channels_last=True, allocator=True),
    "bf16-autocast": Variant("bf16 autocast over the frozen fp32 network (the earlier --precision bf16)",
                             autocast=True),
    "bf16-weights": Variant("bf16 weights and activations, contiguous", dtype=torch.bfloat16),
    "bf16-channels-last-strided-stem": Variant("bf16, channels-last", dtype=torch.bfloat16, channels_last=True,
                                               strided_stem=True),
    "bf16-channels-last-allocator-strided-stem": Variant("+ freed memory kept", dtype=torch.bfloat16,
                                                         channels_last=True, allocator=True, strided_stem=True),
    "bf16-channels-last-allocator": Variant("+ phase-split stem (what `lckd segment` runs with native bf16)",
                                            dtype=torch.bfloat16, channels_last=True, allocator=True),
}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", choices=sorted(VARIANTS))
    parser.add_argument("--list", action="store_true", help="print the variants in order and exit")
    parser.add_argument("--runs", type=int, default=3, help="timed calls after one warm-up (best reported)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    if args.list or args.variant is None:
        print("\n".join(VARIANTS))
        return 0
    variant = VARIANTS[args.variant]
    if variant.allocator:
        keep_freed_memory()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = LCKDNet(PRESETS["paper"]).eval()
    stem = model.encoder.stem[0]
    if variant.freeze:
        model.freeze_for_inference(variant.dtype, channels_last=variant.channels_last)
    if variant.strided_stem:
        model.encoder.stem[0] = stem  # frozen in place with the others, before its channels-last form replaced it
    predictor = TilePredictor(model, [True] * 4, reuse_absent=True)
    tile = torch.randn(1, 4, *TILE)
    context = torch.autocast("cpu", dtype=torch.bfloat16) if variant.autocast else contextlib.nullcontext()
    times = []
    with torch.no_grad(), context:
        for index in range(args.runs + 1):
            start = time.perf_counter()
            predictor(tile)
            if index:
                times.append(time.perf_counter() - start)
    print(json.dumps({"variant": args.variant, "description": variant.description, "seconds": round(min(times), 3),
                      "runs": args.runs}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
