"""Sliding-window inference with missing-sequence fill (method.md section 7).

MONAI's sliding-window inferer tiles the brain-cropped case with the model's tile size and an
overlap of 1/3 and averages the tiles' sigmoid probabilities (constant weights). Absent sequences
are zero tiles whatever the tile's position, so their encoder outputs are computed once per case
and reused for every tile ("absent-sequence reuse"); :func:`sliding_window_probabilities` with
``reuse_absent=False`` is the plain path that encodes every channel of every tile.
"""

from __future__ import annotations

import contextlib
import math
from typing import Callable, Dict, Iterator, Optional, Sequence, Tuple

import torch
from monai.inferers import sliding_window_inference

from .errors import InputError
from .network import Encoded, LCKDNet

OVERLAP = 1.0 / 3.0
PRECISIONS = ("fp32", "bf16", "fp16")


def resolve_device(requested: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available, else the CPU; ``cuda`` without a GPU is an error."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {requested}: no CUDA GPU is available here (use --device cpu or auto)")
    return torch.device(requested)


@contextlib.contextmanager
def autocast(device: torch.device, precision: str) -> Iterator[None]:
    """Mixed precision for ``bf16``/``fp16``; plain float32 for ``fp32``."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    if precision == "fp32":
        yield
        return
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


def count_windows(shape: Sequence[int], tile: Sequence[int], overlap: float = OVERLAP) -> int:
    """Number of tiles MONAI's sliding window visits for an image of ``shape`` (after padding)."""
    total = 1
    for size, roi in zip(shape, tile):
        size = max(size, roi)
        interval = max(int(roi * (1 - overlap)), 1)
        total *= 1 if size <= roi else math.ceil((size - roi) / interval) + 1
    return total


class TilePredictor:
    """Callable for MONAI: region probabilities for a batch of 4-channel tiles, one presence mask.

    Returning probabilities (not logits) makes MONAI's blending the plain average of sigmoid
    probabilities that method.md section 7 prescribes.
    """

    def __init__(self, model: LCKDNet, present: Sequence[bool], reuse_absent: bool,
                 on_tile: Optional[Callable[[int], None]] = None) -> None:
        self.model = model
        self.present = [bool(p) for p in present]
        self.reuse_absent = reuse_absent and not all(self.present)
        self.on_tile = on_tile
        self._absent: Dict[Tuple[int, ...], Tuple[list, torch.Tensor]] = {}

    def _absent_features(self, tile: torch.Tensor) -> Tuple[list, torch.Tensor]:
        """Encoder output of an all-zero tile of this shape (computed once, then reused)."""
        key = tuple(tile.shape[2:])
        if key not in self._absent:
            zero = torch.zeros((1, 1) + key, dtype=tile.dtype, device=tile.device)
            self._absent[key] = self.model.encoder(zero)
        return self._absent[key]

    def __call__(self, tiles: torch.Tensor) -> torch.Tensor:
        n, s = tiles.shape[:2]
        if not self.reuse_absent:
            logits = self.model(tiles, self.present)
        else:
            index = [i for i, p in enumerate(self.present) if p]
            skips_p, bottleneck_p = self.model.encoder(tiles[:, index].reshape(n * len(index), 1, *tiles.shape[2:]))
            skips_0, bottleneck_0 = self._absent_features(tiles)
            skips = []
            for level, feature in enumerate(skips_p):
                full = skips_0[level].unsqueeze(1).expand(n, s, *skips_0[level].shape[1:]).clone()
                full[:, index] = feature.reshape(n, len(index), *feature.shape[1:]).to(full.dtype)
                skips.append(full)
            bottlenecks = bottleneck_0.unsqueeze(1).expand(n, s, *bottleneck_0.shape[1:]).clone()
            bottlenecks[:, index] = bottleneck_p.reshape(n, len(index), *bottleneck_p.shape[1:]).to(bottlenecks.dtype)
            mask = self.model.presence_tensor(self.present, n, tiles.device)
            logits = self.model.decode(Encoded(skips=skips, bottlenecks=bottlenecks, present=mask))
        if self.on_tile is not None:
            self.on_tile(n)
        return torch.sigmoid(logits.float())


@torch.no_grad()
def sliding_window_probabilities(model: LCKDNet, images: torch.Tensor, present: Sequence[bool],
                                 tile_size: Sequence[int], overlap: float = OVERLAP, sw_batch_size: int = 1,
                                 reuse_absent: bool = True, precision: str = "fp32",
                                 on_tile: Optional[Callable[[int], None]] = None) -> torch.Tensor:
    """Region probabilities ``(3, Z, Y, X)`` (float32, on the images' device) for ``images``
    ``(4, Z, Y, X)`` (absent channels may hold anything: they are zeroed).

    ``on_tile(n)`` is called after every batch of ``n`` tiles, for progress reporting.
    """
    device = images.device
    mask = torch.tensor(present, dtype=images.dtype, device=device).view(-1, 1, 1, 1)
    batch = (images * mask).unsqueeze(0)
    predictor = TilePredictor(model, present, reuse_absent, on_tile)
    with autocast(device, precision):
        probabilities = sliding_window_inference(batch, roi_size=tuple(int(t) for t in tile_size),
                                          sw_batch_size=sw_batch_size, predictor=predictor, overlap=overlap,
                                          mode="constant", padding_mode="constant", cval=0.0)
    return probabilities.float()[0]
