"""Training data: case discovery, the written-down split, the preprocessing cache, patch sampling.

Cases are prepared once with the inference path (:func:`lckd.preparation.prepare_case`: working
grid, normalisation, brain crop, network axes) and cached as ``.npy`` arrays that training reads
memory-mapped, so epochs never re-read NIfTI and the data set need not fit in memory. Every
training sample is drawn from a random generator seeded by ``(seed, sample index)``, so a run is
reproducible, independent of the number of loader workers, and resumes exactly.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from lckd.cases import CaseFiles, find_cases
from lckd.errors import InputError
from lckd.io import atomic_path, load_volume
from lckd.labels import convert_convention, regions_from_labels
from lckd.preparation import labels_on_network_grid, prepare_case
from lckd.preprocess import Normalisation
from lckd.sequences import REGIONS

from .config import TrainConfig

#: The held-out sets a method uses (the baseline uses neither).
USES = {"lckd": ("election",), "metakd": ("meta",), "baseline": ()}


def make_split(cases: Sequence[CaseFiles], config: TrainConfig, method: Optional[str] = None) -> Dict[str, List[str]]:
    """A seeded split of case names into train / election / meta / validation.

    Validation never overlaps anything; ``validation_fraction`` 0 leaves it empty. The election
    and meta sets are held out too, unless ``selection_on_training`` (tiny data sets) or their
    fraction is 0, where they are the training cases. With ``hold_out_unused`` False, the set
    ``method`` does not use is empty instead of held out. A set with a fraction above 0 has at
    least ``min_held_out`` cases; a fraction of 0 never keeps a case out.
    """
    names = sorted(case.name for case in cases if case.segmentation is not None)
    selection = () if config.selection_on_training else ("election", "meta")
    if not config.hold_out_unused and method is not None:
        selection = tuple(part for part in selection if part in USES[method])
    parts = tuple(part for part in ("validation",) + selection if getattr(config, f"{part}_fraction") > 0)
    if len(names) < len(parts) * config.min_held_out + 1:
        named = ("train",) + parts
        sets = " and ".join(filter(None, (", ".join(named[:-1]), named[-1])))
        raise InputError(f"only {len(names)} labelled case(s) found; training needs at least "
                         f"{len(parts) * config.min_held_out + 1} ({sets} sets)")
    order = np.random.default_rng(config.seed).permutation(len(names))
    shuffled = [names[i] for i in order]

    def count(fraction: float) -> int:
        return max(config.min_held_out, int(round(fraction * len(names))))

    split: Dict[str, List[str]] = {"validation": []}
    start = 0
    for name in parts:
        size = count(getattr(config, f"{name}_fraction"))
        split[name] = sorted(shuffled[start:start + size])
        start += size
    split["train"] = sorted(shuffled[start:])
    if len(split["train"]) < 1:
        raise InputError(f"only {len(names)} labelled case(s) found: the held-out sets leave none to train on")
    for name in ("election", "meta"):
        if name not in split:
            used = method is None or config.hold_out_unused or name in USES[method]
            split[name] = list(split["train"]) if used else []
    return {name: split[name] for name in ("validation", "election", "meta", "train")}


def read_split_file(path: Path, cases: Sequence[CaseFiles], fold: Optional[int] = None) -> Dict[str, List[str]]:
    """A split given by the user (``lckd train --split FILE``, as nnU-Net's ``splits_final.json``):
    JSON with ``train`` and ``validation`` lists of case names, and optionally ``election`` and
    ``meta`` (absent: the training cases), or a list of such splits (cross-validation folds), of
    which ``fold`` chooses one. Every name must be a labelled case of the data folder, validation
    must not overlap the other sets, and no case may be named twice in one set."""
    try:
        given = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"{path}: not a readable JSON split file ({error})") from None
    if isinstance(given, list):
        if fold is None or not 0 <= fold < len(given):
            raise InputError(f"{path}: holds {len(given)} cross-validation folds; choose one with --fold K "
                             f"(0 to {len(given) - 1})")
        given = given[fold]
    elif fold is not None:
        raise InputError(f"{path}: holds one split, not a list of folds; --fold {fold} does not apply")
    parts = ("validation", "election", "meta", "train")
    if not isinstance(given, dict) or not set(given) <= set(parts) or "train" not in given \
            or "validation" not in given:
        found = sorted(given) if isinstance(given, dict) else type(given).__name__
        raise InputError(f"{path}: a split file is a JSON object with the lists 'train' and 'validation' "
                         f"(and optionally 'election', 'meta'); found {found}")
    labelled = {case.name for case in cases if case.segmentation is not None}
    split: Dict[str, List[str]] = {}
    for part in parts:
        names = given.get(part, given["train"] if part in ("election", "meta") else None)
        if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
            raise InputError(f"{path}: '{part}' must be a list of case names")
        if len(set(names)) != len(names):
            raise InputError(f"{path}: '{part}' names a case twice")
        unknown = sorted(set(names) - labelled)
        if unknown:
            raise InputError(f"{path}: '{part}' names case(s) that are not labelled cases of the data folder: "
                             f"{', '.join(unknown[:5])}")
        split[part] = sorted(names)
    if not split["train"]:
        raise InputError(f"{path}: 'train' is empty")
    seen = set(split["validation"]) & set(split["train"] + split["election"] + split["meta"])
    if seen:
        raise InputError(f"{path}: validation case(s) also trained or selected on: {', '.join(sorted(seen)[:5])}")
    return split


def load_or_make_split(run_dir: Path, cases: Sequence[CaseFiles], config: TrainConfig,
                       method: Optional[str] = None, split_file: Optional[Path] = None,
                       fold: Optional[int] = None) -> Dict[str, List[str]]:
    """The run's split (``split.json``), written once and reused on resume: the seeded
    :func:`make_split`, or ``split_file`` (its fold ``fold`` for a list of folds; :func:`read_split_file`)."""
    path = run_dir / "split.json"
    given = read_split_file(split_file, cases, fold) if split_file is not None else None
    if path.is_file():
        saved = json.loads(path.read_text())
        if given is not None and given != saved:
            raise InputError(f"{split_file}: differs from the run's saved split ({path}); a run keeps its split")
        return saved
    split = given if given is not None else make_split(cases, config, method)
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(split, indent=2))
    return split


#: Files of a cached case beside ``<name>.npz`` (labels' tumour voxels, presence; written last).
IMAGES_SUFFIX, LABELS_SUFFIX = ".images.npy", ".labels.npy"


@dataclass
class CachedCase:
    """A prepared case: normalised images ``(4, Z, Y, X)`` float32 and labels ``(Z, Y, X)`` uint8
    (ET = 4), both memory-mapped read-only, and the flat indices of each region's voxels
    (ET, WT, TC) for tumour-centred sampling.

    Memory-mapping keeps a BraTS-sized training set (tens of GB of arrays) on disk; pickling a case
    (for spawned loader workers) reopens the files instead of copying the arrays.
    """

    path: Path
    images: np.ndarray
    labels: np.ndarray
    tumour: Tuple[np.ndarray, ...]

    @property
    def name(self) -> str:
        return self.path.stem

    def __reduce__(self):
        return load_cached, (self.path,)


def cache_folder(cache_dir: Path, spacing_mm: float, normalisation: Normalisation) -> Path:
    """The sub-folder of ``cache_dir`` for one preparation setting, so runs at other spacings or
    normalisations can share ``--cache`` without ever reading each other's arrays."""
    settings = "-".join(str(v) for v in normalisation.to_dict().values())
    return Path(cache_dir) / f"spacing{spacing_mm:g}mm-{settings}"


def cache_case(case: CaseFiles, folder: Path, spacing_mm: float, normalisation: Normalisation) -> Path:
    """Prepare one case into ``folder`` (see :func:`cache_folder`) unless it is already there.

    Returns the path of ``<name>.npz``, written last: a case whose ``.npz`` exists is complete.
    """
    path = folder / f"{case.name}.npz"
    if path.is_file():
        return path
    if case.segmentation is None:
        raise InputError(f"{case.folder}: no label map (…_seg.nii.gz) for training")
    volumes = {name: load_volume(file) for name, file in case.sequences.items()}
    prepared = prepare_case(volumes, (spacing_mm,) * 3, normalisation)
    labels = labels_on_network_grid(load_volume(case.segmentation, allow_empty=True), prepared)
    labels = convert_convention(labels, case.et_label, 4).astype(np.uint8)
    tumour = {name: np.flatnonzero(mask).astype(np.int64)
              for name, mask in zip(REGIONS, regions_from_labels(labels))}
    for suffix, array in ((IMAGES_SUFFIX, prepared.images.astype(np.float32)), (LABELS_SUFFIX, labels)):
        with atomic_path(folder / f"{case.name}{suffix}") as temporary, open(temporary, "wb") as handle:
            np.save(handle, array)
    with atomic_path(path) as temporary, open(temporary, "wb") as handle:
        np.savez(handle, present=np.array(prepared.present), **tumour)
    return path


def prepared_one_by_one(cases: Sequence[CaseFiles], spacing_mm: float,
                        normalisation: Normalisation) -> Iterator[CachedCase]:
    """Each (labelled) case prepared as for training, in a temporary cache deleted afterwards (for
    measurements that read every case once)."""
    with tempfile.TemporaryDirectory() as work:
        folder = cache_folder(Path(work), spacing_mm, normalisation)
        folder.mkdir(parents=True)
        for case in cases:
            yield load_cached(cache_case(case, folder, spacing_mm, normalisation))


def load_cached(path: Path) -> CachedCase:
    """Open a cached case (``<name>.npz`` from :func:`cache_case`) with memory-mapped arrays."""
    path = Path(path)
    with np.load(path) as data:
        if not data["present"].all():
            raise InputError(f"{path}: training and evaluation need cases with all four sequences")
        tumour = tuple(data[name] for name in REGIONS)
    stem = path.parent / path.stem
    return CachedCase(path=path, images=np.load(f"{stem}{IMAGES_SUFFIX}", mmap_mode="r"),
                      labels=np.load(f"{stem}{LABELS_SUFFIX}", mmap_mode="r"), tumour=tumour)


def prepare_data(data_dir: Path, run_dir: Path, config: TrainConfig, cache_dir: Optional[Path] = None,
                 normalisation: Optional[Normalisation] = None, method: Optional[str] = None,
                 split_file: Optional[Path] = None, fold: Optional[int] = None) -> Tuple[Dict[str, List[str]], Path]:
    """Discover cases, write the split (for ``method``, see :func:`make_split`, or ``split_file`` and
    its ``fold``) and fill the cache; returns (split, folder of the cached cases)."""
    normalisation = normalisation or Normalisation()
    cases = find_cases(data_dir)
    split = load_or_make_split(run_dir, cases, config, method, split_file, fold)
    folder = cache_folder(cache_dir or run_dir / "cache", config.spacing_mm, normalisation)
    folder.mkdir(parents=True, exist_ok=True)
    by_name = {case.name: case for case in cases}
    missing = [name for names in split.values() for name in names if name not in by_name]
    if missing:
        raise InputError(f"{data_dir}: case(s) of the run's split are missing: {', '.join(missing[:5])}")
    for names in split.values():
        for name in names:
            cache_case(by_name[name], folder, config.spacing_mm, normalisation)
    return split, folder


def sample_rng(seed: int, *index: int) -> np.random.Generator:
    return np.random.default_rng([seed] + [int(i) for i in index])


def patch_start(case: CachedCase, tile: Sequence[int], rng: np.random.Generator,
                foreground_fraction: float) -> np.ndarray:
    """The first voxel of a tile-sized patch: centred on a random voxel of a randomly chosen present
    region with probability ``foreground_fraction``, else anywhere, and inside the case where it fits."""
    shape = np.array(case.labels.shape)
    tile = np.array(tile)
    centre = None
    if rng.random() < foreground_fraction:
        available = [voxels for voxels in case.tumour if voxels.size]
        if available:
            voxels = available[int(rng.integers(len(available)))]
            centre = np.array(np.unravel_index(int(voxels[int(rng.integers(voxels.size))]), tuple(shape)))
    if centre is None:
        centre = np.array([int(rng.integers(n)) for n in shape])
    return np.clip(centre - tile // 2, np.minimum(0, shape - tile), np.maximum(shape - tile, 0))


def crop(case: CachedCase, start: Sequence[int], size: Sequence[int]) -> Tuple[np.ndarray, np.ndarray]:
    """Images (float32) and labels (uint8) of the box ``start .. start + size``, zero outside the case."""
    shape = case.labels.shape
    images = np.zeros((case.images.shape[0],) + tuple(int(n) for n in size), np.float32)
    labels = np.zeros(tuple(int(n) for n in size), np.uint8)
    source = tuple(slice(min(max(s, 0), n), max(min(s + t, n), 0)) for s, t, n in zip(start, size, shape))
    if all(a.stop > a.start for a in source):
        target = tuple(slice(a.start - s, a.stop - s) for a, s in zip(source, start))
        images[(slice(None),) + target] = case.images[(slice(None),) + source]
        labels[target] = case.labels[source]
    return images, labels


class PatchDataset(Dataset):
    """Map-style dataset: item ``i`` is the ``i``-th training sample of the run (seeded by ``i``).

    ``augmentation(case, start, seed)`` returns the augmented patch at ``start`` (see
    :mod:`training.augmentation`); without one the patch is cropped as it is.
    """

    def __init__(self, cases: List[CachedCase], config: TrainConfig, augmentation=None, seed_offset: int = 0):
        self.cases = cases
        self.config = config
        self.augmentation = augmentation
        self.seed_offset = seed_offset

    def __len__(self) -> int:
        return 2 ** 62

    def __getitem__(self, index: int) -> Dict[str, torch.Tensor]:
        rng = sample_rng(self.config.seed, self.seed_offset, index)
        case = self.cases[int(rng.integers(len(self.cases)))]
        start = patch_start(case, self.config.tile_size, rng, self.config.foreground_fraction)
        if self.augmentation is not None:
            images, labels = self.augmentation(case, start, int(rng.integers(2 ** 31)))
        else:
            images, labels = crop(case, start, self.config.tile_size)
        regions = regions_from_labels(labels).astype(np.float32)
        return {"images": torch.from_numpy(np.ascontiguousarray(images)),
                "regions": torch.from_numpy(regions)}


class IndexSampler(torch.utils.data.Sampler):
    """Yields sample indices for iterations ``start..end`` of one rank (resumable, worker-independent)."""

    def __init__(self, start_iteration: int, end_iteration: int, batch_size: int, rank: int, world_size: int):
        self.start, self.end = start_iteration, end_iteration
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size

    def __iter__(self):
        for iteration in range(self.start, self.end):
            base = (iteration * self.world_size + self.rank) * self.batch_size
            yield from range(base, base + self.batch_size)

    def __len__(self) -> int:
        return (self.end - self.start) * self.batch_size


def training_loader(cases: List[CachedCase], config: TrainConfig, augmentation, start_iteration: int, rank: int = 0,
                    world_size: int = 1, pin_memory: bool = False) -> DataLoader:
    """Batches for iterations ``start_iteration..config.iterations`` of one rank, loaded by
    ``config.num_workers`` processes, at most one per CPU (``pin_memory`` for fast copies to a GPU).

    ``config.batch_size`` is the global batch: each of ``world_size`` ranks loads its share, and
    together they draw the samples one process with the whole batch would draw.
    """
    from .distributed import rank_batch_size

    workers = min(config.num_workers, os.cpu_count() or 1)
    batch = rank_batch_size(config.batch_size, world_size)
    dataset = PatchDataset(cases, config, augmentation)
    return DataLoader(dataset, batch_size=batch,
                      sampler=IndexSampler(start_iteration, config.iterations, batch, rank, world_size),
                      num_workers=workers, persistent_workers=False, pin_memory=pin_memory)
