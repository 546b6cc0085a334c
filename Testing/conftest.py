"""Shared fixtures: a `tiny` model file and small synthetic volumes written as real NIfTI files."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Dict

import nibabel as nib
import numpy as np
import pytest
import torch

from lckd.model_file import ModelCard, save_model
from lckd.network import PRESETS, LCKDNet

# Two workers share the 2-core CI machine: one torch thread each keeps them from fighting.
torch.set_num_threads(int(os.environ.get("LCKD_TEST_THREADS", "1")))

TINY_TILE = [32, 64, 64]


def make_tiny_model_file(path: Path, seed: int = 0, spacing_mm=(2.0, 2.0, 2.0), **card_fields) -> Path:
    """Save a randomly initialised `tiny` network as a model file."""
    torch.manual_seed(seed)
    model = LCKDNet(PRESETS["tiny"])
    card = ModelCard(preset="tiny", network=model.config.to_dict(), tile_size=list(TINY_TILE),
                     spacing_mm=list(spacing_mm), name="tiny-test", **card_fields)
    return save_model(path, model, card)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return make_tiny_model_file(tmp_path_factory.mktemp("model") / "tiny.safetensors")


def world_blob(world: np.ndarray, centre, radius: float) -> np.ndarray:
    """Smooth ball intensity at world points ``(..., 3)`` (1 inside, falling off over ~2 mm)."""
    distance = np.linalg.norm(world - np.asarray(centre, dtype=float), axis=-1)
    return 1.0 / (1.0 + np.exp((distance - radius) / 1.0))


def world_coordinates(shape, affine) -> np.ndarray:
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1).astype(float)
    return ijk @ affine[:3, :3].T + affine[:3, 3]


def synthetic_head(shape, affine, seed: int = 0, blob_centre=(10.0, -5.0, 8.0)) -> np.ndarray:
    """A 'head' in world space: a brain ellipsoid (zero outside) with a bright lesion blob."""
    world = world_coordinates(shape, affine)
    brain = ((world / np.array([45.0, 55.0, 40.0])) ** 2).sum(axis=-1) < 1.0
    rng = np.random.default_rng(seed)
    image = (100.0 + 400.0 * world_blob(world, blob_centre, 8.0) + rng.normal(0, 5, shape)) * brain
    return image.astype(np.float32)


@pytest.fixture
def write_case(tmp_path) -> Callable[..., Dict[str, Path]]:
    """Write NIfTI files for the given sequences on one grid; returns {sequence: path}."""

    def write(sequences=("flair", "t1", "t1ce", "t2"), shape=(50, 56, 44), affine=None, folder=None, seed=0):
        affine = np.array(affine if affine is not None else
                          [[2.0, 0, 0, -50], [0, 2.0, 0, -56], [0, 0, 2.0, -44], [0, 0, 0, 1]])
        folder = Path(folder or tmp_path)
        folder.mkdir(parents=True, exist_ok=True)
        paths = {}
        for index, name in enumerate(sequences):
            data = synthetic_head(shape, affine, seed=seed + index)
            paths[name] = folder / f"{name}.nii.gz"
            nib.save(nib.Nifti1Image(data, affine), str(paths[name]))
        return paths

    return write
