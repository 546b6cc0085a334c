"""Training settings: presets (`paper`, `paper-protocol`, `brats-cpu`, `brats-gpu`, `phantom`, `tiny`), command-line
overrides, saved with the run.

Every setting added after runs were started has a dataclass default that reproduces the behaviour
before it existed, because ``TrainConfig.from_dict`` fills keys absent from an older ``config.json``
with these defaults; the presets set the released values explicitly.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Dict, Sequence, Tuple

from lckd.errors import LCKDError

METHODS = ("lckd", "metakd", "baseline")
LR_SCHEDULES = ("single", "released")
META_SUBSETS = ("all", "training")
IMPORTANCE_INITS = ("zeros", "rand")
AUGMENTATIONS = ("monai", "fast", "released")


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of a training run (method.md section 6 for the paper's values)."""

    preset: str = "paper"  # the preset the run started from (provenance; set by --preset, not --set)
    network: str = "paper"
    tile_size: Tuple[int, int, int] = (80, 160, 160)
    spacing_mm: float = 1.0
    batch_size: int = 2
    learning_rate: float = 1e-2
    momentum: float = 0.99
    poly_power: float = 0.9
    # single: one poly curve over all iterations; released: poly to 0 over stage 1, then stage 2
    # restarts on the single curve (1e-2 * (1 - i / iterations) ** 0.9), as the authors' two runs
    lr_schedule: str = "single"
    stage1_iterations: int = 80_000
    iterations: int = 115_000
    kd_weight: float = 0.1
    election_every: int = 5_000
    meta_every_stage1: int = 100
    meta_every_stage2: int = 500
    meta_steps: int = 20
    meta_learning_rate: float = 1e-2
    meta_weight_decay: float = 5e-4
    meta_batch_size: int = 0  # 0: batch_size
    # all: the meta forward always has the four sequences; training: in stage 2 it draws a random
    # subset like the training batches (a missing sequence enters as encoder(0) * alpha), as released
    meta_subsets: str = "all"
    importance_init: str = "zeros"  # zeros, or rand (torch.rand(4), seeded, as released)
    foreground_fraction: float = 0.5
    lckd_foreground_fraction: float = -1.0  # LCKD runs' tumour-centred fraction; negative: foreground_fraction
    augment: bool = True
    # monai: the MONAI transform chain; fast: the same augmentation (same parameters and
    # probabilities) in one resampling, several times faster; released: the fast chain with the
    # authors' magnitudes (4x elastic displacement, scaling and rotation read real context around
    # the patch instead of zeros, additive instead of multiplicative brightness)
    augmentation: str = "monai"
    elastic_probability: float = 0.2
    checkpoint_every: int = 500
    validate_every: int = 5_000
    validation_cases: int = 0  # 0: all validation cases at each periodic validation
    validation_subsets: int = 0  # 0: all 15 subsets at each periodic validation (the final one always has 15)
    # fractions of the labelled cases; 0 holds none out: no validation, or the election / meta set
    # is the training cases (the release's protocol)
    election_fraction: float = 0.05
    meta_fraction: float = 0.05
    validation_fraction: float = 0.15
    min_held_out: int = 1  # at least this many cases in each set with a fraction above 0
    # False: the set the method does not use (election for MetaKD, meta for LCKD, both for the
    # baseline) is not held out, so those cases train
    hold_out_unused: bool = True
    # tiny data sets: elect teachers and run meta steps on the training cases instead of holding
    # election and meta cases out (only the validation cases are never trained on)
    selection_on_training: bool = False
    num_workers: int = 12  # measured best on a 16-core GPU machine (Benchmarks.md); nnU-Net also uses 12
    mixed_precision: bool = True  # CUDA only
    # bf16 autocast on the CPU as well (only a CPU with native bf16, AVX-512-BF16 or AMX, can gain;
    # elsewhere torch emulates it); off: float32, as every CPU run so far
    cpu_bf16: bool = False
    seed: int = 0

    def to_dict(self) -> Dict[str, object]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, values: Dict[str, object]) -> TrainConfig:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


PAPER = TrainConfig(preset="paper", lr_schedule="released", meta_batch_size=1, meta_subsets="training",
                    importance_init="rand", lckd_foreground_fraction=0.375, augmentation="released",
                    validation_cases=10, validation_subsets=5)

BRATS_CPU = TrainConfig(preset="brats-cpu", network="small", tile_size=(48, 64, 64), spacing_mm=2.0,
                        stage1_iterations=2800, iterations=7000, election_every=700, meta_every_stage1=100,
                        meta_every_stage2=250, meta_steps=5, checkpoint_every=100, validate_every=1400,
                        validation_cases=0, elastic_probability=0.2, num_workers=1, validation_fraction=0.2,
                        selection_on_training=True)

PRESETS: Dict[str, TrainConfig] = {
    # the papers' settings as the authors' code runs them (Training.md lists each value)
    "paper": PAPER,
    # the papers' data protocol: train on every case (LCKD elects on the training cases; MetaKD
    # holds out 5 of BraTS 2018's 285 for its meta set), no local validation (submit to the online one)
    "paper-protocol": replace(PAPER, preset="paper-protocol", validation_fraction=0.0, election_fraction=0.0,
                              meta_fraction=0.0175, hold_out_unused=False),
    # the bundled demo model: 2 mm phantoms, the `demo` network, a 2-core CPU in minutes
    "phantom": TrainConfig(preset="phantom", network="demo", tile_size=(48, 64, 64), spacing_mm=2.0,
                           stage1_iterations=480, iterations=800, learning_rate=1e-2, election_every=200,
                           meta_every_stage1=40, meta_every_stage2=100, meta_steps=5, checkpoint_every=50,
                           validate_every=400, validation_cases=2, elastic_probability=0.0, num_workers=0,
                           min_held_out=2),
    # the shipped real-data model: 14 BraTS 2018 cases on a 2-core CPU in about two hours (Training.md)
    "brats-cpu": BRATS_CPU,
    # the same cases on one GPU in minutes: the `medium` network, larger tiles and batch, the fast chain
    "brats-gpu": replace(BRATS_CPU, preset="brats-gpu", network="medium", tile_size=(64, 96, 96), batch_size=4,
                         stage1_iterations=3200, iterations=8000, election_every=1000, checkpoint_every=250,
                         validate_every=2000, augmentation="fast", num_workers=12),
    "tiny": TrainConfig(preset="tiny", network="tiny", tile_size=(32, 64, 64), spacing_mm=3.0, batch_size=2,
                        stage1_iterations=4, iterations=8, election_every=4, meta_every_stage1=2,
                        meta_every_stage2=4, meta_steps=2, checkpoint_every=2, validate_every=8,
                        validation_cases=1, elastic_probability=0.0, num_workers=0, min_held_out=1),
}


def parse_overrides(pairs: Sequence[str]) -> Dict[str, object]:
    """``["lr=0.01", "tile_size=48,64,64"]`` -> typed values (by the field's type)."""
    types = {f.name: f.type for f in fields(TrainConfig) if f.name != "preset"}
    defaults = TrainConfig()
    values: Dict[str, object] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or key not in types:
            raise LCKDError(f"--set {pair}: expected KEY=VALUE with KEY one of {', '.join(sorted(types))}")
        default = getattr(defaults, key)
        try:
            if isinstance(default, bool):
                if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(text)
                values[key] = text.lower() in ("true", "1", "yes")
            elif isinstance(default, tuple):
                values[key] = tuple(int(v) for v in text.split(","))
            else:
                values[key] = type(default)(text)
        except ValueError:
            raise LCKDError(f"--set {pair}: {text!r} is not a valid {type(default).__name__}") from None
    return values


def build_config(preset: str, overrides: Dict[str, object]) -> TrainConfig:
    """A preset with overrides applied, checked (:func:`check_config`)."""
    if preset not in PRESETS:
        raise LCKDError(f"unknown training preset {preset!r}; choose from {', '.join(PRESETS)}")
    config = replace(PRESETS[preset], **overrides)
    if config.stage1_iterations > config.iterations:
        config = replace(config, stage1_iterations=config.iterations)
    check_config(config)
    return config


def check_config(config: TrainConfig) -> None:
    """Refuse settings the network or the schedule cannot run, with one clear line."""
    from lckd.network import network_config

    try:
        factor = network_config(config.network).downsampling
    except ValueError as error:
        raise LCKDError(f"network={config.network}: {error}") from None
    tile = config.tile_size
    if len(tile) != 3 or any(t < 1 or t % f for t, f in zip(tile, factor)):
        raise LCKDError(f"tile_size={','.join(map(str, tile))}: needs three sizes, each a multiple of "
                        f"{','.join(map(str, factor))} (the {config.network} network's down-sampling)")
    if all(t == f for t, f in zip(tile, factor)):
        raise LCKDError(f"tile_size={','.join(map(str, tile))}: the bottleneck would be one voxel, which "
                        f"instance normalisation cannot train on; double one of the sizes")
    for key in ("iterations", "batch_size", "election_every", "meta_every_stage1", "meta_every_stage2",
                "checkpoint_every", "validate_every"):
        if getattr(config, key) < 1:
            raise LCKDError(f"{key}={getattr(config, key)}: must be at least 1")
    for key, choices in (("lr_schedule", LR_SCHEDULES), ("meta_subsets", META_SUBSETS),
                         ("importance_init", IMPORTANCE_INITS), ("augmentation", AUGMENTATIONS)):
        if getattr(config, key) not in choices:
            raise LCKDError(f"{key}={getattr(config, key)}: choose from {', '.join(choices)}")
    for key in ("meta_batch_size", "validation_cases", "validation_subsets", "min_held_out"):
        if getattr(config, key) < 0:
            raise LCKDError(f"{key}={getattr(config, key)}: must be 0 or more")
    if config.validation_subsets > 15:
        raise LCKDError(f"validation_subsets={config.validation_subsets}: there are 15 subsets")
    for key in ("election_fraction", "meta_fraction", "validation_fraction"):
        if not 0.0 <= getattr(config, key) < 1.0:
            raise LCKDError(f"{key}={getattr(config, key)}: must be at least 0 and below 1")

