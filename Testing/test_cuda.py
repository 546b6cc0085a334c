"""The CUDA paths (skipped where no GPU is visible, as on CI): sliding-window inference on the GPU
against the CPU, absent-sequence reuse on the GPU, `lckd segment --device cuda` with mixed precision,
and a `lckd train` run with bf16 autocast on the GPU whose model segments on the CPU."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from test_training_runs import write_t1ce_only_cases

from lckd.cli import main
from lckd.inference import sliding_window_probabilities
from lckd.model_file import read_card
from lckd.network import PRESETS, LCKDNet
from lckd.sequences import presence_mask

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible")

TILE = (32, 64, 64)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return LCKDNet(PRESETS["tiny"]).freeze_for_inference()


@pytest.fixture
def exact_float32():
    """cuDNN convolutions without TF32 (torch allows TF32 there by default: 10-bit mantissas in the
    products, so two computations of the same value may differ by about 1e-3)."""
    allowed = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32 = allowed


def test_gpu_probabilities_match_the_cpu(model, exact_float32):
    torch.manual_seed(1)
    images = torch.randn(4, 40, 70, 90)
    present = presence_mask(("flair", "t1ce"))
    on_cpu = sliding_window_probabilities(model, images, present, TILE)
    on_gpu = sliding_window_probabilities(model.cuda(), images.cuda(), present, TILE).cpu()
    torch.backends.cudnn.allow_tf32 = True
    with_tf32 = sliding_window_probabilities(model, images.cuda(), present, TILE).cpu()
    model.cpu()
    assert (on_gpu - on_cpu).abs().max().item() < 1e-4
    assert (with_tf32 - on_cpu).abs().max().item() < 2e-2 and (with_tf32 - on_cpu).abs().mean().item() < 1e-3


@pytest.mark.parametrize("subset", [("t1ce",), ("flair", "t1", "t2")])
def test_absent_sequence_reuse_equals_plain_path_on_the_gpu(model, subset, exact_float32):
    torch.manual_seed(2)
    images = torch.randn(4, 40, 70, 90, device="cuda")
    present = presence_mask(subset)
    gpu_model = model.cuda()
    fast = sliding_window_probabilities(gpu_model, images, present, TILE, reuse_absent=True)
    plain = sliding_window_probabilities(gpu_model, images, present, TILE, reuse_absent=False)
    model.cpu()
    assert (fast - plain).abs().max().item() < 1e-4


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_segment_on_the_gpu_writes_the_reference_grid(write_case, tiny_model, tmp_path, precision):
    files = write_case(("t1", "flair"))
    output = tmp_path / f"seg-{precision}.nii.gz"
    assert main(["segment", "--t1", str(files["t1"]), "--flair", str(files["flair"]), "-o", str(output),
                 "--model", str(tiny_model), "--device", "cuda", "--precision", precision]) == 0
    written, reference = nib.load(str(output)), nib.load(str(files["t1"]))
    assert written.shape == reference.shape and np.allclose(written.affine, reference.affine)
    assert written.get_data_dtype() == np.uint8
    assert set(np.unique(np.asarray(written.dataobj))) <= {0, 1, 2, 4}


def test_training_on_the_gpu_with_mixed_precision(tmp_path):
    data = write_t1ce_only_cases(tmp_path / "cases", 6)
    run = tmp_path / "run"
    assert main(["train", "--data", str(data), "--method", "lckd", "--preset", "tiny", "--out", str(run),
                 "--device", "cuda", "--no-progress", "--iterations", "6", "--set", "stage1_iterations=3"]) == 0
    config = json.loads((run / "config.json").read_text())["config"]
    assert config["mixed_precision"] is True
    card = read_card(run / "model.safetensors")
    assert card.training["device"].startswith("cuda") and card.teachers
    case = data / "Case_00"
    assert main(["segment", "--case", str(case), "-o", str(tmp_path / "seg.nii.gz"),
                 "--model", str(run / "model.safetensors"), "--device", "cpu"]) == 0
