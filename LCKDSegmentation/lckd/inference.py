"""Sliding-window inference with missing-sequence fill (method.md section 7).

MONAI's sliding-window inferer tiles the brain-cropped case with the model's tile size and an
overlap of 1/3 and averages the tiles' sigmoid probabilities (constant weights). Absent sequences
are zero tiles whatever the tile's position, so their encoder outputs are computed once per case
and reused for every tile ("absent-sequence reuse"); :func:`sliding_window_probabilities` with
``reuse_absent=False`` is the plain path that encodes every channel of every tile.
"""

from __future__ import annotations

import itertools
import math
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from monai.inferers import sliding_window_inference

from .ensemble import NetworkEnsemble, networks_of
from .errors import InputError
from .network import LCKDNet

OVERLAP = 1.0 / 3.0
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def resolve_device(requested: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available, else the CPU; ``cuda`` without a GPU is an error."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {requested}: no CUDA GPU is available here (use --device cpu or auto)")
    return torch.device(requested)


def inference_dtype(device: torch.device, precision: str = "auto") -> torch.dtype:
    """The dtype the network computes in: ``auto`` is bf16 on a CPU with native bf16 (AVX-512-BF16
    or AMX; agreement with fp32 in Resources/Docs/Benchmarks.md), else float32 (on a GPU, float32
    convolutions already run on TF32 tensor cores and bf16 measured no faster)."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    if precision == "auto":
        precision = "bf16" if device.type == "cpu" and cpu_has_native_bf16() else "fp32"
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def cpu_has_native_bf16() -> bool:
    """Whether the CPU computes bf16 natively (AVX-512-BF16 or AMX); torch emulates it otherwise."""
    return bool(getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)() or cpu_has_amx())


def cpu_has_amx() -> bool:
    """Whether the CPU has AMX tile units (bf16 matrix multiplication; Intel Xeon since Sapphire Rapids)."""
    return bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())


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
    probabilities that method.md section 7 prescribes. Tiles are cast to the model's dtype and
    layout (see :meth:`LCKDNet.freeze_for_inference`).

    Only the present sequences are encoded per tile. Each decoder skip's 1x1 convolution is linear
    in the concatenated sequences' features, so it is computed as a sum of per-sequence parts: this
    avoids concatenating channels-last features (a copy of each skip), and with ``reuse_absent``
    the absent sequences' part is computed once per tile shape, since their input is an all-zero
    tile whatever its position. The result equals the plain path (``reuse_absent=False``: the
    model's own forward on every channel) up to float rounding (tested).
    """

    def __init__(self, model: LCKDNet, present: Sequence[bool], reuse_absent: bool,
                 on_tile: Optional[Callable[[int], None]] = None) -> None:
        self.model = model
        self.present = [bool(p) for p in present]
        self.reuse_absent = reuse_absent
        self.on_tile = on_tile
        first = next(model.parameters())
        self.dtype, self.device = first.dtype, first.device
        self.memory_format = model.memory_format
        self._absent_parts: Dict[Tuple[int, ...], List[Optional[torch.Tensor]]] = {}
        self._skip_weights: List[List[torch.Tensor]] = []

    def _weights(self, channels: Sequence[int]) -> List[List[torch.Tensor]]:
        """Per decoder level: each sequence's slice of the skip convolution's weight."""
        if not self._skip_weights:
            for skip, c in zip(self.model.decoder.skip, channels):
                weight = skip[0].effective_weight()
                self._skip_weights.append([weight[:, s * c:(s + 1) * c] for s in range(len(self.present))])
        return self._skip_weights

    def _absent_projections(self, shape: Tuple[int, ...]) -> List[Optional[torch.Tensor]]:
        """The absent sequences' share of every skip convolution for this tile shape (computed once)."""
        if shape not in self._absent_parts:
            absent = [s for s, p in enumerate(self.present) if not p]
            if not absent:
                self._absent_parts[shape] = [None] * len(self.model.decoder.skip)
            else:
                zero = torch.zeros((1, 1) + shape, dtype=self.dtype, device=self.device)
                features = list(reversed(self.model.encoder(zero.contiguous(memory_format=self.memory_format))[0]))
                weights = self._weights([f.shape[1] for f in features])
                self._absent_parts[shape] = [
                    _convolve(skip[0], feature, sum(slices[s] for s in absent), bias=False)
                    for skip, feature, slices in zip(self.model.decoder.skip, features, weights)]
        return self._absent_parts[shape]

    def __call__(self, tiles: torch.Tensor) -> torch.Tensor:
        tiles = tiles.to(dtype=self.dtype)
        if not self.reuse_absent:
            logits = self.model(tiles.contiguous(memory_format=self.memory_format), self.present)
        else:
            logits = self._decomposed(tiles)
        if self.on_tile is not None:
            self.on_tile(tiles.shape[0])
        return torch.sigmoid(logits.float())

    def _decomposed(self, tiles: torch.Tensor) -> torch.Tensor:
        n, s = tiles.shape[:2]
        index = [i for i, p in enumerate(self.present) if p]
        k = len(index)
        inputs = tiles[:, index].reshape(n * k, 1, *tiles.shape[2:]).contiguous(memory_format=self.memory_format)
        skips_p, bottleneck_p = self.model.encoder(inputs)
        features = list(reversed(skips_p))
        weights = self._weights([f.shape[1] for f in features])
        projected = []
        for skip, feature, slices, absent_part in zip(self.model.decoder.skip, features, weights,
                                                       self._absent_projections(tuple(tiles.shape[2:]))):
            per_sequence = feature.unflatten(0, (n, k))
            out = _convolve(skip[0], per_sequence[:, 0], slices[index[0]], bias=True)
            for j in range(1, k):
                out += _convolve(skip[0], per_sequence[:, j], slices[index[j]], bias=False)
            projected.append(out if absent_part is None else out + absent_part)
        bottlenecks = bottleneck_p.new_zeros((n, s) + tuple(bottleneck_p.shape[1:]))
        bottlenecks[:, index] = bottleneck_p.unflatten(0, (n, k))
        mask = self.model.presence_tensor(self.present, n, tiles.device)
        fused = self.model.fill_missing(bottlenecks, mask).flatten(1, 2).contiguous(memory_format=self.memory_format)
        return self.model.decoder.decode_projected(fused, projected)


class EnsemblePredictor:
    """Callable for MONAI: the mean of several networks' :class:`TilePredictor` probabilities for
    the same tiles (a :class:`lckd.ensemble.NetworkEnsemble`); ``on_tile`` counts each batch once.

    With ``separate`` it returns every network's probabilities instead, network ``k``'s regions in
    channels ``3k`` to ``3k + 2``, so that MONAI blends each network on its own (for the members'
    spread, :mod:`lckd.uncertainty`).
    """

    def __init__(self, predictors: Sequence[TilePredictor], on_tile: Optional[Callable[[int], None]] = None,
                 separate: bool = False) -> None:
        self.predictors = list(predictors)
        self.on_tile = on_tile
        self.separate = separate

    def __call__(self, tiles: torch.Tensor) -> torch.Tensor:
        if self.separate:
            result = torch.cat([predictor(tiles) for predictor in self.predictors], dim=1)
        else:
            result = self.predictors[0](tiles)
            for predictor in self.predictors[1:]:
                result.add_(predictor(tiles))
            result.div_(len(self.predictors))
        if self.on_tile is not None:
            self.on_tile(tiles.shape[0])
        return result


def _convolve(conv: torch.nn.Conv3d, x: torch.Tensor, weight: torch.Tensor, bias: bool) -> torch.Tensor:
    """``conv``'s convolution with another weight (a slice of its own), with or without its bias."""
    return F.conv3d(x, weight, conv.bias if bias else None, conv.stride, conv.padding, conv.dilation, conv.groups)


def mirror_flips(mirror_axes: Sequence[int]) -> List[Tuple[int, ...]]:
    """Every combination of the axes in ``mirror_axes`` (network axes 0-2), the empty one first:
    the flips test-time mirroring averages over (nnU-Net's mirroring: 2^k passes)."""
    axes = sorted(set(int(a) for a in mirror_axes))
    return [combination for k in range(len(axes) + 1) for combination in itertools.combinations(axes, k)]


@torch.no_grad()
def sliding_window_probabilities(model: LCKDNet | NetworkEnsemble, images: torch.Tensor, present: Sequence[bool],
                                 tile_size: Sequence[int], overlap: float = OVERLAP, sw_batch_size: int = 1,
                                 reuse_absent: bool = True,
                                 on_tile: Optional[Callable[[int], None]] = None,
                                 mirror_axes: Sequence[int] = (),
                                 on_member: Optional[Callable[[torch.Tensor], None]] = None) -> torch.Tensor:
    """Region probabilities ``(3, Z, Y, X)`` (float32, on the images' device) for ``images``
    ``(4, Z, Y, X)`` (absent channels may hold anything: they are zeroed). The network computes
    in its own dtype and layout (see :meth:`LCKDNet.freeze_for_inference`).

    With ``mirror_axes`` the probabilities are the average over the case mirrored along every
    combination of those axes (:func:`mirror_flips`), each flipped back: test-time mirroring, as
    nnU-Net does, for a network trained with random flips along them. An ensemble's probabilities
    are its networks' mean (:class:`EnsemblePredictor`). ``on_tile(n)`` is called after every batch
    of ``n`` tiles, for progress reporting (each pass visits every tile).

    ``on_member(probabilities)``, if given, receives each averaged member's own ``(3, Z, Y, X)``
    probabilities, flipped back: every network on every mirror image, mirror image by mirror image
    (for :mod:`lckd.uncertainty`; the same passes, no more). The ensemble's networks are then
    blended one by one before they are averaged, which equals averaging per tile up to float rounding.
    """
    device = images.device
    mask = torch.tensor(present, dtype=images.dtype, device=device).view(-1, 1, 1, 1)
    batch = (images * mask).unsqueeze(0)
    networks = networks_of(model)
    predictor = TilePredictor(networks[0], present, reuse_absent, on_tile) if len(networks) == 1 else \
        EnsemblePredictor([TilePredictor(network, present, reuse_absent) for network in networks], on_tile,
                          separate=on_member is not None)
    flips = mirror_flips(mirror_axes)
    total = None
    for flip in flips:
        dims = [axis + 2 for axis in flip]
        probabilities = sliding_window_inference(batch.flip(dims) if dims else batch,
                                                 roi_size=tuple(int(t) for t in tile_size),
                                                 sw_batch_size=sw_batch_size, predictor=predictor, overlap=overlap,
                                                 mode="constant", padding_mode="constant", cval=0.0).float()[0]
        probabilities = probabilities.flip([d - 1 for d in dims]) if dims else probabilities
        if on_member is not None:
            members = probabilities.unflatten(0, (len(networks), -1))
            for member in members:
                on_member(member)
            probabilities = members.mean(dim=0)  # a new tensor: what on_member kept stays as it was
        total = probabilities if total is None else total.add_(probabilities)
    return total / len(flips) if len(flips) > 1 else total
