"""Sliding-window inference: absent-sequence reuse, channels-last and bf16 against the plain path; ensembles;
tile counting; precision."""

from __future__ import annotations

import copy

import pytest
import torch

from lckd.ensemble import NetworkEnsemble
from lckd.inference import (
    count_windows,
    cpu_has_native_bf16,
    inference_dtype,
    mirror_flips,
    sliding_window_probabilities,
)
from lckd.network import PRESETS, InferenceNorm, LCKDNet
from lckd.sequences import all_subsets, presence_mask

TILE = (32, 64, 64)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return LCKDNet(PRESETS["tiny"]).freeze_for_inference()


@pytest.mark.parametrize("subset", [s for s in all_subsets() if len(s) < 4])
def test_absent_sequence_reuse_equals_plain_path(model, subset):
    torch.manual_seed(len(subset))
    images = torch.randn(4, 40, 70, 90)
    present = presence_mask(subset)
    tiles = []
    fast = sliding_window_probabilities(model, images, present, TILE, reuse_absent=True, on_tile=tiles.append)
    plain = sliding_window_probabilities(model, images, present, TILE, reuse_absent=False)
    assert (fast - plain).abs().max().item() < 1e-4
    assert sum(tiles) == count_windows(images.shape[1:], TILE)
    assert fast.shape == (3, 40, 70, 90)
    assert float(fast.min()) >= 0.0 and float(fast.max()) <= 1.0


def test_mirroring_averages_the_flipped_back_passes(model):
    assert mirror_flips([]) == [()] and mirror_flips([2]) == [(), (2,)]
    assert len(mirror_flips([2, 0, 1])) == 8 and mirror_flips([1, 0])[-1] == (0, 1)
    torch.manual_seed(5)
    images = torch.randn(4, 40, 70, 90)
    present = presence_mask(("flair", "t1ce"))
    tiles = []
    mirrored = sliding_window_probabilities(model, images, present, TILE, mirror_axes=(0, 2), on_tile=tiles.append)
    passes = [sliding_window_probabilities(model, images.flip(dims), present, TILE).flip(dims) if dims
              else sliding_window_probabilities(model, images, present, TILE) for dims in ([], [1], [3], [1, 3])]
    torch.testing.assert_close(mirrored, sum(passes) / 4, atol=1e-5, rtol=0)
    assert (mirrored - passes[0]).abs().max() > 1e-3  # the tiny random network is not symmetric
    assert sum(tiles) == 4 * count_windows(images.shape[1:], TILE)


def test_an_ensemble_averages_its_networks_probabilities(model):
    torch.manual_seed(7)
    other = LCKDNet(PRESETS["tiny"]).freeze_for_inference()
    ensemble = NetworkEnsemble([copy.deepcopy(model), other])
    images = torch.randn(4, 40, 70, 90)
    present = presence_mask(("t1", "t2"))
    tiles = []
    averaged = sliding_window_probabilities(ensemble, images, present, TILE, mirror_axes=(2,), on_tile=tiles.append)
    each = [sliding_window_probabilities(network, images, present, TILE, mirror_axes=(2,))
            for network in (model, other)]
    torch.testing.assert_close(averaged, (each[0] + each[1]) / 2, atol=1e-5, rtol=0)
    assert (each[0] - each[1]).abs().max() > 1e-2  # two different networks
    assert sum(tiles) == 2 * count_windows(images.shape[1:], TILE)  # each tile counted once, not per network
    with pytest.raises(ValueError, match="share one architecture"):
        NetworkEnsemble([model, LCKDNet(PRESETS["demo"])])
    with pytest.raises(ValueError, match="at least two"):
        NetworkEnsemble([model])


def test_count_windows_small_image_is_one_tile():
    assert count_windows((10, 20, 30), TILE) == 1
    assert count_windows((80, 160, 160), (80, 160, 160)) == 1
    # a whole BraTS case at the paper tile: 3 x 2 x 2 positions at overlap 1/3
    assert count_windows((155, 240, 240), (80, 160, 160)) == 12


@pytest.mark.parametrize("subset", [("t1ce",), ("flair", "t1", "t2"), ("flair", "t1", "t1ce", "t2")])
def test_channels_last_and_bf16_inference_match_the_plain_float32_network(subset):
    torch.manual_seed(4)
    network = LCKDNet(PRESETS["tiny"]).eval()
    images = torch.randn(4, 40, 70, 90)
    present = presence_mask(subset)
    exact = sliding_window_probabilities(copy.deepcopy(network), images, present, TILE, reuse_absent=False)
    layout = copy.deepcopy(network).freeze_for_inference(torch.float32, channels_last=True)
    assert layout.memory_format == torch.channels_last_3d and network.memory_format == torch.contiguous_format
    for reuse in (True, False):
        assert (sliding_window_probabilities(layout, images, present, TILE, reuse_absent=reuse)
                - exact).abs().max().item() < 1e-4
    mixed = sliding_window_probabilities(copy.deepcopy(network).freeze_for_inference(torch.bfloat16, True),
                                         images, present, TILE)
    assert mixed.dtype == torch.float32
    # random weights are a harsh case for bf16; the agreement on trained weights is in the benchmarks
    assert (mixed - exact).abs().mean().item() < 0.02


def test_inference_norm_takes_the_same_values_in_both_layouts():
    torch.manual_seed(5)
    source = torch.nn.InstanceNorm3d(6, affine=True)
    with torch.no_grad():
        source.weight.uniform_(0.5, 2.0)
        source.bias.uniform_(-1.0, 1.0)
    norm = InferenceNorm.from_instance_norm(source)
    for shape in [(2, 6, 3, 4, 5), (2, 6, 17, 16, 16)]:  # below and above the contiguous-detour size
        x = torch.randn(shape)
        channels_last = x.contiguous(memory_format=torch.channels_last_3d)
        with torch.no_grad():
            expected = source(x)
            torch.testing.assert_close(norm(x), expected, atol=1e-5, rtol=1e-5)
            out = norm(channels_last)
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
        assert out.is_contiguous(memory_format=torch.channels_last_3d)


def test_precision_resolution():
    cpu = torch.device("cpu")
    assert inference_dtype(cpu, "fp32") == torch.float32
    assert inference_dtype(cpu, "bf16") == torch.bfloat16
    assert inference_dtype(cpu, "auto") == (torch.bfloat16 if cpu_has_native_bf16() else torch.float32)
    assert inference_dtype(torch.device("cuda"), "auto") == torch.float32
    with pytest.raises(ValueError, match="unknown precision"):
        inference_dtype(cpu, "fp8")
