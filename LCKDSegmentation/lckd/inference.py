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
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from monai.inferers import sliding_window_inference

from .errors import InputError
from .network import LCKDNet

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

    With ``reuse_absent``, absent sequences cost nothing per tile: their input is an all-zero tile
    whatever its position, so their encoder features are computed once per tile shape, and so is
    their share of each decoder skip's 1x1 convolution (linear in the concatenated sequences'
    features). Per tile only the present sequences are encoded and convolved; the result equals the
    plain path up to float rounding (tested).
    """

    def __init__(self, model: LCKDNet, present: Sequence[bool], reuse_absent: bool,
                 on_tile: Optional[Callable[[int], None]] = None) -> None:
        self.model = model
        self.present = [bool(p) for p in present]
        self.reuse_absent = reuse_absent and not all(self.present)
        self.on_tile = on_tile
        self._absent_parts: Dict[Tuple[int, ...], List[torch.Tensor]] = {}
        self._skip_weights: List[Tuple[torch.Tensor, torch.Tensor]] = []

    def _weights(self, channels: Sequence[int]) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        """Per decoder level: (present sequences' weight slices, sum of the absent ones' slices)."""
        if not self._skip_weights:
            for skip, c in zip(self.model.decoder.skip, channels):
                weight = skip[0].effective_weight()
                parts = [weight[:, s * c:(s + 1) * c] for s in range(len(self.present))]
                present = torch.cat([w for w, p in zip(parts, self.present) if p], dim=1)
                absent = torch.stack([w for w, p in zip(parts, self.present) if not p]).sum(dim=0)
                self._skip_weights.append((present, absent))
        return self._skip_weights

    def _absent_projections(self, tile: torch.Tensor) -> List[torch.Tensor]:
        """The absent sequences' share of every skip convolution for this tile shape (computed once)."""
        key = tuple(tile.shape[2:])
        if key not in self._absent_parts:
            zero = torch.zeros((1, 1) + key, dtype=tile.dtype, device=tile.device)
            features = list(reversed(self.model.encoder(zero)[0]))
            weights = self._weights([f.shape[1] for f in features])
            self._absent_parts[key] = [_convolve(skip[0], feature, absent, bias=False) for skip, feature, (_, absent)
                                       in zip(self.model.decoder.skip, features, weights)]
        return self._absent_parts[key]

    def __call__(self, tiles: torch.Tensor) -> torch.Tensor:
        n, s = tiles.shape[:2]
        if not self.reuse_absent:
            logits = self.model(tiles, self.present)
        else:
            index = [i for i, p in enumerate(self.present) if p]
            skips_p, bottleneck_p = self.model.encoder(tiles[:, index].reshape(n * len(index), 1, *tiles.shape[2:]))
            features = list(reversed(skips_p))
            absent_parts = self._absent_projections(tiles)
            projected = []
            for skip, feature, (present_weight, _), absent_part in zip(
                    self.model.decoder.skip, features, self._weights([f.shape[1] for f in features]), absent_parts):
                stacked = feature.reshape(n, len(index) * feature.shape[1], *feature.shape[2:])
                projected.append(_convolve(skip[0], stacked, present_weight, bias=True) + absent_part)
            bottlenecks = bottleneck_p.new_zeros((n, s) + tuple(bottleneck_p.shape[1:]))
            bottlenecks[:, index] = bottleneck_p.reshape(n, len(index), *bottleneck_p.shape[1:])
            mask = self.model.presence_tensor(self.present, n, tiles.device)
            fused = self.model.fill_missing(bottlenecks, mask).flatten(1, 2)
            logits = self.model.decoder.decode_projected(fused, projected)
        if self.on_tile is not None:
            self.on_tile(n)
        return torch.sigmoid(logits.float())


def _convolve(conv: torch.nn.Conv3d, x: torch.Tensor, weight: torch.Tensor, bias: bool) -> torch.Tensor:
    """``conv``'s convolution with another weight (a slice of its own), with or without its bias."""
    return F.conv3d(x, weight, conv.bias if bias else None, conv.stride, conv.padding, conv.dilation, conv.groups)


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
