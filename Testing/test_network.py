"""The LCKD network: paper size, missing-sequence semantics, presets, batch size 1."""

from __future__ import annotations

import pytest
import torch

from lckd.network import (
    PRESETS,
    LCKDNet,
    NetworkConfig,
    PhaseSplitConv,
    WidthUnfoldConv,
    WSConv3d,
    network_config,
)

PAPER_PARAMETERS = 43_656_672


def test_paper_preset_matches_published_parameter_count():
    count = sum(p.numel() for p in LCKDNet(PRESETS["paper"]).parameters())
    assert abs(count - PAPER_PARAMETERS) / PAPER_PARAMETERS < 0.005, count


def test_paper_preset_runs_with_batch_size_one_on_unmodified_torch():
    model = LCKDNet(PRESETS["paper"]).eval()
    with torch.no_grad():
        logits = model(torch.randn(1, 4, 32, 64, 64), [True, False, False, False])
    assert logits.shape == (1, 3, 32, 64, 64)
    assert torch.isfinite(logits).all()


def test_absent_bottleneck_is_the_mean_of_present_ones():
    torch.manual_seed(0)
    model = LCKDNet(PRESETS["tiny"]).eval()
    images = torch.randn(2, 4, 32, 64, 64)
    present = torch.tensor([[True, False, True, False], [False, False, False, True]])
    captured = {}
    original = model.decoder.forward

    def capture(fused, skips):
        captured["fused"] = fused
        return original(fused, skips)

    model.decoder.forward = capture
    with torch.no_grad():
        encoded = model.encode(images, present)
        model.decode(encoded)
    width = model.config.bottleneck_channels
    fused = captured["fused"].view(2, 4, width, *captured["fused"].shape[2:])
    raw = encoded.bottlenecks
    mean0 = (raw[0, 0] + raw[0, 2]) / 2
    for absent in (1, 3):
        torch.testing.assert_close(fused[0, absent], mean0)
    torch.testing.assert_close(fused[0, 0], raw[0, 0])
    for absent in (0, 1, 2):
        torch.testing.assert_close(fused[1, absent], raw[1, 3])


def test_absent_input_channels_are_zeroed():
    torch.manual_seed(1)
    model = LCKDNet(PRESETS["tiny"]).eval()
    images = torch.randn(1, 4, 32, 64, 64)
    other = images.clone()
    other[:, 1] = 1000.0  # content of an absent sequence must not matter
    with torch.no_grad():
        a = model(images, [True, False, True, True])
        b = model(other, [True, False, True, True])
    torch.testing.assert_close(a, b)


def test_presence_mask_needs_one_sequence_per_sample():
    model = LCKDNet(PRESETS["tiny"])
    with pytest.raises(ValueError, match="at least one"):
        model(torch.zeros(1, 4, 32, 64, 64), [False, False, False, False])


def test_frozen_weight_standardisation_gives_the_same_output():
    torch.manual_seed(2)
    model = LCKDNet(PRESETS["tiny"]).eval()
    images = torch.randn(1, 4, 32, 64, 64)
    with torch.no_grad():
        before = model(images)
        after = model.freeze_for_inference()(images)
    torch.testing.assert_close(before, after, atol=1e-4, rtol=1e-4)


def test_config_round_trip_and_unknown_preset():
    for config in PRESETS.values():
        assert NetworkConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown network preset"):
        network_config("huge")
    assert PRESETS["paper"].downsampling == (16, 32, 32)


@pytest.mark.parametrize("shape", [(2, 1, 9, 16, 16), (1, 1, 5, 17, 15)])
def test_phase_split_stem_equals_the_strided_convolution(shape):
    torch.manual_seed(6)
    conv = WSConv3d(1, 8, 7, stride=(1, 2, 2), padding=3)
    conv.freeze_standardisation()
    x = torch.randn(shape)
    with torch.no_grad():
        expected = conv(x)
        torch.testing.assert_close(PhaseSplitConv(conv)(x), expected, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="single-channel"):
        PhaseSplitConv(WSConv3d(2, 8, 3, stride=1, padding=1))


@pytest.mark.parametrize("shape", [(2, 1, 9, 16, 16), (1, 1, 5, 17, 15), (1, 1, 6, 8, 3)])
@pytest.mark.parametrize("stride", [(1, 2, 2), (1, 1, 1), (2, 1, 3)])
def test_width_unfold_stem_equals_the_convolution(shape, stride):
    torch.manual_seed(7)
    conv = WSConv3d(1, 8, 7, stride=stride, padding=3)
    conv.freeze_standardisation()
    x = torch.randn(shape)
    with torch.no_grad():
        expected = conv(x)
        actual = WidthUnfoldConv(conv)(x.contiguous(memory_format=torch.channels_last_3d))
    assert actual.shape == expected.shape
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="single-channel"):
        WidthUnfoldConv(WSConv3d(2, 8, 3, stride=1, padding=1))


def test_channels_last_inference_stem_form_follows_the_precision():
    model = LCKDNet(PRESETS["tiny"]).freeze_for_inference(torch.bfloat16, channels_last=True)
    assert isinstance(model.encoder.stem[0], PhaseSplitConv)
    assert isinstance(LCKDNet(PRESETS["tiny"]).freeze_for_inference(channels_last=True).encoder.stem[0],
                      WidthUnfoldConv)
    assert isinstance(LCKDNet(PRESETS["tiny"]).freeze_for_inference().encoder.stem[0], WSConv3d)
