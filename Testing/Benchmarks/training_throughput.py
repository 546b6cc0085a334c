"""Training throughput: seconds per optimisation step of a training preset, data loading excluded.

Times ``training.trainer.optimisation_step`` (the loop body of ``lckd train``: forward, Dice + BCE,
the LCKD KD term with one teacher per region, backward, SGD Nesterov) on a fixed random batch of the
preset's tile and batch size, with all four sequences (stage 1, the heaviest step) and bf16
autocast on CUDA when the preset asks for mixed precision (on the CPU with ``--cpu-bf16``). Prints one JSON line:
``{"preset", "device", "batch", "tile", "amp", "median_s", "iterations_per_s", "peak_gpu_gb"}``.

    python Testing/Benchmarks/training_throughput.py --preset phantom --device cpu
    python Testing/Benchmarks/training_throughput.py --preset brats-cpu --device cpu --cpu-bf16
    python Testing/Benchmarks/training_throughput.py --preset paper --device cuda
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import List, Optional

import torch

from lckd.inference import resolve_device
from lckd.network import LCKDNet, network_config
from training.config import PRESETS
from training.losses import lckd_kd
from training.trainer import TrainingStep, optimisation_step

#: Teachers for the timed KD term: T1ce for ET and TC, FLAIR for WT (the pattern the papers report).
TEACHERS = ["flair", "t1ce"]


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="phantom", choices=sorted(PRESETS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=10, help="timed steps (after --warmup)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--no-amp", action="store_true", help="float32 even where the preset uses bf16 autocast")
    parser.add_argument("--cpu-bf16", action="store_true",
                        help="bf16 autocast on the CPU (the cpu_bf16 setting; gains only with native bf16)")
    args = parser.parse_args(argv)

    config = PRESETS[args.preset]
    device = resolve_device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    net = LCKDNet(network_config(config.network)).to(device).train()
    optimiser = torch.optim.SGD(net.parameters(), lr=config.learning_rate, momentum=config.momentum, nesterov=True)
    shape = (config.batch_size, 4, *config.tile_size)
    images = torch.randn(shape, device=device)
    regions = (torch.rand((config.batch_size, 3, *config.tile_size), device=device) > 0.9).float()
    use_amp = (args.cpu_bf16 if device.type == "cpu" else config.mixed_precision) and not args.no_amp
    step = TrainingStep(net)
    present = [True] * 4

    def kd_term(bottlenecks: torch.Tensor, available: List[bool]) -> torch.Tensor:
        return lckd_kd(bottlenecks, available, TEACHERS)

    times = []
    for index in range(args.warmup + args.steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        loss, _, _ = optimisation_step(step, optimiser, images, regions, present, kd_term, config.kd_weight, use_amp)
        loss.item()  # waits for the step, as the training loop's logging does
        if index >= args.warmup:
            times.append(time.perf_counter() - start)
    median = statistics.median(times)
    result = {"preset": args.preset, "device": str(device), "batch": config.batch_size,
              "tile": list(config.tile_size), "amp": use_amp, "threads": torch.get_num_threads(),
              "median_s": round(median, 4), "iterations_per_s": round(1.0 / median, 3),
              "peak_gpu_gb": round(torch.cuda.max_memory_allocated() / 1e9, 2) if device.type == "cuda" else None}
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
