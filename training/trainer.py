"""The training loop shared by LCKD, MetaKD and the no-KD baseline (method.md sections 3-6).

Stage 1 trains with all four sequences; stage 2 draws a random subset per batch (LCKD and the
baseline: 1-3 sequences, MetaKD: 1-4). SGD with Nesterov momentum and a poly learning rate (one
curve, or the released two). ``batch_size`` is the global batch, split across torchrun's ranks.
Everything random is seeded by (seed, iteration), so a resumed run continues exactly where a
killed one stopped.
"""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn
from torch.utils.data import default_collate
from tqdm import tqdm

from lckd.errors import LCKDError
from lckd.io import atomic_path
from lckd.model_file import ModelCard, save_model
from lckd.network import LCKDNet, network_config
from lckd.preprocess import Normalisation
from lckd.sequences import SEQUENCES, all_subsets

from . import distributed
from .augmentation import make_augmentation
from .checkpoint import load_checkpoint, save_checkpoint
from .config import METHODS, TrainConfig
from .data import PatchDataset, load_cached, prepare_data, sample_rng, training_loader
from .distributed import rank_batch_size
from .election import elect_teachers
from .evaluation import evaluate
from .losses import lckd_kd, metakd_kd, segmentation_loss
from .meta import ImportanceWeights
from .report import heat_map, markdown_table

_SUBSET_STREAM, _META_STREAM, _VALIDATION_STREAM = 101, 202, 303


class TrainingStep(nn.Module):
    """What DDP wraps: logits and the raw (pre-fill) bottlenecks for one batch."""

    def __init__(self, net: LCKDNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, images: torch.Tensor, present: torch.Tensor):
        encoded = self.net.encode(images, present)
        return self.net.decode(encoded), encoded.bottlenecks


def optimisation_step(model: nn.Module, optimiser: torch.optim.Optimizer, images: torch.Tensor,
                      regions: torch.Tensor, present: List[bool],
                      kd_term: Optional[Callable[[torch.Tensor, List[bool]], torch.Tensor]], kd_weight: float,
                      use_amp: bool) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One forward, backward and SGD step on a batch; returns (loss, segmentation loss, KD term).

    ``model`` is a :class:`TrainingStep` (possibly DDP-wrapped); ``kd_term(bottlenecks, present)``
    gives the KD term from the float32 bottlenecks (None: KD off). bf16 autocast when ``use_amp``.
    """
    mask = torch.tensor(present, device=images.device)
    with torch.autocast(device_type=images.device.type, dtype=torch.bfloat16, enabled=use_amp):
        logits, bottlenecks = model(images, mask)
        segmentation = segmentation_loss(logits.float(), regions)
        kd = kd_term(bottlenecks.float(), present) if kd_term is not None else logits.new_zeros(())
        loss = segmentation + kd_weight * kd
    optimiser.zero_grad(set_to_none=True)
    loss.backward()
    optimiser.step()
    return loss, segmentation, kd


def poly_learning_rate(config: TrainConfig, iteration: int) -> float:
    """The learning rate of ``iteration``: poly decay over the whole run (``lr_schedule`` single),
    or, as released, poly decay to 0 over stage 1, then stage 2 on the whole-run curve."""
    if config.lr_schedule == "released" and iteration < config.stage1_iterations:
        return config.learning_rate * (1.0 - iteration / config.stage1_iterations) ** config.poly_power
    return config.learning_rate * (1.0 - iteration / config.iterations) ** config.poly_power


def _random_subset(rng, method: str) -> List[bool]:
    k = int(rng.integers(1, 5 if method == "metakd" else 4))
    chosen = set(rng.choice(len(SEQUENCES), size=k, replace=False).tolist())
    return [i in chosen for i in range(len(SEQUENCES))]


def batch_subset(config: TrainConfig, method: str, iteration: int) -> List[bool]:
    """All four in stage 1; in stage 2 a random subset (1-3, or 1-4 for MetaKD)."""
    if iteration < config.stage1_iterations:
        return [True] * len(SEQUENCES)
    return _random_subset(sample_rng(config.seed, _SUBSET_STREAM, iteration), method)


def meta_subsets(config: TrainConfig, method: str, iteration: int) -> Optional[List[List[bool]]]:
    """The presence mask of each meta step at ``iteration``: None (all four) in stage 1 or with
    ``meta_subsets`` all; else, as released, a random subset per step drawn like the batches'."""
    if config.meta_subsets == "all" or iteration < config.stage1_iterations:
        return None
    return [_random_subset(sample_rng(config.seed, _META_STREAM, iteration, step), method)
            for step in range(config.meta_steps)]


def validation_subsets(config: TrainConfig) -> List[Tuple[str, ...]]:
    """The subsets periodic validation scores: all 15, or ``validation_subsets`` of them chosen once
    by the seed (the same at every validation of the run)."""
    subsets = all_subsets()
    if not config.validation_subsets or config.validation_subsets >= len(subsets):
        return list(subsets)
    chosen = np.random.default_rng([config.seed, _VALIDATION_STREAM]).choice(
        len(subsets), size=config.validation_subsets, replace=False)
    return [subsets[i] for i in sorted(chosen.tolist())]


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parent, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


class Trainer:
    """One training run in ``run_dir`` (config, split, cache, checkpoints, logs, final model)."""

    def __init__(self, config: Optional[TrainConfig], method: str, data_dir: Path, run_dir: Path, device: str = "auto",
                 resume: bool = False, command: str = "", cache_dir: Optional[Path] = None,
                 progress: bool = True, split_file: Optional[Path] = None, init_file: Optional[Path] = None,
                 fold: Optional[int] = None) -> None:
        if method not in METHODS:
            raise LCKDError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
        self.method, self.data_dir, self.run_dir = method, Path(data_dir), Path(run_dir)
        self.command, self.progress = command, progress
        self.context = distributed.setup(device)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if config is not None and method == "baseline":
            config = replace(config, kd_weight=0.0)
        if config is not None and method == "lckd" and config.lckd_foreground_fraction >= 0:
            config = replace(config, foreground_fraction=config.lckd_foreground_fraction)
        self.init = describe_model_file(init_file) if init_file is not None else None
        self.config = self._settle_config(config, resume)
        rank_batch_size(self.config.batch_size, self.context.world_size)  # refuses a batch the ranks cannot split
        self.normalisation = Normalisation()
        if self.context.is_main:
            prepare_data(self.data_dir, self.run_dir, self.config, cache_dir, self.normalisation, method, split_file,
                         fold)
        distributed.barrier(self.context)
        self.split, cache = prepare_data(self.data_dir, self.run_dir, self.config, cache_dir, self.normalisation,
                                         method)
        self.cases = {part: [load_cached(cache / f"{name}.npz") for name in names]
                      for part, names in self.split.items()}
        torch.manual_seed(self.config.seed)
        self.net = LCKDNet(network_config(self.config.network)).to(self.context.device)
        self.optimiser = torch.optim.SGD(self.net.parameters(), lr=self.config.learning_rate,
                                         momentum=self.config.momentum, nesterov=True, weight_decay=0.0)
        self.importance = ImportanceWeights(self.config.meta_learning_rate, self.config.meta_weight_decay,
                                            self.config.importance_init, self.config.seed).to(
            self.context.device) if method == "metakd" else None
        self.teachers: Optional[Dict[str, object]] = None
        self.iteration = 0
        self.last_meta_iteration = -1
        self.augmentation = make_augmentation(self.config)
        if self.init is not None:
            self._initialise_from(init_file)
        if resume:
            self._restore()

    # -- set-up -------------------------------------------------------------------------------

    def _settle_config(self, config: Optional[TrainConfig], resume: bool) -> TrainConfig:
        """The run's settings: on resume the saved ones (``config``, if given, must agree), else
        ``config``, written to ``config.json``."""
        path = self.run_dir / "config.json"
        if resume and path.is_file():
            saved = json.loads(path.read_text())
            if self.init is not None and saved.get("init") != self.init:
                raise LCKDError(f"{path}: --init differs from the run's saved start ({saved.get('init')})")
            self.init = saved.get("init")
            if saved.get("method") != self.method:
                raise LCKDError(f"{path}: this run was trained with --method {saved.get('method')}, "
                                f"not {self.method}")
            settings = TrainConfig.from_dict(saved["config"])
            if config is not None and config != settings:
                changed = [f"{key} (saved {value}, given {config.to_dict()[key]})"
                           for key, value in settings.to_dict().items() if config.to_dict()[key] != value]
                raise LCKDError(f"{path}: --resume continues a run with its saved settings; these differ: "
                                f"{'; '.join(changed)}")
            return settings
        if config is None:
            raise LCKDError(f"{self.run_dir}: no run to resume here (no config.json)")
        if not resume and (self.run_dir / "last.pt").exists():
            raise LCKDError(f"{self.run_dir}: a run already exists here; use --resume to continue it "
                            f"or choose another --out")
        if self.context.is_main:
            with atomic_path(path) as temporary:
                temporary.write_text(json.dumps({"method": self.method, "config": config.to_dict(),
                                                 "command": self.command, "init": self.init}, indent=2))
        return config

    def _initialise_from(self, path: Path) -> None:
        """Start from the weights of model file ``path`` (``--init``): the same network, and none of
        its training cases among this run's validation cases."""
        from lckd.model_file import load_model

        model, card = load_model(path)
        if card.members != 1:
            raise LCKDError(f"{path}: --init needs one network's model file; this is an ensemble of {card.members} "
                            f"(give one of its networks' files)")
        if model.config != self.net.config:
            raise LCKDError(f"{path}: --init needs a model of this run's network ({self.config.network}); "
                            f"its card says preset {card.preset!r}")
        seen = sorted(set(card.training.get("training_cases") or []) & set(self.split["validation"]))
        if seen:
            raise LCKDError(f"{path}: --init model was trained on this run's validation case(s) "
                            f"{', '.join(seen[:5])}; their scores would not be on unseen cases")
        self.net.load_state_dict(model.state_dict())

    def _restore(self) -> None:
        state = load_checkpoint(self.run_dir)
        if state is None:
            return
        self.net.load_state_dict(state["model"])
        self.optimiser.load_state_dict(state["optimiser"])
        self.iteration = int(state["iteration"])
        self.teachers = json.loads(state["teachers"]) if state.get("teachers") else None
        self.last_meta_iteration = int(state.get("last_meta_iteration", -1))
        if self.importance is not None and "importance" in state:
            self.importance.logits.data.copy_(state["importance"]["logits"])
            self.importance.optimiser.load_state_dict(state["importance"]["optimiser"])
        torch.set_rng_state(state["torch_rng"])

    def _checkpoint(self) -> None:
        if not self.context.is_main:
            return
        state = {"model": self.net.state_dict(), "optimiser": self.optimiser.state_dict(),
                 "iteration": self.iteration, "method": self.method,
                 "teachers": json.dumps(self.teachers) if self.teachers else "",
                 "last_meta_iteration": self.last_meta_iteration, "torch_rng": torch.get_rng_state()}
        if self.importance is not None:
            state["importance"] = {"logits": self.importance.logits.detach().cpu(),
                                   "optimiser": self.importance.optimiser.state_dict()}
        save_checkpoint(self.run_dir, state)

    # -- the methods' extra steps ---------------------------------------------------------------

    def _log(self, message: str) -> None:
        """One line on the console (rank 0), beside the progress bar."""
        if self.context.is_main:
            tqdm.write(f"[{self.method} {self.iteration}/{self.config.iterations}] {message}", file=sys.stderr)

    def _elect(self) -> None:
        teachers = None
        if self.context.is_main:
            teachers = elect_teachers(self.net, self.cases["election"], self.config.tile_size,
                                      self.context.device, self.iteration)
        self.teachers = distributed.broadcast(teachers, self.context)
        self._log("teachers " + ", ".join(f"{region} {teacher} ({self.teachers['scores'][region][teacher]:.3f})"
                                          for region, teacher in self.teachers["per_region"].items()))

    def _meta_step(self) -> float:
        loss = 0.0
        if self.context.is_main:
            dataset = PatchDataset(self.cases["meta"], self.config, self.augmentation, seed_offset=_META_STREAM)
            size = self.config.meta_batch_size or self.config.batch_size
            base = self.iteration * self.config.meta_steps * size
            batches = (default_collate([dataset[base + step * size + b] for b in range(size)])
                       for step in range(self.config.meta_steps))
            loss = self.importance.meta_step(self.net, batches, meta_subsets(self.config, self.method, self.iteration))
        logits = distributed.broadcast(self.importance.logits.detach().cpu(), self.context)
        self.importance.logits.data.copy_(logits)
        self.last_meta_iteration = self.iteration
        self._log("importance " + ", ".join(f"{name} {alpha:.3f}" for name, alpha in self.importance.as_dict().items())
                  + f" (meta loss {loss:.3f})")
        return loss

    def _kd_term(self, bottlenecks: torch.Tensor, present: List[bool]) -> torch.Tensor:
        if self.method == "lckd":
            return lckd_kd(bottlenecks, present, self.teachers["set"])
        if self.method == "metakd":
            return metakd_kd(bottlenecks, present, self.importance.alpha())
        return bottlenecks.new_zeros(())

    # -- the loop -----------------------------------------------------------------------------

    def run(self) -> Path:
        config, context = self.config, self.context
        writer = self._writer()
        step = TrainingStep(self.net)
        model = step
        if context.distributed:
            model = nn.parallel.DistributedDataParallel(
                step, device_ids=[context.device.index] if context.device.type == "cuda" else None)
        loader = training_loader(self.cases["train"], config, self.augmentation, self.iteration, context.rank,
                                 context.world_size, pin_memory=context.device.type == "cuda")
        use_amp = config.cpu_bf16 if context.device.type == "cpu" else config.mixed_precision
        bar = tqdm(total=config.iterations, initial=self.iteration, desc=f"{self.method} training", unit="it",
                   disable=not (context.is_main and self.progress), mininterval=2.0, file=sys.stderr)
        self.net.train()
        for batch in loader:
            if self.method == "lckd" and (self.teachers is None or (
                    self.iteration % config.election_every == 0 and self.teachers["iteration"] != self.iteration)):
                self._elect()
                if writer:
                    for region, teacher in self.teachers["per_region"].items():
                        writer.add_scalar(f"teacher/{region}", SEQUENCES.index(teacher), self.iteration)
            if self.method == "metakd":
                period = config.meta_every_stage1 if self.iteration < config.stage1_iterations \
                    else config.meta_every_stage2
                if self.iteration % period == 0 and self.last_meta_iteration != self.iteration:
                    meta_loss = self._meta_step()
                    if writer:
                        writer.add_scalar("meta/loss", meta_loss, self.iteration)
                        for name, alpha in self.importance.as_dict().items():
                            writer.add_scalar(f"importance/{name}", alpha, self.iteration)
            learning_rate = poly_learning_rate(config, self.iteration)
            for group in self.optimiser.param_groups:
                group["lr"] = learning_rate
            present = batch_subset(config, self.method, self.iteration)
            images = batch["images"].to(context.device, non_blocking=True)
            regions = batch["regions"].to(context.device, non_blocking=True)
            loss, segmentation, kd = optimisation_step(model, self.optimiser, images, regions, present,
                                                       self._kd_term if config.kd_weight > 0 else None,
                                                       config.kd_weight, use_amp)
            self.iteration += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", kd=f"{kd.item():.3f}", refresh=False)
            if writer:
                writer.add_scalar("loss/total", loss.item(), self.iteration)
                writer.add_scalar("loss/segmentation", segmentation.item(), self.iteration)
                writer.add_scalar("loss/kd", kd.item(), self.iteration)
                writer.add_scalar("learning_rate", learning_rate, self.iteration)
            if self.iteration % config.checkpoint_every == 0 or self.iteration == config.iterations:
                self._checkpoint()
            if context.is_main and self.iteration % config.validate_every == 0 and self.iteration < config.iterations \
                    and self.cases["validation"]:
                self._validate(writer)
        bar.close()
        distributed.barrier(context)
        path = self._finish(writer) if context.is_main else self.run_dir / "model.safetensors"
        distributed.barrier(context)
        distributed.teardown(context)
        return path

    def _validate(self, writer) -> None:
        """Periodic validation: ``validation_cases`` cases (0: all) x ``validation_subsets`` subsets
        (0: all 15); TensorBoard tag ``validation/`` for the full table, ``validation_sample/`` else."""
        config = self.config
        cases = self.cases["validation"][: config.validation_cases or None]
        subsets = validation_subsets(config)
        result = evaluate(self.net, cases, config.tile_size, config.spacing_mm, self.context.device, subsets=subsets)
        full = len(subsets) == len(all_subsets()) and len(cases) == len(self.cases["validation"])
        self._log(f"validation Dice ({len(subsets)}-subset average, {len(cases)} cases) "
                  + ", ".join(f"{region} {value:.3f}" for region, value in result["average"].items()))
        if writer:
            for region, value in result["average"].items():
                writer.add_scalar(f"{'validation' if full else 'validation_sample'}/dice_{region}", value,
                                  self.iteration)

    def _writer(self):
        if not self.context.is_main:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            sys.stderr.write("lckd train: tensorboard is not installed; no TensorBoard logs\n")
            return None
        return SummaryWriter(log_dir=str(self.run_dir / "tensorboard"), purge_step=self.iteration)

    def _finish(self, writer) -> Path:
        """Evaluate the 15 subsets on the validation set (if there is one) and export the model
        with its card."""
        result = None
        description = f"{self.method} model trained with lckd train on {self.data_dir.name}"
        if self.cases["validation"]:
            result = evaluate(self.net, self.cases["validation"], self.config.tile_size, self.config.spacing_mm,
                              self.context.device)
            write_evaluation(result, self.run_dir,
                             title=f"{self.method}, {len(self.cases['validation'])} validation cases")
            if writer:
                for region, value in result["average"].items():
                    writer.add_scalar(f"validation/dice_{region}", value, self.iteration)
        else:
            description += "; no validation (every labelled case trained or selected; validation_fraction 0)"
            self._log("no validation cases: no evaluation table (validation_fraction 0)")
        if writer:
            writer.close()
        card = ModelCard(
            preset=self.config.network, network=self.net.config.to_dict(), tile_size=list(self.config.tile_size),
            spacing_mm=[self.config.spacing_mm] * 3, normalisation=self.normalisation.to_dict(), method=self.method,
            teachers=self.teachers if self.method == "lckd" else None,
            importance=self.importance.as_dict() if self.importance is not None else None,
            validation=result, name=f"lckd-{self.method}-{self.run_dir.name}", description=description,
            training=self._provenance())
        return save_model(self.run_dir / "model.safetensors", self.net, card)

    def _provenance(self) -> Dict[str, object]:
        return {"command": self.command, "data": str(self.data_dir.name),
                "cases": {part: len(names) for part, names in self.split.items()},
                "validation_cases": list(self.split["validation"]), "training_cases": list(self.split["train"]),
                "init": self.init,
                "iterations": self.iteration, "preset": self.config.preset, "config": self.config.to_dict(),
                "seed": self.config.seed,
                "git_commit": _git_commit(), "torch": torch.__version__, "world_size": self.context.world_size,
                "device": self.context.device.type,
                "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")}


def describe_model_file(path: Path) -> Dict[str, str]:
    """A model file's provenance: its name, SHA-256 and card name (``--init FILE``, ``lckd ensemble``)."""
    import hashlib

    from lckd.model_file import read_card

    path = Path(path)
    card = read_card(path)
    return {"file": path.name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "name": card.name}


def write_evaluation(result: Dict[str, object], out_dir: Path, title: str = "") -> None:
    """``evaluation.json``, ``evaluation.md`` and ``evaluation.png`` in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / "evaluation.json") as temporary:
        temporary.write_text(json.dumps(result, indent=2))
    with atomic_path(out_dir / "evaluation.md") as temporary:
        temporary.write_text(markdown_table(result, title))
    heat_map(result, out_dir / "evaluation.png", title or "Dice per subset")

