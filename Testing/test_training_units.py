"""Training building blocks: losses against hand computations, KD terms, split, cache, sampling,
augmentation, the MetaKD meta step, settings, HD95."""

from __future__ import annotations

import pickle
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from lckd.cases import CaseFiles, read_case_folder
from lckd.labels import regions_from_labels
from lckd.network import PRESETS as NETWORKS
from lckd.network import Encoded, LCKDNet
from lckd.preprocess import Normalisation
from lckd.sequences import SEQUENCES
from training.augmentation import Augmentation
from training.config import PRESETS, TrainConfig, build_config, parse_overrides
from training.data import (
    CachedCase,
    IndexSampler,
    PatchDataset,
    cache_case,
    cache_folder,
    load_cached,
    make_split,
    random_patch,
)
from training.evaluation import EMPTY_HD95, dice, hd95
from training.losses import lckd_kd, metakd_kd, segmentation_loss
from training.meta import ImportanceWeights
from training.trainer import batch_subset, poly_learning_rate

pytestmark = pytest.mark.xdist_group("training")


def test_segmentation_loss_matches_hand_computation():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 5, 6)
    regions = (torch.rand(2, 3, 4, 5, 6) > 0.6).float()
    p = torch.sigmoid(logits)
    dice_terms = []
    for n in range(2):
        for r in range(3):
            dice_terms.append(2 * (p[n, r] * regions[n, r]).sum() / (p[n, r].sum() + regions[n, r].sum() + 1))
    expected_dice = 1 - torch.stack(dice_terms).mean()
    bce = 0.0
    for r in range(3):
        x, y = logits[:, r], regions[:, r]
        bce = bce + (-(y * torch.log(torch.sigmoid(x)) + (1 - y) * torch.log(1 - torch.sigmoid(x)))).mean()
    torch.testing.assert_close(segmentation_loss(logits, regions), expected_dice + bce, atol=1e-5, rtol=1e-5)


def test_kd_terms_match_hand_computation():
    torch.manual_seed(1)
    f = torch.randn(2, 4, 3, 2, 2, 2, requires_grad=True)
    present = [True, False, True, True]
    # LCKD: teachers t1ce and flair; students every other available sequence
    expected = sum((f[:, t] - f[:, s]).abs().mean() for t in (2, 0) for s in (0, 2, 3) if s != t)
    torch.testing.assert_close(lckd_kd(f, present, ["flair", "t1ce"]), expected)
    # a teacher that is absent teaches nothing
    assert float(lckd_kd(f, [False, True, False, True], ["t1ce"])) == 0.0
    alpha = torch.tensor([0.4, 0.1, 0.3, 0.2])
    expected = sum(alpha[i] / alpha[j] * (f[:, i] - f[:, j]).abs().mean()
                   for i in (0, 2, 3) for j in (0, 2, 3) if i != j)
    torch.testing.assert_close(metakd_kd(f, present, alpha), expected)
    # the teacher side is detached: the gradient reaches students only
    lckd_kd(f, [True, True, False, False], ["flair"]).backward()
    assert float(f.grad[:, 0].abs().sum()) == 0.0 and float(f.grad[:, 1].abs().sum()) > 0.0


def _case_files(n):
    return [CaseFiles(name=f"c{i:02d}", folder=None, layout="brats2018", sequences={}, segmentation="seg")
            for i in range(n)]


def test_split_is_seeded_disjoint_and_complete():
    config = TrainConfig(validation_fraction=0.2, election_fraction=0.1, meta_fraction=0.1, seed=3)
    split = make_split(_case_files(20), config)
    names = [n for part in split.values() for n in part]
    assert len(names) == len(set(names)) == 20
    assert [len(split[p]) for p in ("validation", "election", "meta", "train")] == [4, 2, 2, 12]
    assert make_split(_case_files(20), config) == split
    assert make_split(_case_files(20), TrainConfig(seed=4, validation_fraction=0.2)) != split
    with pytest.raises(Exception, match="at least"):
        make_split(_case_files(3), config)


def test_split_with_selection_on_training_holds_out_validation_only():
    config = TrainConfig(validation_fraction=0.2, selection_on_training=True, min_held_out=2, seed=0)
    split = make_split(_case_files(14), config)
    assert len(split["validation"]) == 3 and len(split["train"]) == 11
    assert split["election"] == split["meta"] == split["train"]
    assert not set(split["validation"]) & set(split["train"])
    assert make_split(_case_files(3), config)["train"]  # 2 validation + 1 training case suffice
    with pytest.raises(Exception, match="train and validation"):
        make_split(_case_files(2), config)


def in_memory_case(images: np.ndarray, labels: np.ndarray) -> CachedCase:
    return CachedCase(Path("x.npz"), images, labels, tuple(np.flatnonzero(m) for m in regions_from_labels(labels)))


def test_cache_is_memory_mapped_keyed_by_settings_and_picklable(tmp_path):
    folder = tmp_path / "Case_7"
    folder.mkdir()
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    labels = np.zeros((20, 24, 16), np.uint8)
    labels[8:12, 10:14, 6:10] = 2
    labels[9:11, 11:13, 7:9] = 3  # BraTS 2023: ET is 3
    for suffix in ("t2f", "t1n", "t1c", "t2w"):
        image = np.zeros(labels.shape, np.float32)
        image[2:-2, 2:-2, 2:-2] = 100 + 10 * labels[2:-2, 2:-2, 2:-2]
        nib.save(nib.Nifti1Image(image, affine), str(folder / f"Case_7-{suffix}.nii.gz"))
    nib.save(nib.Nifti1Image(labels, affine), str(folder / "Case_7-seg.nii.gz"))
    case = read_case_folder(folder)
    at_2mm = cache_folder(tmp_path / "cache", 2.0, Normalisation())
    at_4mm = cache_folder(tmp_path / "cache", 4.0, Normalisation())
    assert at_2mm != at_4mm and at_2mm.parent == at_4mm.parent
    cached = load_cached(cache_case(case, at_2mm, 2.0, Normalisation()))
    assert isinstance(cached.images, np.memmap) and not cached.images.flags.writeable
    assert cached.images.shape[0] == 4 and cached.labels.shape == cached.images.shape[1:]
    assert set(np.unique(cached.labels)) == {0, 2, 4}  # ET converted to 4
    for voxels, mask in zip(cached.tumour, regions_from_labels(np.asarray(cached.labels))):
        np.testing.assert_array_equal(voxels, np.flatnonzero(mask))
    copy = pickle.loads(pickle.dumps(cached))  # what a spawned loader worker receives
    assert isinstance(copy.images, np.memmap) and copy.name == "Case_7"
    np.testing.assert_array_equal(copy.images, cached.images)
    assert load_cached(cache_case(case, at_4mm, 4.0, Normalisation())).labels.shape != cached.labels.shape
    # loader workers draw exactly the samples the main process draws
    dataset = PatchDataset([cached], TrainConfig(tile_size=(8, 16, 16), augment=False))
    sampler = IndexSampler(0, 3, 2, rank=0, world_size=1)
    batches = [list(DataLoader(dataset, batch_size=2, sampler=sampler, num_workers=workers)) for workers in (0, 2)]
    for alone, with_workers in zip(*batches):
        torch.testing.assert_close(alone["images"], with_workers["images"])
        torch.testing.assert_close(alone["regions"], with_workers["regions"])


def test_patches_are_reproducible_and_sample_the_tumour():
    labels = np.zeros((40, 60, 60), np.uint8)
    labels[30:34, 50:54, 50:54] = 4
    case = in_memory_case(np.random.default_rng(0).normal(size=(4, 40, 60, 60)).astype(np.float32), labels)
    config = TrainConfig(tile_size=(32, 32, 32), foreground_fraction=1.0)
    dataset = PatchDataset([case], config, Augmentation(config))
    a, b = dataset[17], dataset[17]
    torch.testing.assert_close(a["images"], b["images"])
    assert a["regions"].shape == (3, 32, 32, 32)
    hits = [float(dataset[i]["regions"][1].sum()) > 0 for i in range(10)]
    assert sum(hits) >= 8  # foreground-centred patches contain tumour (augmentation may shift a little)
    images, patch_labels = random_patch(case, (48, 64, 64), np.random.default_rng(1), 0.0)
    assert images.shape == (4, 48, 64, 64) and patch_labels.shape == (48, 64, 64)  # zero-padded


def test_rotation_pushes_no_invalid_label_values():
    """Fix of method.md section 6: what rotation moves out of the volume is background, never -1."""
    config = TrainConfig(elastic_probability=1.0)
    augmentation = Augmentation(config)
    labels = np.full((32, 32, 32), 4, np.uint8)
    labels[:, :16] = 1
    for seed in range(12):
        _, out = augmentation(np.ones((4, 32, 32, 32), np.float32), labels, seed)
        assert set(np.unique(out)) <= {0, 1, 2, 4}
        assert out.dtype == np.uint8


def test_index_sampler_resumes_where_it_stopped():
    full = list(IndexSampler(0, 6, 2, rank=1, world_size=2))
    resumed = list(IndexSampler(3, 6, 2, rank=1, world_size=2))
    assert full[6:] == resumed
    other_rank = list(IndexSampler(0, 6, 2, rank=0, world_size=2))
    assert not set(full) & set(other_rank)


def test_schedule_and_subsets():
    config = PRESETS["paper"]
    assert poly_learning_rate(config, 0) == pytest.approx(1e-2)
    assert poly_learning_rate(config, config.iterations // 2) == pytest.approx(1e-2 * 0.5 ** 0.9)
    assert batch_subset(config, "lckd", 0) == [True] * 4
    late = [batch_subset(config, "lckd", i) for i in range(config.stage1_iterations, config.stage1_iterations + 200)]
    assert all(1 <= sum(s) <= 3 for s in late)
    meta = [sum(batch_subset(config, "metakd", i)) for i in range(config.stage1_iterations,
                                                                  config.stage1_iterations + 200)]
    assert set(meta) == {1, 2, 3, 4}


def test_overrides_are_typed_and_checked():
    values = parse_overrides(["learning_rate=0.005", "tile_size=48,64,64", "augment=false", "batch_size=4"])
    assert values == {"learning_rate": 0.005, "tile_size": (48, 64, 64), "augment": False, "batch_size": 4}
    assert build_config("tiny", values).batch_size == 4
    with pytest.raises(Exception, match="KEY=VALUE"):
        parse_overrides(["nonsense=1"])
    with pytest.raises(Exception, match="not a valid"):
        parse_overrides(["batch_size=two"])
    with pytest.raises(Exception, match="KEY=VALUE"):
        parse_overrides(["preset=paper"])  # the preset is --preset
    assert build_config("phantom", {}).preset == "phantom"
    with pytest.raises(Exception, match="multiple of 16,32,32"):
        build_config("tiny", {"tile_size": (24, 64, 64)})
    with pytest.raises(Exception, match="at least 1"):
        build_config("tiny", {"checkpoint_every": 0})
    with pytest.raises(Exception, match="unknown training preset"):
        build_config("huge", {})


class BottleneckOnlyNet(torch.nn.Module):
    """A stand-in for LCKDNet whose output depends on the bottlenecks alone: each sequence's
    bottleneck is its image, and the logits are a fixed multiple of the (weighted) sum."""

    def __init__(self) -> None:
        super().__init__()
        self.gain = torch.nn.Parameter(torch.tensor(4.0))

    def encode(self, images: torch.Tensor, present) -> Encoded:
        return Encoded(skips=[], bottlenecks=images.unsqueeze(2), present=torch.ones(images.shape[:2], dtype=bool))

    def decode(self, encoded: Encoded, bottlenecks: torch.Tensor) -> torch.Tensor:
        logits = self.gain * bottlenecks.sum(dim=(1, 2))
        return logits.unsqueeze(1).expand(-1, 3, -1, -1, -1)


def test_meta_step_moves_importance_toward_the_informative_bottleneck():
    """Only T1ce's bottleneck tells tumour (+1) from background (-1); the others are noise.
    Raising T1ce's weight lowers the meta loss, so its importance must grow."""
    generator = torch.Generator().manual_seed(0)
    tumour = torch.rand(2, 8, 8, 8, generator=generator) > 0.7
    images = torch.randn(2, 4, 8, 8, 8, generator=generator)
    images[:, SEQUENCES.index("t1ce")] = tumour.float() * 2 - 1
    batch = {"images": images, "regions": tumour.unsqueeze(1).expand(-1, 3, -1, -1, -1).float()}
    weights = ImportanceWeights(learning_rate=0.1, weight_decay=5e-4)
    net = BottleneckOnlyNet()
    losses = [weights.meta_step(net, [batch]) for _ in range(5)]
    importance = weights.as_dict()
    assert max(importance, key=importance.get) == "t1ce" and importance["t1ce"] > 0.35, importance
    assert losses[-1] < losses[0]
    assert net.gain.grad is None and float(net.gain.detach()) == 4.0  # the network is not updated


def test_meta_step_leaves_the_real_network_untouched():
    torch.manual_seed(0)
    net = LCKDNet(NETWORKS["tiny"])
    before = {name: tensor.clone() for name, tensor in net.state_dict().items()}
    batch = {"images": torch.randn(1, 4, 32, 64, 64), "regions": (torch.rand(1, 3, 32, 64, 64) > 0.9).float()}
    weights = ImportanceWeights(learning_rate=1e-2, weight_decay=5e-4)
    weights.meta_step(net, [batch, batch])
    assert weights.as_dict() != dict.fromkeys(SEQUENCES, 0.25)
    assert all(p.grad is None for p in net.parameters())
    for name, tensor in net.state_dict().items():
        torch.testing.assert_close(tensor, before[name])


def test_dice_and_pooled_hd95():
    a = np.zeros((20, 20, 20), bool)
    a[5:10, 5:10, 5:10] = True
    b = np.roll(a, 2, axis=0)
    assert dice(a, a) == 1.0 and dice(a, b) == pytest.approx(2 * 75 / 250)
    assert hd95(a, a, (1, 1, 1)) == 0.0
    assert hd95(a, b, (1, 1, 1)) == pytest.approx(2.0)
    assert hd95(a, b, (2, 1, 1)) == pytest.approx(4.0)
    empty = np.zeros_like(a)
    assert hd95(empty, empty, (1, 1, 1)) == 0.0 and hd95(a, empty, (1, 1, 1)) == EMPTY_HD95
    assert dice(empty, empty) == 1.0 and dice(a, empty) == 0.0
