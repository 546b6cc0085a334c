"""Training settings: presets (`paper`, `phantom`, `tiny`), command-line overrides, saved with the run."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Dict, Sequence, Tuple

from lckd.errors import LCKDError

METHODS = ("lckd", "metakd", "baseline")


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
    stage1_iterations: int = 80_000
    iterations: int = 115_000
    kd_weight: float = 0.1
    election_every: int = 5_000
    meta_every_stage1: int = 100
    meta_every_stage2: int = 500
    meta_steps: int = 20
    meta_learning_rate: float = 1e-2
    meta_weight_decay: float = 5e-4
    foreground_fraction: float = 0.5
    augment: bool = True
    elastic_probability: float = 0.2
    checkpoint_every: int = 500
    validate_every: int = 5_000
    validation_cases: int = 0  # 0: all validation cases at each periodic validation
    election_fraction: float = 0.05
    meta_fraction: float = 0.05
    validation_fraction: float = 0.15
    min_held_out: int = 1
    # tiny data sets: elect teachers and run meta steps on the training cases instead of holding
    # election and meta cases out (only the validation cases are never trained on)
    selection_on_training: bool = False
    num_workers: int = 12  # measured best on a 16-core GPU machine (Benchmarks.md); nnU-Net also uses 12
    mixed_precision: bool = True  # CUDA only
    seed: int = 0

    def to_dict(self) -> Dict[str, object]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, values: Dict[str, object]) -> TrainConfig:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


PRESETS: Dict[str, TrainConfig] = {
    "paper": TrainConfig(preset="paper"),
    # the bundled demo model: 2 mm phantoms, the `demo` network, a 2-core CPU in minutes
    "phantom": TrainConfig(preset="phantom", network="demo", tile_size=(48, 64, 64), spacing_mm=2.0,
                           stage1_iterations=480, iterations=800, learning_rate=1e-2, election_every=200,
                           meta_every_stage1=40, meta_every_stage2=100, meta_steps=5, checkpoint_every=50,
                           validate_every=400, validation_cases=2, elastic_probability=0.0, num_workers=0,
                           min_held_out=2),
    # the shipped real-data model: 14 BraTS 2018 cases on a 2-core CPU in about two hours (Training.md)
    "brats-cpu": TrainConfig(preset="brats-cpu", network="small", tile_size=(48, 64, 64), spacing_mm=2.0,
                             stage1_iterations=2800, iterations=7000, election_every=700, meta_every_stage1=100,
                             meta_every_stage2=250, meta_steps=5, checkpoint_every=100, validate_every=1400,
                             validation_cases=0, elastic_probability=0.2, num_workers=1, validation_fraction=0.2,
                             selection_on_training=True),
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

