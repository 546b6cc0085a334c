"""The LCKD / MetaKD segmentation network (method.md section 2).

One single-channel encoder (a 3-D ResNet with an ASPP head) is shared by the four sequences.
Absent sequences are fed as zeros; their skip features are used as they come out of the
encoder, while their bottleneck (the ASPP output) is replaced by the mean of the bottlenecks of
the sequences that are present. The four bottlenecks are concatenated and decoded by a U-Net
style decoder whose skips are the four sequences' features concatenated and projected.

The architecture is set by :class:`NetworkConfig`; named presets live in :data:`PRESETS` and the
chosen configuration travels with the weights in the model card.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .sequences import REGIONS, SEQUENCES

Tensor = torch.Tensor


@dataclass(frozen=True)
class NetworkConfig:
    """Widths and depths of the network; ``paper`` reproduces the published model."""

    stem_channels: int = 64
    stage_widths: Tuple[int, ...] = (64, 128, 256, 320)
    stage_blocks: Tuple[int, ...] = (3, 4, 6, 3)
    expansion: int = 4
    bottleneck_channels: int = 256
    decoder_widths: Tuple[int, ...] = (256, 128, 64, 32)
    aspp_dilations: Tuple[int, ...] = (2, 4, 8)

    def to_dict(self) -> Dict[str, object]:
        return {key: list(value) if isinstance(value, tuple) else value
                for key, value in asdict(self).items()}

    @classmethod
    def from_dict(cls, values: Dict[str, object]) -> NetworkConfig:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown network setting(s): {', '.join(sorted(unknown))}")
        return cls(**{key: tuple(value) if isinstance(value, list) else value
                      for key, value in values.items()})

    @property
    def downsampling(self) -> Tuple[int, int, int]:
        """Total down-sampling factor along (D, H, W): tiles must be multiples of it."""
        factor = 2 ** len(self.stage_widths)  # max-pool + stride-2 stages 2..n
        return (factor, 2 * factor, 2 * factor)


PRESETS: Dict[str, NetworkConfig] = {
    "paper": NetworkConfig(),
    "small": NetworkConfig(stem_channels=16, stage_widths=(16, 32, 48, 64), stage_blocks=(1, 1, 1, 1),
                           bottleneck_channels=64, decoder_widths=(64, 48, 32, 16)),
    # twice the `small` widths, for GPU training; inference on a 2 mm case about 1 s on 2 CPU cores (bf16, 64x96x96)
    "medium": NetworkConfig(stem_channels=32, stage_widths=(32, 64, 96, 128), stage_blocks=(1, 1, 1, 1),
                            bottleneck_channels=128, decoder_widths=(128, 96, 64, 32)),
    "demo": NetworkConfig(stem_channels=16, stage_widths=(8, 16, 32, 32), stage_blocks=(1, 1, 1, 1),
                          expansion=2, bottleneck_channels=32, decoder_widths=(32, 24, 16, 16)),
    "tiny": NetworkConfig(stem_channels=8, stage_widths=(4, 8, 8, 8), stage_blocks=(1, 1, 1, 1),
                          expansion=2, bottleneck_channels=16, decoder_widths=(16, 8, 8, 8)),
}


def network_config(preset: str) -> NetworkConfig:
    """The :class:`NetworkConfig` of a named preset."""
    try:
        return PRESETS[preset]
    except KeyError:
        raise ValueError(f"unknown network preset {preset!r}; choose from {', '.join(PRESETS)}") from None


class WSConv3d(nn.Conv3d):
    """Conv3d with weight standardisation (zero mean, unit variance per output filter).

    ``freeze_standardisation`` stores the standardised weight once, for inference: the forward
    result is unchanged and the per-call normalisation cost disappears.
    """

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("bias", False)
        super().__init__(*args, **kwargs)
        self.standardise = True

    def standardised_weight(self) -> Tensor:
        weight = self.weight - self.weight.mean(dim=(1, 2, 3, 4), keepdim=True)
        return weight / torch.sqrt(weight.flatten(1).var(dim=1) + 1e-12).view(-1, 1, 1, 1, 1)

    def effective_weight(self) -> Tensor:
        """The weight the convolution applies (standardised unless frozen, where it already is)."""
        return self.standardised_weight() if self.standardise else self.weight

    def forward(self, x: Tensor) -> Tensor:
        return F.conv3d(x, self.effective_weight(), self.bias, self.stride, self.padding, self.dilation, self.groups)

    @torch.no_grad()
    def freeze_standardisation(self) -> None:
        if self.standardise:
            self.weight.copy_(self.standardised_weight())
            self.standardise = False


def norm(channels: int) -> nn.Module:
    return nn.InstanceNorm3d(channels, affine=True)


def act() -> nn.Module:
    return nn.LeakyReLU(0.01, inplace=True)


def conv_norm_act(c_in: int, c_out: int, kernel: int = 1, dilation: int = 1) -> nn.Sequential:
    padding = dilation * (kernel // 2)
    return nn.Sequential(WSConv3d(c_in, c_out, kernel, padding=padding, dilation=dilation), norm(c_out), act())


class Bottleneck(nn.Module):
    """ResNet bottleneck: 1x1 reduce, 3x3 (strided), 1x1 expand, projected shortcut."""

    def __init__(self, c_in: int, width: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = WSConv3d(c_in, width, 1)
        self.norm1 = norm(width)
        self.conv2 = WSConv3d(width, width, 3, stride=stride, padding=1)
        self.norm2 = norm(width)
        self.conv3 = WSConv3d(width, c_out, 1)
        self.norm3 = norm(c_out)
        self.act = act()
        self.shortcut: Optional[nn.Module] = None
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(WSConv3d(c_in, c_out, 1, stride=stride), norm(c_out))

    def forward(self, x: Tensor) -> Tensor:
        out = self.act(self.norm1(self.conv1(x)))
        out = self.act(self.norm2(self.conv2(out)))
        out = self.norm3(self.conv3(out))
        residual = x if self.shortcut is None else self.shortcut(x)
        return self.act(out + residual)


class ResidualBlock(nn.Module):
    """Decoder block: two 3x3 conv-norm layers with an identity shortcut."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = WSConv3d(channels, channels, 3, padding=1)
        self.norm1 = norm(channels)
        self.conv2 = WSConv3d(channels, channels, 3, padding=1)
        self.norm2 = norm(channels)
        self.act = act()

    def forward(self, x: Tensor) -> Tensor:
        out = self.act(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return self.act(out + x)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling to the bottleneck width.

    Fix (method.md section 2): the released code instance-normalises the 1x1x1 global-pool
    branch, which is constant in old torch and an error in new torch. Here that branch is
    1x1 conv + LeakyReLU without a norm, so it runs with batch size 1 on unmodified torch.
    In both forms the branch is a no-op: its output is constant over the tile, and the
    InstanceNorm of ``project`` removes any spatially constant input (removing the branch changes
    the logits by about 5e-14). It is kept for the released parameter layout and count.
    """

    def __init__(self, c_in: int, channels: int, dilations: Sequence[int]) -> None:
        super().__init__()
        self.reduce = conv_norm_act(c_in, channels, 1)
        self.branches = nn.ModuleList(
            [conv_norm_act(channels, channels, 1)] + [conv_norm_act(channels, channels, 3, d) for d in dilations])
        self.pool_branch = nn.Sequential(WSConv3d(channels, channels, 1), act())
        self.project = conv_norm_act(channels * (len(dilations) + 2), channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.reduce(x)
        pooled = self.pool_branch(x.mean(dim=(2, 3, 4), keepdim=True)).expand(-1, -1, *x.shape[2:])
        return self.project(torch.cat([branch(x) for branch in self.branches] + [pooled], dim=1))


class Encoder(nn.Module):
    """Single-channel 3-D ResNet + ASPP. Returns the skip features and the bottleneck."""

    def __init__(self, config: NetworkConfig) -> None:
        super().__init__()
        stem = config.stem_channels
        self.stem = nn.Sequential(WSConv3d(1, stem, 7, stride=(1, 2, 2), padding=3), norm(stem), act())
        self.pool = nn.MaxPool3d(3, stride=2, padding=1)
        stages = []
        c_in = stem
        for index, (width, blocks) in enumerate(zip(config.stage_widths, config.stage_blocks)):
            c_out = width * config.expansion
            stride = 1 if index == 0 else 2
            layers = [Bottleneck(c_in if i == 0 else c_out, width, c_out, stride if i == 0 else 1)
                      for i in range(blocks)]
            stages.append(nn.Sequential(*layers))
            c_in = c_out
        self.stages = nn.ModuleList(stages)
        self.aspp = ASPP(c_in, config.bottleneck_channels, config.aspp_dilations)

    def skip_channels(self, config: NetworkConfig) -> List[int]:
        """Channels of the skips, shallowest first (stem, stage 1 .. stage n-1)."""
        return [config.stem_channels] + [w * config.expansion for w in config.stage_widths[:-1]]

    def forward(self, x: Tensor) -> Tuple[List[Tensor], Tensor]:
        x = self.stem(x)
        skips = [x]
        x = self.pool(x)
        for stage in self.stages:
            x = stage(x)
            skips.append(x)
        return skips[:-1], self.aspp(skips[-1])


class Decoder(nn.Module):
    """Transposed-conv up-stages with projected multi-sequence skips added, then a residual block."""

    def __init__(self, config: NetworkConfig, skip_channels: Sequence[int], n_sequences: int) -> None:
        super().__init__()
        widths = config.decoder_widths
        if len(widths) != len(skip_channels):
            raise ValueError("decoder_widths needs one width per encoder skip")
        c_in = config.bottleneck_channels * n_sequences
        self.up = nn.ModuleList()
        self.skip = nn.ModuleList()
        self.blocks = nn.ModuleList()
        for width, skip_c in zip(widths, reversed(list(skip_channels))):
            self.up.append(nn.ConvTranspose3d(c_in, width, 2, stride=2, bias=False))
            self.skip.append(conv_norm_act(skip_c * n_sequences, width, 1))
            self.blocks.append(ResidualBlock(width))
            c_in = width
        self.head = nn.Conv3d(c_in, len(REGIONS), 1, bias=False)

    def forward(self, fused: Tensor, skips: Sequence[Tensor]) -> Tensor:
        projected = [skip[0](feature) for skip, feature in zip(self.skip, reversed(list(skips)))]
        return self.decode_projected(fused, projected)

    def decode_projected(self, fused: Tensor, projected: Sequence[Tensor]) -> Tensor:
        """Logits from the fused bottleneck and each skip's 1x1 convolution output (before its norm
        and activation), deepest level first. The convolution is linear in the sequences' features,
        so a caller may sum per-sequence parts (see :class:`lckd.inference.TilePredictor`)."""
        x = fused
        for up, skip, block, conv_out in zip(self.up, self.skip, self.blocks, projected):
            x = block(up(x) + skip[1:](conv_out))
        # 3 channels: trilinear upsampling ran 2.7x faster contiguous than channels-last (CPU, bf16)
        logits = self.head(x).contiguous()
        return F.interpolate(logits, scale_factor=(1, 2, 2), mode="trilinear", align_corners=False)


@dataclass
class Encoded:
    """Per-sequence encoder outputs for a batch: ``skips[level]`` is ``(N, S, C, D, H, W)``."""

    skips: List[Tensor]
    bottlenecks: Tensor  # (N, S, C, d, h, w), before missing-sequence fill
    present: Tensor  # (N, S) bool


class LCKDNet(nn.Module):
    """Shared-encoder network for any subset of the four MRI sequences."""

    def __init__(self, config: NetworkConfig = NetworkConfig()) -> None:
        super().__init__()
        self.config = config
        self.n_sequences = len(SEQUENCES)
        #: layout the inputs should have (channels-last after ``freeze_for_inference(channels_last=True)``)
        self.memory_format = torch.contiguous_format
        self.encoder = Encoder(config)
        self.decoder = Decoder(config, self.encoder.skip_channels(config), self.n_sequences)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, (nn.Conv3d, nn.ConvTranspose3d)):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="leaky_relu")

    @staticmethod
    def presence_tensor(present: Sequence[bool] | Tensor, batch: int, device: torch.device) -> Tensor:
        """Normalise a presence mask to a ``(N, 4)`` bool tensor; every row needs one sequence."""
        mask = torch.as_tensor(present, dtype=torch.bool, device=device)
        if mask.dim() == 1:
            mask = mask.unsqueeze(0).expand(batch, -1)
        if mask.shape != (batch, len(SEQUENCES)):
            raise ValueError(f"presence mask must have shape ({batch}, {len(SEQUENCES)}), got {tuple(mask.shape)}")
        if not bool(mask.any(dim=1).all()):
            raise ValueError("every sample needs at least one present sequence")
        return mask

    def encode(self, images: Tensor, present: Sequence[bool] | Tensor) -> Encoded:
        """Encode every sequence of ``images`` ``(N, 4, D, H, W)``; absent channels are zeroed."""
        n, s = images.shape[:2]
        mask = self.presence_tensor(present, n, images.device)
        images = images * mask.view(n, s, 1, 1, 1).to(images.dtype)
        skips, bottleneck = self.encoder(images.reshape(n * s, 1, *images.shape[2:]))
        return Encoded(skips=[f.reshape(n, s, *f.shape[1:]) for f in skips],
                       bottlenecks=bottleneck.reshape(n, s, *bottleneck.shape[1:]), present=mask)

    @staticmethod
    def fill_missing(bottlenecks: Tensor, present: Tensor) -> Tensor:
        """Replace absent sequences' bottlenecks by the mean of the present ones."""
        weights = present.to(bottlenecks.dtype).view(*present.shape, 1, 1, 1, 1)
        mean = (bottlenecks * weights).sum(dim=1, keepdim=True) / weights.sum(dim=1, keepdim=True)
        return torch.where(weights.bool(), bottlenecks, mean)

    def decode(self, encoded: Encoded, bottlenecks: Optional[Tensor] = None) -> Tensor:
        """Logits ``(N, 3, D, H, W)`` from encoder outputs; ``bottlenecks`` overrides the fill."""
        if bottlenecks is None:
            bottlenecks = self.fill_missing(encoded.bottlenecks, encoded.present)
        fused = bottlenecks.flatten(1, 2)
        return self.decoder(fused, [f.flatten(1, 2) for f in encoded.skips])

    def forward(self, images: Tensor, present: Sequence[bool] | Tensor = (True, True, True, True)) -> Tensor:
        return self.decode(self.encode(images, present))

    def freeze_for_inference(self, dtype: torch.dtype = torch.float32, channels_last: bool = False) -> LCKDNet:
        """Same outputs (up to ``dtype`` rounding), less work per call; sets eval mode. Not for
        training or saving.

        Weight standardisation is computed once, every InstanceNorm3d becomes the identical
        :class:`InferenceNorm`, the parameters are cast to ``dtype`` (bf16 on a CPU with native bf16
        avoids autocast's per-layer cast copies) and, with ``channels_last``, stored channels-last,
        the layout in which oneDNN's CPU convolutions are fastest, with the single-channel stem as
        an identical convolution with more input channels: :class:`PhaseSplitConv` in reduced
        precision, :class:`WidthUnfoldConv` in float32 (Resources/Docs/Benchmarks.md).
        """
        for module in self.modules():
            if isinstance(module, WSConv3d):
                module.freeze_standardisation()
            for name, child in list(module.named_children()):
                if isinstance(child, nn.InstanceNorm3d):
                    setattr(module, name, InferenceNorm.from_instance_norm(child))
        self.to(dtype=dtype)
        if channels_last:
            self.memory_format = torch.channels_last_3d
            self.to(memory_format=self.memory_format)
            stem_form = PhaseSplitConv if dtype != torch.float32 else WidthUnfoldConv
            self.encoder.stem[0] = stem_form(self.encoder.stem[0])
        return self.eval()


class PhaseSplitConv(nn.Module):
    """A single-channel convolution with stride (1, 2, 2) computed as the identical stride-1
    convolution of the input's four (H, W) phases (space-to-depth), for the stem at inference.

    With one input channel oneDNN's strided bf16 kernel reached 200 GFLOP/s on a paper tile; the
    four-channel form computes 30 % more products (the 7-tap kernel padded to 8) yet took 0.28
    against 0.42 s in bf16 (the stem block of a tile, norm and activation included: 0.32 against
    0.44 s). In float32 it was slower (0.54 against 0.45 s), so only reduced precision uses it.
    """

    def __init__(self, conv: nn.Conv3d) -> None:
        super().__init__()
        if conv.in_channels != 1 or tuple(conv.stride) != (1, 2, 2) or conv.groups != 1 or conv.bias is not None:
            raise ValueError("PhaseSplitConv takes a single-channel, bias-free convolution with stride (1, 2, 2)")
        self.padding = tuple(conv.padding)
        kernel = conv.weight.detach()
        out, _, kd, kh, kw = kernel.shape
        kernel = F.pad(kernel, (0, kw % 2, 0, kh % 2))  # even kernel height and width
        phases = kernel.reshape(out, kd, (kh + 1) // 2, 2, (kw + 1) // 2, 2).permute(0, 3, 5, 1, 2, 4)
        self.weight = nn.Parameter(phases.reshape(out, 4, kd, (kh + 1) // 2, (kw + 1) // 2).contiguous(
            memory_format=torch.channels_last_3d), requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        pd, ph, pw = self.padding
        x = F.pad(x, (pw, pw + (x.shape[4] + 2 * pw) % 2, ph, ph + (x.shape[3] + 2 * ph) % 2, pd, pd))
        n, _, d, h, w = x.shape
        phases = x.reshape(n, d, h // 2, 2, w // 2, 2).permute(0, 3, 5, 1, 2, 4).reshape(n, 4, d, h // 2, w // 2)
        return F.conv3d(phases.contiguous(memory_format=torch.channels_last_3d), self.weight)


class WidthUnfoldConv(nn.Module):
    """A single-channel convolution computed as the identical convolution of its input's kernel-width
    shifted copies (one channel per W tap, taken at the W stride), for the float32 stem at inference.

    The products are those of the original; oneDNN's float32 kernels run the 7-channel problem
    faster than the 1-channel one: the paper stem on a 4-sequence tile took 0.73-0.78 against
    1.01-1.28 s (AVX2, 2 threads; the copies 0.04 s of it), a whole tile 0.25 s less on average
    (Resources/Docs/Benchmarks.md).
    """

    def __init__(self, conv: nn.Conv3d) -> None:
        super().__init__()
        if (conv.in_channels != 1 or conv.groups != 1 or conv.bias is not None or conv.dilation[2] != 1
                or isinstance(conv.padding, str)):
            raise ValueError("WidthUnfoldConv takes a single-channel, bias-free, undilated convolution")
        self.padding = tuple(conv.padding)
        self.width_stride = conv.stride[2]
        self.stride = (conv.stride[0], conv.stride[1], 1)
        self.dilation = (conv.dilation[0], conv.dilation[1], 1)
        kernel = conv.weight.detach()  # (out, 1, kd, kh, kw) -> (out, kw, kd, kh, 1)
        self.weight = nn.Parameter(kernel[:, 0].permute(0, 3, 1, 2).unsqueeze(-1).contiguous(
            memory_format=torch.channels_last_3d), requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        pd, ph, pw = self.padding
        x = F.pad(x, (pw, pw, ph, ph, pd, pd))
        taps = self.weight.shape[1]
        span = self.width_stride * ((x.shape[4] - taps) // self.width_stride) + 1
        shifted = torch.cat([x[..., tap:tap + span:self.width_stride] for tap in range(taps)], dim=1)
        return F.conv3d(shifted.contiguous(memory_format=torch.channels_last_3d), self.weight,
                        stride=self.stride, dilation=self.dilation)


class InferenceNorm(nn.GroupNorm):
    """InstanceNorm3d as the identical GroupNorm with one group per channel, for inference.

    torch's GroupNorm CPU kernel is 13 % faster than InstanceNorm's on a contiguous paper tile.
    On channels-last inputs it is fast from 20^3 voxels up but 8-20x slower than the contiguous
    kernel below that (measured on [4, 256, 10, 10, 10] and [4, 1280, 5, 5, 5]), so small inputs
    take a contiguous detour (the copies cost less than the difference).
    """

    SMALL_SPATIAL = 4096

    @classmethod
    def from_instance_norm(cls, instance_norm: nn.InstanceNorm3d) -> InferenceNorm:
        channels = instance_norm.num_features
        norm = cls(channels, channels, eps=instance_norm.eps, affine=True)
        with torch.no_grad():
            norm.weight.copy_(instance_norm.weight)
            norm.bias.copy_(instance_norm.bias)
        return norm.to(instance_norm.weight.device)

    def forward(self, x: Tensor) -> Tensor:
        if x[0, 0].numel() <= self.SMALL_SPATIAL and not x.is_contiguous():
            out = F.group_norm(x.contiguous(), self.num_groups, self.weight, self.bias, self.eps)
            return out.contiguous(memory_format=torch.channels_last_3d)
        return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)
