"""Training end to end (tiny preset, CPU): election, MetaKD, resume after SIGKILL, 2-process DDP,
a loadable model, and `lckd evaluate`."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from lckd.cli import main
from lckd.model_file import load_model, read_card
from lckd.sequences import SEQUENCES
from training.config import PRESETS
from training.election import elect_teachers
from training.trainer import Trainer

pytestmark = pytest.mark.xdist_group("training")


def write_t1ce_only_cases(root: Path, n: int, seed: int = 0) -> Path:
    """Cases where only T1ce shows the tumour (ET core + oedema ring); the others are plain brain."""
    rng = np.random.default_rng(seed)
    shape, affine = (44, 52, 40), np.diag([3.0, 3.0, 3.0, 1.0])
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), axis=-1).astype(float)
    brain = (((grid - np.array(shape) / 2) / (np.array(shape) / 2.3)) ** 2).sum(-1) < 1
    for index in range(n):
        centre = np.array(shape) / 2 + rng.uniform(-5, 5, 3)
        distance = np.linalg.norm(grid - centre, axis=-1)
        labels = np.where(distance < 5.0, 4, np.where(distance < 8.0, 2, 0)).astype(np.uint8) * brain
        folder = root / f"Case_{index:02d}"
        folder.mkdir(parents=True)
        for name in SEQUENCES:
            image = 100 + rng.normal(0, 8, shape)
            if name == "t1ce":
                image = image + 150 * (labels == 4) + 70 * (labels == 2)
            nib.save(nib.Nifti1Image((image * brain).astype(np.float32), affine),
                     str(folder / f"Case_{index:02d}_{name}.nii.gz"))
        nib.save(nib.Nifti1Image(labels, affine), str(folder / f"Case_{index:02d}_seg.nii.gz"))
    return root


@pytest.fixture(scope="module")
def t1ce_cases(tmp_path_factory) -> Path:
    return write_t1ce_only_cases(tmp_path_factory.mktemp("t1ce"), 6)


def tiny(**changes):
    return replace(PRESETS["tiny"], **changes)


def test_election_picks_the_sequence_that_carries_the_tumour(t1ce_cases, tmp_path):
    config = tiny(iterations=40, stage1_iterations=40, election_every=1000, learning_rate=0.02,
                  foreground_fraction=1.0)
    trainer = Trainer(config, "lckd", t1ce_cases, tmp_path / "run", device="cpu", progress=False)
    trainer.run()
    result = elect_teachers(trainer.net, trainer.cases["election"], config.tile_size, torch.device("cpu"))
    assert result["per_region"] == {"ET": "t1ce", "WT": "t1ce", "TC": "t1ce"}, result["scores"]
    assert result["set"] == ["t1ce"]
    card = read_card(tmp_path / "run" / "model.safetensors")
    assert card.method == "lckd" and set(card.teachers["scores"]) == {"ET", "WT", "TC"}
    assert len(card.validation["subsets"]) == 15


def test_metakd_importance_moves_toward_the_informative_sequence(t1ce_cases, tmp_path):
    config = tiny(iterations=40, stage1_iterations=40, meta_every_stage1=4, meta_steps=3, learning_rate=0.02,
                  meta_learning_rate=0.05, foreground_fraction=1.0)
    trainer = Trainer(config, "metakd", t1ce_cases, tmp_path / "run", device="cpu", progress=False)
    trainer.run()
    importance = read_card(tmp_path / "run" / "model.safetensors").importance
    assert max(importance, key=importance.get) == "t1ce", importance
    assert importance["t1ce"] > 0.25


def _train_command(data: Path, run: Path, cache: Path, method: str, *extra: str):
    return [sys.executable, "-m", "lckd", "train", "--data", str(data), "--method", method, "--preset", "tiny",
            "--out", str(run), "--cache", str(cache), "--device", "cpu", "--no-progress",
            "--set", "checkpoint_every=1", "--iterations", "10", *extra]


@pytest.mark.parametrize("method", ["lckd", "metakd"])
def test_resume_after_sigkill_reaches_the_same_weights(t1ce_cases, tmp_path, method):
    cache = tmp_path / "cache"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run(_train_command(t1ce_cases, tmp_path / "straight", cache, method), check=True, env=env,
                   capture_output=True, timeout=300)
    killed = tmp_path / "killed"
    process = subprocess.Popen(_train_command(t1ce_cases, killed, cache, method), env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not (killed / "last.pt").exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "model.safetensors").exists()
    state = torch.load(killed / "last.pt", weights_only=True)
    assert 1 <= state["iteration"] < 10
    subprocess.run(_train_command(t1ce_cases, killed, cache, method, "--resume"), check=True, env=env,
                   capture_output=True, timeout=300)
    straight, _ = load_model(tmp_path / "straight" / "model.safetensors")
    resumed, card = load_model(killed / "model.safetensors")
    for name, tensor in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], tensor, atol=1e-5, rtol=1e-4)
    assert card.training["iterations"] == 10


def _ddp_worker(rank: int, world_size: int, port: int, data: str, run: str, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    trainer = Trainer(tiny(iterations=3, stage1_iterations=2), "lckd", Path(data), Path(run), device="cpu",
                      progress=False)
    trainer.run()
    torch.save(trainer.net.state_dict(), Path(out) / f"rank{rank}.pt")


def test_two_process_gloo_ddp_keeps_ranks_identical(t1ce_cases, tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, port, str(t1ce_cases), str(tmp_path / "run"), str(tmp_path)), nprocs=2)
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for name, tensor in rank0.items():
        torch.testing.assert_close(rank1[name], tensor)
    card = read_card(tmp_path / "run" / "model.safetensors")
    assert card.training["world_size"] == 2


def test_trained_model_segments_and_evaluates(t1ce_cases, tmp_path, capsys):
    assert main(["train", "--data", str(t1ce_cases), "--method", "baseline", "--preset", "tiny", "--out",
                 str(tmp_path / "run"), "--device", "cpu", "--no-progress", "--iterations", "4"]) == 0
    model = tmp_path / "run" / "model.safetensors"
    assert read_card(model).method == "baseline"
    case = t1ce_cases / "Case_00"
    assert main(["segment", "--case", str(case), "-o", str(tmp_path / "seg.nii.gz"), "--model", str(model)]) == 0
    assert main(["evaluate", "--data", str(t1ce_cases), "--model", str(model), "--out", str(tmp_path / "eval"),
                 "--device", "cpu", "--no-progress", "--write-card"]) == 0
    result = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert list(result["subsets"])[0] == "flair" and list(result["subsets"])[-1] == "flair+t1+t1ce+t2"
    assert len(result["subsets"]) == 15 and set(result["average"]) == {"ET", "TC", "WT"}
    assert (tmp_path / "eval" / "evaluation.png").read_bytes()[:4] == b"\x89PNG"
    assert "| **average** |" in (tmp_path / "eval" / "evaluation.md").read_text()
    assert read_card(model).validation["cases"] == 6
    # a second run into the same folder without --resume is refused
    assert main(["train", "--data", str(t1ce_cases), "--method", "baseline", "--preset", "tiny", "--out",
                 str(tmp_path / "run"), "--device", "cpu", "--no-progress"]) != 0
    assert "--resume" in capsys.readouterr().err
