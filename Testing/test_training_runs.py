"""Training end to end (tiny preset, CPU): `lckd train` and the teacher election on data where only
T1ce shows the tumour, `lckd segment` and `lckd evaluate` with its model, resume after SIGKILL and
from a mid-run checkpoint, the no-KD baseline, a 2-process gloo DDP run, and the user errors.

One module-scoped run trains the model most tests use; every run shares one preprocessing cache.
"""

from __future__ import annotations

import json
import os
import shutil
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
from lckd.errors import LCKDError
from lckd.model_file import ModelCard, load_model, read_card, save_model
from lckd.network import LCKDNet, network_config
from lckd.sequences import SEQUENCES
from training import trainer as trainer_module
from training.config import PRESETS
from training.data import load_cached
from training.election import elect_teachers
from training.trainer import Trainer

pytestmark = pytest.mark.xdist_group("training")


def write_t1ce_only_cases(root: Path, n: int, seed: int = 0) -> Path:
    """Cases (3 mm, one 32x64x64 tile) where only T1ce shows the tumour: an enhancing core and an
    oedema ring; the other sequences are plain noisy brain."""
    rng = np.random.default_rng(seed)
    shape, affine = (40, 48, 28), np.diag([3.0, 3.0, 3.0, 1.0])
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), axis=-1).astype(float)
    brain = (((grid - np.array(shape) / 2) / (np.array(shape) / 2.3)) ** 2).sum(-1) < 1
    for index in range(n):
        distance = np.linalg.norm(grid - (np.array(shape) / 2 + rng.uniform(-3, 3, 3)), axis=-1)
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


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


def train_args(data: Path, run: Path, cache: Path, method: str, iterations: int, *extra: str):
    return ["train", "--data", str(data), "--method", method, "--preset", "tiny", "--out", str(run),
            "--cache", str(cache), "--device", "cpu", "--no-progress", "--iterations", str(iterations), *extra]


@pytest.fixture(scope="module")
def trained(t1ce_cases, cache, tmp_path_factory) -> Path:
    """An LCKD run of 30 all-sequence iterations, tumour-centred patches (about 15 s)."""
    run = tmp_path_factory.mktemp("trained") / "run"
    assert main(train_args(t1ce_cases, run, cache, "lckd", 30, "--set", "stage1_iterations=30",
                           "--set", "learning_rate=0.02", "--set", "foreground_fraction=1.0",
                           "--set", "election_every=1000", "--set", "validate_every=1000")) == 0
    return run


def cached_cases(run: Path, cache: Path, part: str):
    names = json.loads((run / "split.json").read_text())[part]
    return [load_cached(next(cache.glob(f"*/{name}.npz"))) for name in names]


def test_election_picks_the_sequence_that_carries_the_tumour(trained, cache):
    model, card = load_model(trained / "model.safetensors")
    result = elect_teachers(model, cached_cases(trained, cache, "election"), card.tile_size, torch.device("cpu"))
    assert result["per_region"] == {"ET": "t1ce", "WT": "t1ce", "TC": "t1ce"}, result["scores"]
    assert result["set"] == ["t1ce"]
    assert card.method == "lckd" and card.teachers["iteration"] == 0
    assert set(card.teachers["scores"]) == {"ET", "WT", "TC"} and set(card.teachers["per_region"]) == {"ET", "WT", "TC"}
    assert card.training["iterations"] == 30 and card.training["preset"] == "tiny"
    assert card.training["command"].startswith("lckd train") or card.training["command"] == ""
    assert len(card.validation["subsets"]) == 15
    saved = json.loads((trained / "config.json").read_text())
    assert saved["method"] == "lckd" and saved["config"]["learning_rate"] == 0.02
    split = json.loads((trained / "split.json").read_text())
    names = [name for part in split.values() for name in part]
    assert len(names) == len(set(names)) == 6 and all(split[part] for part in split)


def test_trained_model_segments_and_evaluates(trained, t1ce_cases, tmp_path):
    model = shutil.copy(trained / "model.safetensors", tmp_path / "model.safetensors")
    case = t1ce_cases / "Case_00"
    assert main(["segment", "--case", str(case), "-o", str(tmp_path / "seg.nii.gz"), "--model", str(model)]) == 0
    data = tmp_path / "held_out"
    data.mkdir()
    for name in ("Case_00", "Case_01"):
        (data / name).symlink_to(t1ce_cases / name)
    assert main(["evaluate", "--data", str(data), "--model", str(model), "--out", str(tmp_path / "eval"),
                 "--device", "cpu", "--no-progress", "--write-card"]) == 0
    result = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert list(result["subsets"])[0] == "flair" and list(result["subsets"])[-1] == "flair+t1+t1ce+t2"
    assert len(result["subsets"]) == 15 and set(result["average"]) == {"ET", "TC", "WT"}
    assert all(0.0 <= d <= 1.0 for scores in result["subsets"].values() for d in scores.values())
    assert result["subsets"]["t1ce"]["WT"] > result["subsets"]["flair"]["WT"]
    assert set(result["hd95"]["t1ce"]) == {"ET", "TC", "WT"}
    assert list(result["per_case"]) == ["Case_00", "Case_01"]
    for region in ("ET", "TC", "WT"):  # the table is the mean of the two cases' own figures
        assert result["subsets"]["t1ce"][region] == pytest.approx(
            sum(result["per_case"][c]["dice"]["t1ce"][region] for c in ("Case_00", "Case_01")) / 2, abs=1e-4)
    assert (tmp_path / "eval" / "evaluation.png").read_bytes()[:4] == b"\x89PNG"

    assert "| **average** |" in (tmp_path / "eval" / "evaluation.md").read_text()
    assert "| Case_01 |" in (tmp_path / "eval" / "evaluation.md").read_text()
    assert read_card(model).validation == result and result["postprocess"] == "none"
    assert main(["evaluate", "--data", str(data), "--model", str(model), "--out", str(tmp_path / "post"),
                 "--device", "cpu", "--no-progress", "--postprocess", "et500"]) == 0
    post = json.loads((tmp_path / "post" / "evaluation.json").read_text())
    assert post["postprocess"] == "et500" and post["subsets"]["flair"]["WT"] == result["subsets"]["flair"]["WT"]
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"validation": ["Case_00", "Case_01"], "train": ["Case_02", "Case_03"]}))
    assert main(["evaluate", "--data", str(t1ce_cases), "--split", str(split), "--model", str(model),
                 "--out", str(tmp_path / "split"), "--device", "cpu", "--no-progress"]) == 0
    assert json.loads((tmp_path / "split" / "evaluation.json").read_text()) == result
    assert main(["evaluate", "--data", str(data), "--model", str(model), "--out", str(tmp_path / "mirrored"),
                 "--device", "cpu", "--no-progress", "--mirror-axes", "2,0"]) == 0
    mirrored = json.loads((tmp_path / "mirrored" / "evaluation.json").read_text())
    assert mirrored["mirror_axes"] == [2, 0] and mirrored["subsets"] != result["subsets"]
    with pytest.raises(SystemExit):
        main(["evaluate", "--data", str(data), "--model", str(model), "--out", str(tmp_path / "x"),
              "--mirror-axes", "3"])


def test_an_ensemble_of_trained_models_segments_evaluates_and_refuses_misfits(trained, t1ce_cases, cache, tmp_path,
                                                                             capsys):
    single = trained / "model.safetensors"
    twin = shutil.copy(single, tmp_path / "twin.safetensors")
    pair = tmp_path / "pair.safetensors"
    assert main(["ensemble", str(single), str(twin), "--out", str(pair), "--mirror-axes", "2",
                 "--description", "two copies"]) == 0
    card, first = read_card(pair), read_card(single)
    assert card.members == 2 and card.mirror_axes == [2] and card.validation is None and card.name == "pair"
    assert [member["file"] for member in card.training["members"]] == ["model.safetensors", "twin.safetensors"]
    assert card.training["members"][0]["teachers"] == first.teachers and card.method == "lckd"
    assert card.training["validation_cases"] == first.training["validation_cases"]
    assert card.training["training_cases"] == sorted(first.training["training_cases"])

    other = tmp_path / "demo.safetensors"
    demo = network_config("demo")
    save_model(other, LCKDNet(demo), replace(first, preset="demo", network=demo.to_dict()))
    capsys.readouterr()
    refused = {"exists": [str(single), str(twin), "--out", str(pair)],
               "given twice": [str(single), str(single), "--out", str(tmp_path / "a.safetensors")],
               "already an ensemble": [str(pair), str(single), "--out", str(tmp_path / "b.safetensors")],
               "its preset differs": [str(single), str(other), "--out", str(tmp_path / "c.safetensors")]}
    for message, arguments in refused.items():
        assert main(["ensemble", *arguments]) == 2
        assert message in capsys.readouterr().err
    for thresholds in ("ET=0.9,TC=0.8", "ET=0.9,TC=0.8,WT=2", "ET=high,TC=0.8,WT=0.5"):
        with pytest.raises(SystemExit):
            main(["ensemble", str(single), "--out", str(tmp_path / "d.safetensors"), "--review-below", thresholds])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo.safetensors", "pair.safetensors", "twin.safetensors"]
    shipped = tmp_path / "shipped.safetensors"  # one network: itself, with the card a shipped model needs
    assert main(["ensemble", str(single), "--out", str(shipped), "--mirror-axes", "0,1,2", "--postprocess", "specks",
                 "--name", "one", "--description", "one network", "--review-below", "ET=0.9,TC=0.8,WT=0.5"]) == 0
    one = read_card(shipped)
    assert (one.members, one.mirror_axes, one.postprocessing, one.name, one.validation) == (1, [0, 1, 2], "specks",
                                                                                           "one", None)
    assert one.review_below == {"ET": 0.9, "TC": 0.8, "WT": 0.5} and card.review_below is None
    assert one.training["validation_cases"] == first.training["validation_cases"]
    assert load_model(shipped)[0].state_dict().keys() == load_model(single)[0].state_dict().keys()
    shipped.unlink()

    case = t1ce_cases / "Case_00"
    for model in (single, pair):  # two copies of one network: the same probabilities, the same label map
        assert main(["segment", "--case", str(case), "-o", str(tmp_path / f"{model.stem}.nii.gz"),
                     "--model", str(model), "--no-tta"]) == 0
    found = [np.asarray(nib.load(str(tmp_path / f"{m}.nii.gz")).dataobj) for m in ("model", "pair")]
    assert np.array_equal(found[0], found[1]) and found[0].any()
    data = tmp_path / "held_out"
    data.mkdir()
    (data / "Case_00").symlink_to(case)
    assert main(["evaluate", "--data", str(data), "--model", str(pair), "--out", str(tmp_path / "eval"),
                 "--device", "cpu", "--no-progress", "--mirror-axes", "none", "--write-card"]) == 0
    model, card = load_model(pair)
    assert card.members == 2 and len(card.validation["subsets"]) == 15 and len(model.members) == 2
    capsys.readouterr()
    assert main(train_args(t1ce_cases, tmp_path / "run", cache, "lckd", 1, "--init", str(pair))) == 2
    assert "this is an ensemble of 2" in capsys.readouterr().err


def test_init_starts_from_a_model_files_weights_and_guards_its_validation(trained, t1ce_cases, cache, tmp_path):
    start = trained / "model.safetensors"
    run = tmp_path / "run"
    # learning rate 0: the run's weights stay the ones it started from
    assert main(train_args(t1ce_cases, run, cache, "baseline", 2, "--init", str(start),
                           "--set", "learning_rate=0")) == 0
    before, _ = load_model(start)
    after, card = load_model(run / "model.safetensors")
    assert all(torch.equal(a, b) for a, b in zip(before.state_dict().values(), after.state_dict().values()))
    assert card.training["init"]["file"] == "model.safetensors" and len(card.training["init"]["sha256"]) == 64
    assert json.loads((run / "config.json").read_text())["init"] == card.training["init"]
    assert card.training["validation_cases"] == json.loads((run / "split.json").read_text())["validation"]
    leaked = read_card(start).training["training_cases"][0]
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"validation": [leaked], "train": ["Case_05"]}))
    with pytest.raises(LCKDError, match=f"trained on this run's validation case.*{leaked}"):
        Trainer(PRESETS["tiny"], "lckd", t1ce_cases, tmp_path / "leak", device="cpu", cache_dir=cache,
                split_file=split, init_file=start)
    other = LCKDNet(network_config("demo"))
    demo = save_model(tmp_path / "demo.safetensors", other, ModelCard(preset="demo", network=other.config.to_dict(),
                                                                      tile_size=[32, 64, 64]))
    with pytest.raises(LCKDError, match="--init needs a model of this run's network"):
        Trainer(PRESETS["tiny"], "lckd", t1ce_cases, tmp_path / "other", device="cpu", cache_dir=cache,
                init_file=demo)


def test_a_given_split_is_trained_with(t1ce_cases, cache, tmp_path):
    split = {"validation": ["Case_05"], "train": ["Case_00", "Case_01", "Case_02"], "election": ["Case_03"]}
    (tmp_path / "split.json").write_text(json.dumps(split))
    run = tmp_path / "run"
    assert main(train_args(t1ce_cases, run, cache, "lckd", 2, "--split", str(tmp_path / "split.json"))) == 0
    assert json.loads((run / "split.json").read_text()) == dict(split, meta=split["train"])
    card = read_card(run / "model.safetensors")
    assert card.training["cases"] == {"validation": 1, "election": 1, "meta": 3, "train": 3}
    assert card.validation["cases"] == 1


def _checkpoint_iteration(path: Path) -> int:
    try:
        return int(torch.load(path, weights_only=True)["iteration"])
    except (OSError, RuntimeError, EOFError):
        return -1


def test_resume_after_sigkill_reaches_the_same_weights(trained, t1ce_cases, cache, tmp_path):
    """LCKD: killed with SIGKILL after a checkpoint past stage 1 and an election, then resumed."""
    extra = ("--set", "checkpoint_every=1")
    assert main(train_args(t1ce_cases, tmp_path / "straight", cache, "lckd", 6, *extra)) == 0
    killed = tmp_path / "killed"
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()))
    command = [sys.executable, "-m", "lckd", *train_args(t1ce_cases, killed, cache, "lckd", 6, *extra)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while _checkpoint_iteration(killed / "last.pt") < 3 and time.time() < deadline and process.poll() is None:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "model.safetensors").exists()
    assert 3 <= _checkpoint_iteration(killed / "last.pt") < 6
    assert main(train_args(t1ce_cases, killed, cache, "lckd", 6, *extra, "--resume")) == 0
    straight, straight_card = load_model(tmp_path / "straight" / "model.safetensors")
    resumed, card = load_model(killed / "model.safetensors")
    for name, tensor in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], tensor, atol=1e-5, rtol=1e-4)
    assert card.training["iterations"] == 6 and card.teachers == straight_card.teachers
    assert card.teachers["iteration"] == 4


def test_metakd_resumes_from_a_mid_run_checkpoint(t1ce_cases, cache, tmp_path, monkeypatch):
    """MetaKD with the released meta step (stage-2 subsets, batch 1, torch.rand logits), schedule and
    augmentation: importance logits, their Adam state and the meta schedule survive a restart."""
    saved = trainer_module.save_checkpoint
    snapshot = tmp_path / "snapshot"

    def save_and_keep(run_dir: Path, state):
        path = saved(run_dir, state)
        if state["iteration"] == 3:  # after a meta step (every 2 iterations in stage 1)
            shutil.copytree(run_dir, snapshot, ignore=shutil.ignore_patterns("tensorboard"))
        return path

    monkeypatch.setattr(trainer_module, "save_checkpoint", save_and_keep)
    released = ("--set", "checkpoint_every=1", "--set", "meta_subsets=training", "--set", "meta_batch_size=1",
                "--set", "importance_init=rand", "--set", "lr_schedule=released", "--set", "augmentation=released")
    assert main(train_args(t1ce_cases, tmp_path / "straight", cache, "metakd", 6, *released)) == 0
    monkeypatch.setattr(trainer_module, "save_checkpoint", saved)
    assert main(train_args(t1ce_cases, snapshot, cache, "metakd", 6, *released, "--resume")) == 0
    straight, straight_card = load_model(tmp_path / "straight" / "model.safetensors")
    resumed, card = load_model(snapshot / "model.safetensors")
    for name, tensor in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], tensor, atol=1e-5, rtol=1e-4)
    assert card.importance == straight_card.importance and card.importance != dict.fromkeys(SEQUENCES, 0.25)
    assert card.method == "metakd" and card.teachers is None


def test_baseline_is_the_same_run_without_kd(t1ce_cases, cache, tmp_path):
    trainer = Trainer(replace(PRESETS["tiny"], iterations=2, stage1_iterations=1), "baseline", t1ce_cases,
                      tmp_path / "run", device="cpu", cache_dir=cache, progress=False)
    assert trainer.config.kd_weight == 0.0
    trainer.run()
    assert json.loads((tmp_path / "run" / "config.json").read_text())["config"]["kd_weight"] == 0.0
    card = read_card(tmp_path / "run" / "model.safetensors")
    assert card.method == "baseline" and card.teachers is None and card.importance is None


def test_run_without_validation_trains_on_every_case(t1ce_cases, cache, tmp_path):
    """validation_fraction 0 (the papers' protocol): no case held out for validation, none scored,
    and the card says there was no validation."""
    config = replace(PRESETS["tiny"], iterations=2, stage1_iterations=1, validate_every=1, validation_fraction=0.0,
                     election_fraction=0.0, hold_out_unused=False)
    trainer = Trainer(config, "lckd", t1ce_cases, tmp_path / "run", device="cpu", cache_dir=cache, progress=False)
    trainer.run()
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    assert split["validation"] == split["meta"] == [] and len(split["train"]) == 6
    assert split["election"] == split["train"]
    card = read_card(tmp_path / "run" / "model.safetensors")
    assert card.validation is None and "no validation" in card.description
    assert card.training["cases"]["validation"] == 0 and not (tmp_path / "run" / "evaluation.json").exists()


DDP_CONFIG = replace(PRESETS["tiny"], iterations=3, stage1_iterations=2, election_every=2, batch_size=2)


def _ddp_worker(rank: int, world_size: int, port: int, data: str, run: str, cache: str, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    trainer = Trainer(DDP_CONFIG, "lckd", Path(data), Path(run), device="cpu", cache_dir=Path(cache), progress=False)
    trainer.run()
    state = {"model": trainer.net.state_dict(), "teachers": json.dumps(trainer.teachers)}
    torch.save(state, Path(out) / f"rank{rank}.pt")


def test_two_process_gloo_ddp_splits_the_global_batch(t1ce_cases, cache, tmp_path):
    """batch_size is the global batch: 2 ranks of 1 sample each train the weights one process with
    batch 2 trains (the same samples, the gradient averaged), and keep both ranks identical."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, port, str(t1ce_cases), str(tmp_path / "run"), str(cache), str(tmp_path)), nprocs=2)
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for name, tensor in rank0["model"].items():
        torch.testing.assert_close(rank1["model"][name], tensor)
    assert rank0["teachers"] == rank1["teachers"] and json.loads(rank0["teachers"])["iteration"] == 2
    card = read_card(tmp_path / "run" / "model.safetensors")
    assert card.training["world_size"] == 2
    alone = Trainer(DDP_CONFIG, "lckd", t1ce_cases, tmp_path / "alone", device="cpu", cache_dir=cache, progress=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each rank: the same kernels and summation order (a full run failed without)
    try:
        alone.run()
    finally:
        torch.set_num_threads(threads)
    # the updates from the common initial weights agree; float summation order differs between the
    # runs, which a few instance norms over 2x2x2-voxel bottlenecks amplify in single weights
    torch.manual_seed(DDP_CONFIG.seed)
    initial = LCKDNet(network_config(DDP_CONFIG.network)).state_dict()
    names = [name for name, tensor in initial.items() if tensor.is_floating_point()]
    split = torch.cat([(rank0["model"][n] - initial[n]).flatten() for n in names])
    together = torch.cat([(alone.net.state_dict()[n] - initial[n]).flatten() for n in names])
    assert float(together.norm()) > 0 and float((split - together).norm()) < 0.02 * float(together.norm())


def test_user_errors_are_one_line(trained, t1ce_cases, cache, tmp_path, capsys):
    assert main(train_args(tmp_path / "missing", tmp_path / "a", cache, "lckd", 2)) != 0
    assert "not a folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(train_args(tmp_path / "empty", tmp_path / "b", cache, "lckd", 2)) != 0
    assert "no BraTS case folders" in capsys.readouterr().err
    assert main(train_args(t1ce_cases, tmp_path / "c", cache, "lckd", 2, "--set", "tile_size=16,32,32")) != 0
    assert "bottleneck would be one voxel" in capsys.readouterr().err
    # a finished run is not overwritten, and --resume keeps the run's saved settings
    assert main(train_args(t1ce_cases, trained, cache, "lckd", 30)) != 0
    assert "--resume" in capsys.readouterr().err
    assert main(train_args(t1ce_cases, trained, cache, "lckd", 40, "--resume")) != 0
    assert "iterations (saved 30, given 40)" in capsys.readouterr().err
    assert main(train_args(t1ce_cases, trained, cache, "metakd", 30, "--resume")) != 0
    assert "--method lckd" in capsys.readouterr().err
    assert main(["evaluate", "--data", str(tmp_path / "empty"), "--model", str(trained / "model.safetensors"),
                 "--out", str(tmp_path / "eval"), "--no-progress"]) != 0
    assert capsys.readouterr().err.count("\n") == 1
