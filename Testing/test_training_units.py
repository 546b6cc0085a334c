"""Training building blocks: losses against hand computations, KD terms, split, cache, sampling,
augmentation, the MetaKD meta step, settings, HD95."""

from __future__ import annotations

import json
import pickle
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.transforms import Compose
from torch.utils.data import DataLoader

from lckd.cases import CaseFiles, read_case_folder
from lckd.labels import regions_from_labels
from lckd.network import PRESETS as NETWORKS
from lckd.network import Encoded, LCKDNet, network_config
from lckd.preprocess import Normalisation
from lckd.sequences import SEQUENCES
from training.augmentation import Augmentation, FastAugmentation, make_augmentation
from training.config import PRESETS, TrainConfig, build_config, parse_overrides
from training.data import (
    CachedCase,
    IndexSampler,
    PatchDataset,
    cache_case,
    cache_folder,
    load_cached,
    load_or_make_split,
    make_split,
    read_split_file,
)
from training.distributed import rank_batch_size
from training.evaluation import EMPTY_HD95, ScoreTable, dice, hd95
from training.losses import lckd_kd, metakd_kd, segmentation_loss
from training.meta import ImportanceWeights
from training.report import markdown_table
from training.trainer import (
    TrainingStep,
    batch_subset,
    meta_subsets,
    optimisation_step,
    poly_learning_rate,
    validation_subsets,
)

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


def test_split_file_is_checked_and_kept_by_the_run(tmp_path):
    cases = _case_files(6)
    given = tmp_path / "split.json"
    given.write_text('{"validation": ["c05"], "train": ["c00", "c01", "c02"], "meta": ["c03"]}')
    split = read_split_file(given, cases)
    assert split == {"validation": ["c05"], "election": ["c00", "c01", "c02"], "meta": ["c03"],
                     "train": ["c00", "c01", "c02"]}
    run = tmp_path / "run"
    run.mkdir()
    assert load_or_make_split(run, cases, TrainConfig(), "lckd", given) == split
    assert load_or_make_split(run, cases, TrainConfig(), "lckd") == split  # resume without the file
    other = tmp_path / "other.json"
    other.write_text('{"validation": ["c04"], "train": ["c00"]}')
    with pytest.raises(Exception, match="differs from the run's saved split"):
        load_or_make_split(run, cases, TrainConfig(), "lckd", other)
    for text, message in (('{"train": ["c00"]}', "lists 'train' and 'validation'"),
                          ('{"validation": [], "train": ["c00", "c99"]}', "not labelled cases.*c99"),
                          ('{"validation": ["c00"], "train": ["c00", "c01"]}', "also trained.*c00"),
                          ('{"validation": [], "train": ["c01", "c01"]}', "names a case twice"),
                          ('{"validation": [], "train": []}', "'train' is empty"),
                          ('{"validation": [], "train": "c00"}', "must be a list"),
                          ("not json", "not a readable JSON")):
        other.write_text(text)
        with pytest.raises(Exception, match=message):
            read_split_file(other, cases)


def test_a_split_file_of_folds_needs_a_fold_and_keeps_it_on_resume(tmp_path):
    cases = _case_files(4)
    folds = tmp_path / "folds.json"
    folds.write_text('[{"validation": ["c00", "c01"], "train": ["c02", "c03"]}, '
                     '{"validation": ["c02", "c03"], "train": ["c00", "c01"]}]')
    assert read_split_file(folds, cases, 1)["validation"] == ["c02", "c03"]
    assert read_split_file(folds, cases, 1)["election"] == ["c00", "c01"]
    for fold in (None, 2, -1):
        with pytest.raises(Exception, match="holds 2 cross-validation folds; choose one with --fold K \\(0 to 1\\)"):
            read_split_file(folds, cases, fold)
    single = tmp_path / "single.json"
    single.write_text('{"validation": ["c00"], "train": ["c01"]}')
    with pytest.raises(Exception, match="holds one split, not a list of folds; --fold 0 does not apply"):
        read_split_file(single, cases, 0)
    run = tmp_path / "run"
    run.mkdir()
    assert load_or_make_split(run, cases, TrainConfig(), "lckd", folds, 0)["validation"] == ["c00", "c01"]
    assert load_or_make_split(run, cases, TrainConfig(), "lckd", folds, 0)["train"] == ["c02", "c03"]
    with pytest.raises(Exception, match="differs from the run's saved split"):
        load_or_make_split(run, cases, TrainConfig(), "lckd", folds, 1)


def test_shipped_brats2018_splits_name_disjoint_sets():
    splits = Path(__file__).resolve().parents[1] / "training" / "splits"
    names = [f"Brats18_{n}" for n in ("2013_3_1", "2013_11_1", "2013_23_1", "CBICA_ABM_1", "CBICA_ALU_1",
                                      "CBICA_AQN_1", "TCIA01_378_1", "TCIA01_425_1", "TCIA01_499_1",
                                      "TCIA02_370_1", "TCIA02_606_1", "TCIA03_265_1", "TCIA10_637_1",
                                      "TCIA10_639_1")]
    cases = [CaseFiles(name=n, folder=None, layout="brats2018", sequences={}, segmentation="seg") for n in names]
    for name in ("brats2018-by-source.json", "brats2018-seed0.json"):
        split = read_split_file(splits / name, cases)
        assert len(split["validation"]) == 3 and len(split["train"]) == 11
        assert sorted(split["validation"] + split["train"]) == sorted(names)
    # five folds: every case validated once, trained on in the other four; fold 0 is the seed-0 split
    folds = [read_split_file(splits / "brats2018-5fold.json", cases, k) for k in range(5)]
    assert sorted(n for fold in folds for n in fold["validation"]) == sorted(names)
    assert all(sorted(fold["validation"] + fold["train"]) == sorted(names) for fold in folds)
    assert folds[0] == read_split_file(splits / "brats2018-seed0.json", cases)
    assert all(sum("TCIA10" in n for n in fold["validation"]) <= 1 for fold in folds)  # the two LGG cases apart
    # the all-cases file trains on every case and validates none (Training.md, "Splits")
    everything = read_split_file(splits / "brats2018-all.json", cases)
    assert everything["validation"] == [] and everything["train"] == sorted(names)
    # the seed-0 file is what --preset brats-cpu's seeded split gives (the shipped model's split)
    seeded = make_split(cases, PRESETS["brats-cpu"], "lckd")
    assert {part: seeded[part] for part in ("validation", "train")} == \
        {part: split[part] for part in ("validation", "train")}


def test_shipped_27_case_splits_keep_the_validation_set_apart_and_nest_the_training_sets():
    splits = Path(__file__).resolve().parents[1] / "training" / "splits"
    everything = json.loads((splits / "brats2018-27-all.json").read_text())["train"]
    assert len(everything) == 27 == len(set(everything))
    cases = [CaseFiles(name=n, folder=None, layout="brats2018", sequences={}, segmentation="seg") for n in everything]
    main = read_split_file(splits / "brats2018-27-validation.json", cases)
    assert len(main["validation"]) == 7 and sorted(main["validation"] + main["train"]) == sorted(everything)
    sources = [name.split("_")[1] for name in main["validation"]]  # 2013, CBICA, TCIA01 ...
    assert sources.count("2013") == 1 and sources.count("CBICA") == 4
    assert sum("TCIA10" in n for n in main["validation"]) == 1 and sum("TCIA" in n for n in main["validation"]) == 2
    curve = [read_split_file(splits / "brats2018-27-curve.json", cases, k) for k in range(2)]
    assert [len(split["train"]) for split in curve] == [7, 14]
    assert all(split["validation"] == main["validation"] for split in curve)
    assert set(curve[0]["train"]) < set(curve[1]["train"]) < set(main["train"])


def test_bf16_autocast_on_the_cpu_computes_the_network_in_bf16():
    torch.manual_seed(0)
    net = LCKDNet(network_config("tiny")).train()
    dtypes = []
    net.decoder.register_forward_hook(lambda module, inputs, output: dtypes.append(output.dtype))
    optimiser = torch.optim.SGD(net.parameters(), lr=1e-2)
    images = torch.randn(1, 4, 32, 64, 64)
    regions = (torch.rand(1, 3, 32, 64, 64) > 0.9).float()
    for use_amp in (False, True):
        loss, _, _ = optimisation_step(TrainingStep(net), optimiser, images, regions, [True] * 4, None, 0.1, use_amp)
        assert torch.isfinite(loss) and loss.dtype == torch.float32
    assert dtypes == [torch.float32, torch.bfloat16]


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
        noise = np.random.default_rng(len(suffix)).normal(0, 3, labels.shape)[2:-2, 2:-2, 2:-2]
        image[2:-2, 2:-2, 2:-2] = 100 + 10 * labels[2:-2, 2:-2, 2:-2] + noise
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
    larger = PatchDataset([case], TrainConfig(tile_size=(48, 64, 64), foreground_fraction=0.0))[1]
    assert larger["images"].shape == (4, 48, 64, 64) and larger["regions"].shape == (3, 48, 64, 64)  # zero-padded


@pytest.mark.parametrize("chain", ["monai", "fast", "released"])
def test_rotation_pushes_no_invalid_label_values(chain):
    """Fix of method.md section 6: what rotation moves out of the volume is background, never -1."""
    config = TrainConfig(elastic_probability=1.0, tile_size=(32, 32, 32), augmentation=chain)
    augmentation = make_augmentation(config)
    labels = np.full((32, 32, 32), 4, np.uint8)
    labels[:, :16] = 1
    case = in_memory_case(np.ones((4, 32, 32, 32), np.float32), labels)
    for seed in range(12):
        images, out = augmentation(case, np.zeros(3, int), seed)
        assert set(np.unique(out)) <= {0, 1, 2, 4}
        assert out.dtype == np.uint8 and images.dtype == np.float32 and images.shape == (4, 32, 32, 32)


def test_index_sampler_resumes_where_it_stopped():
    full = list(IndexSampler(0, 6, 2, rank=1, world_size=2))
    resumed = list(IndexSampler(3, 6, 2, rank=1, world_size=2))
    assert full[6:] == resumed
    other_rank = list(IndexSampler(0, 6, 2, rank=0, world_size=2))
    assert not set(full) & set(other_rank)


def test_learning_rate_schedules():
    """released: poly to 0 over stage 1 (80k), then stage 2 restarts on the 115k curve; single: one curve."""
    released = PRESETS["paper"]
    single = replace(released, lr_schedule="single")
    assert released.lr_schedule == "released" and TrainConfig().lr_schedule == "single"
    assert poly_learning_rate(released, 0) == poly_learning_rate(single, 0) == pytest.approx(1e-2)
    assert poly_learning_rate(released, 79_000) == pytest.approx(1e-2 * (1 / 80) ** 0.9)  # 1.9e-4
    assert poly_learning_rate(single, 79_000) == pytest.approx(1e-2 * (36 / 115) ** 0.9)  # 3.5e-3
    assert poly_learning_rate(released, 80_000) == pytest.approx(3.43e-3, abs=1e-5)
    for i in (80_000, 100_000, 114_999):
        assert poly_learning_rate(released, i) == poly_learning_rate(single, i)
    assert poly_learning_rate(single, single.iterations // 2) == pytest.approx(1e-2 * 0.5 ** 0.9)
    assert parse_overrides(["lr_schedule=single"]) == {"lr_schedule": "single"}
    assert build_config("paper", parse_overrides(["lr_schedule=single"])).lr_schedule == "single"
    with pytest.raises(Exception, match="lr_schedule=cosine: choose from single, released"):
        build_config("paper", {"lr_schedule": "cosine"})


def test_schedule_and_subsets():
    config = PRESETS["paper"]
    assert batch_subset(config, "lckd", 0) == [True] * 4
    late = [batch_subset(config, "lckd", i) for i in range(config.stage1_iterations, config.stage1_iterations + 200)]
    assert all(1 <= sum(s) <= 3 for s in late)
    meta = [sum(batch_subset(config, "metakd", i)) for i in range(config.stage1_iterations,
                                                                  config.stage1_iterations + 200)]
    assert set(meta) == {1, 2, 3, 4}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_is_a_configuration_its_network_can_train(name):
    config = build_config(name, {})  # check_config: the tile is a multiple of the network's down-sampling
    assert config.preset == name and config.network in NETWORKS
    assert config.stage1_iterations <= config.iterations


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


def test_score_table_averages_cases_and_keeps_each_case():
    truth = np.zeros((3, 20, 20, 20), bool)  # ET, TC, WT channels as regions_from_labels orders them
    truth[:, 5:10, 5:10, 5:10] = True
    shifted = np.roll(truth, 2, axis=1)
    table = ScoreTable(["t1ce", "flair+t1+t1ce+t2"], spacing_mm=2.0)
    table.add("Case_A", "t1ce", truth, truth)
    table.add("Case_A", "flair+t1+t1ce+t2", truth, truth)
    table.add("Case_B", "t1ce", shifted, truth)
    table.add("Case_B", "flair+t1+t1ce+t2", np.zeros_like(truth), truth)
    result = table.result("specks", [0])
    assert result["cases"] == 2 and result["postprocess"] == "specks" and result["mirror_axes"] == [0]
    assert result["subsets"]["t1ce"]["WT"] == pytest.approx((1.0 + 0.6) / 2)
    assert result["hd95"]["t1ce"]["ET"] == pytest.approx((0.0 + 4.0) / 2)  # 2 voxels at 2 mm
    assert result["subsets"]["flair+t1+t1ce+t2"]["TC"] == pytest.approx(0.5)
    assert result["per_case"]["Case_B"]["dice"]["t1ce"] == {"ET": 0.6, "TC": 0.6, "WT": 0.6}
    assert result["per_case"]["Case_B"]["hd95"]["flair+t1+t1ce+t2"]["WT"] == EMPTY_HD95
    assert result["per_case"]["Case_A"]["dice"]["flair+t1+t1ce+t2"]["ET"] == 1.0
    report = markdown_table(result, "two cases")
    assert "| Case_A | 100.0 | 100.0 | 100.0 | 0.0 | 0.0 | 0.0 | 100.0 | 100.0 | 100.0 |" in report
    assert "| Case_B | 0.0 | 0.0 | 0.0 | 373.1 | 373.1 | 373.1 | 30.0 | 30.0 | 30.0 |" in report


# -- settings added for issue 15: their defaults keep what runs started before them did ---------------

#: brats-cpu as it was when the real-data run started; that run resumes with these exact values
BRATS_CPU = {"preset": "brats-cpu", "network": "small", "tile_size": [48, 64, 64], "spacing_mm": 2.0,
             "batch_size": 2, "learning_rate": 1e-2, "momentum": 0.99, "poly_power": 0.9,
             "stage1_iterations": 2800, "iterations": 7000, "kd_weight": 0.1, "election_every": 700,
             "meta_every_stage1": 100, "meta_every_stage2": 250, "meta_steps": 5, "meta_learning_rate": 1e-2,
             "meta_weight_decay": 5e-4, "foreground_fraction": 0.5, "augment": True, "elastic_probability": 0.2,
             "checkpoint_every": 100, "validate_every": 1400, "validation_cases": 0, "election_fraction": 0.05,
             "meta_fraction": 0.05, "validation_fraction": 0.2, "min_held_out": 1, "selection_on_training": True,
             "num_workers": 1, "mixed_precision": True, "seed": 0}
TODAY = {"lr_schedule": "single", "meta_batch_size": 0, "meta_subsets": "all", "importance_init": "zeros",
         "lckd_foreground_fraction": -1.0, "augmentation": "monai", "validation_subsets": 0, "hold_out_unused": True,
         "cpu_bf16": False}


def test_new_settings_default_to_the_behaviour_before_them():
    """A config.json written before these settings existed loads with the old behaviour."""
    resumed = TrainConfig.from_dict(dict(BRATS_CPU))
    assert {key: value for key, value in resumed.to_dict().items() if key in BRATS_CPU} == BRATS_CPU
    assert {key: getattr(resumed, key) for key in TODAY} == TODAY
    assert PRESETS["brats-cpu"] == resumed  # the preset itself is unchanged
    paper = PRESETS["paper"]
    assert (paper.lr_schedule, paper.meta_batch_size, paper.meta_subsets, paper.importance_init,
            paper.lckd_foreground_fraction, paper.augmentation) == ("released", 1, "training", "rand", 0.375,
                                                                      "released")
    assert (paper.validation_cases, paper.validation_subsets) == (10, 5)
    for key, bad in (("meta_subsets", "some"), ("importance_init", "ones"), ("augmentation", "gpu")):
        with pytest.raises(Exception, match=f"{key}={bad}: choose from"):
            build_config("tiny", {key: bad})
    with pytest.raises(Exception, match="validation_fraction=1.0"):
        build_config("tiny", {"validation_fraction": 1.0})


def test_meta_subsets_follow_training_in_stage_2_and_importance_starts_from_rand():
    paper, today = PRESETS["paper"], replace(PRESETS["paper"], meta_subsets="all")
    assert meta_subsets(paper, "metakd", 100) is None  # stage 1: all four
    assert meta_subsets(today, "metakd", 90_000) is None
    late = [mask for i in range(80_000, 80_000 + 20 * 500, 500) for mask in meta_subsets(paper, "metakd", i)]
    assert len(late) == 20 * paper.meta_steps and {sum(mask) for mask in late} == {1, 2, 3, 4}
    assert meta_subsets(paper, "metakd", 80_000) == meta_subsets(paper, "metakd", 80_000)  # seeded
    weights = ImportanceWeights(1e-2, 5e-4, init="rand", seed=3)
    torch.testing.assert_close(weights.logits.detach(), torch.rand(4, generator=torch.Generator().manual_seed(3)))
    assert float(ImportanceWeights(1e-2, 5e-4).logits.abs().sum()) == 0.0


def test_meta_step_with_a_subset_uses_encoder_of_zero_for_the_missing():
    """A missing sequence's input is zeroed, so what its channel holds cannot change the step."""
    torch.manual_seed(0)
    net = LCKDNet(NETWORKS["tiny"])
    regions = (torch.rand(1, 3, 32, 64, 64) > 0.9).float()
    images = torch.randn(1, 4, 32, 64, 64)
    garbage = images.clone()
    garbage[:, [0, 1, 3]] = torch.randn(1, 3, 32, 64, 64) * 5
    present = [[False, False, True, False]]
    results = []
    for batch in (images, garbage):
        weights = ImportanceWeights(learning_rate=1e-2, weight_decay=5e-4, init="rand", seed=1)
        weights.meta_step(net, [{"images": batch, "regions": regions}], present)
        results.append(weights.logits.detach().clone())
    torch.testing.assert_close(results[0], results[1])
    all_four = ImportanceWeights(learning_rate=1e-2, weight_decay=5e-4, init="rand", seed=1)
    all_four.meta_step(net, [{"images": images, "regions": regions}])
    assert not torch.allclose(all_four.logits.detach(), results[0])


def test_split_holds_out_nothing_when_asked_for_none():
    config = TrainConfig(validation_fraction=0.0, election_fraction=0.0, meta_fraction=0.0, min_held_out=2)
    split = make_split(_case_files(6), config)
    assert split["validation"] == [] and len(split["train"]) == 6
    assert split["election"] == split["meta"] == split["train"]
    assert make_split(_case_files(1), config)["train"] == ["c00"]


def test_paper_protocol_trains_on_every_case_with_the_released_selection_sets():
    """BraTS 2018: LCKD trains on all 285 and elects on them; MetaKD trains on 280 and meta-learns on 5."""
    protocol = PRESETS["paper-protocol"]
    lckd = make_split(_case_files(285), protocol, "lckd")
    assert lckd["validation"] == [] and len(lckd["train"]) == 285 and lckd["election"] == lckd["train"]
    assert lckd["meta"] == []
    metakd = make_split(_case_files(285), protocol, "metakd")
    assert len(metakd["train"]) == 280 and len(metakd["meta"]) == 5 and not set(metakd["meta"]) & set(metakd["train"])
    assert metakd["election"] == [] and metakd["validation"] == []
    baseline = make_split(_case_files(285), protocol, "baseline")
    assert len(baseline["train"]) == 285 and baseline["meta"] == baseline["election"] == []
    # the default keeps holding out both sets whatever the method (as runs before this setting did)
    held = make_split(_case_files(40), TrainConfig(), "lckd")
    assert len(held["meta"]) == 2 and len(held["election"]) == 2 and len(held["validation"]) == 6


def test_global_batch_splits_across_ranks_and_draws_the_single_process_samples():
    assert rank_batch_size(4, 2) == 2 and rank_batch_size(2, 1) == 2
    with pytest.raises(Exception, match="batch_size=3: the global batch must divide among the 2 processes"):
        rank_batch_size(3, 2)
    alone = list(IndexSampler(5, 9, 4, rank=0, world_size=1))
    ranks = [list(IndexSampler(5, 9, 2, rank=r, world_size=2)) for r in (0, 1)]
    for iteration in range(4):
        together = ranks[0][2 * iteration:2 * iteration + 2] + ranks[1][2 * iteration:2 * iteration + 2]
        assert together == alone[4 * iteration:4 * iteration + 4]


def test_periodic_validation_scores_a_fixed_sample_of_subsets():
    paper = PRESETS["paper"]
    chosen = validation_subsets(paper)
    assert len(chosen) == 5 and chosen == validation_subsets(paper) and len(set(chosen)) == 5
    assert len(validation_subsets(TrainConfig())) == 15


# -- the fast augmentation chain: statistically the MONAI chain, several times cheaper -----------------

def _ramp_case(shape=(32, 40, 40)) -> CachedCase:
    """Channels 0-2 hold each voxel's coordinate along D, H, W and channel 3 is 1 everywhere, so an
    output voxel's values tell where it was sampled from (linear interpolation is exact on a ramp)
    and whether it was padded (channel 3 = 0)."""
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij"))
    labels = np.zeros(shape, np.uint8)
    labels[10:22, 14:26, 14:26] = 2
    labels[13:19, 17:23, 17:23] = 4
    return in_memory_case(np.concatenate([grid, np.ones((1,) + shape, np.float32)]), labels)


def _spatial_statistics(images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per patch: padded fraction, spread of the sampled coordinates (zoom, scaling), the part of
    the displacement no affine map explains (elastic), and the tumour fraction."""
    inside = images[3] > 0.999
    coordinates = images[:3][:, inside].T
    grid = np.stack(np.nonzero(inside), axis=1).astype(np.float64)
    design = np.concatenate([grid, np.ones((len(grid), 1))], axis=1)
    fit, *_ = np.linalg.lstsq(design, coordinates, rcond=None)
    residual = coordinates - design @ fit
    return np.array([1.0 - inside.mean(), coordinates.std(axis=0).mean(), np.sqrt((residual ** 2).mean()),
                     (labels > 0).mean()])


def _spatial_draws(chain, case, tile, seeds) -> np.ndarray:
    out = []
    for seed in seeds:
        images, labels = chain(case, np.array([4, 4, 4]), seed)
        out.append(_spatial_statistics(images, labels))
    return np.array(out)


def test_fast_chain_matches_the_monai_chain_spatially():
    """Zoom, flips, rotation, scaling and the elastic field of the fast chain against MONAI's, on a
    coordinate ramp with the intensity transforms off; each statistic's mean agrees within a few
    standard errors, and the elastic residual (elastic on every patch) within 15 %."""
    case, tile = _ramp_case(), (24, 32, 32)
    for elastic in (0.2, 1.0):
        config = TrainConfig(tile_size=tile, elastic_probability=elastic)
        monai_chain = Augmentation(config)
        monai_chain.transform.transforms = monai_chain.transform.transforms[:3] + monai_chain.transform.transforms[-3:]
        fast = FastAugmentation(config)
        fast._intensity = lambda image, rng: image
        seeds = range(30) if elastic == 1.0 else range(80)
        before, after = _spatial_draws(monai_chain, case, tile, seeds), _spatial_draws(fast, case, tile, seeds)
        error = np.sqrt(before.var(axis=0) / len(before) + after.var(axis=0) / len(after))
        assert np.all(np.abs(before.mean(axis=0) - after.mean(axis=0)) <= 4 * error + 1e-3), (before.mean(0),
                                                                                             after.mean(0))
        if elastic == 1.0:
            assert after[:, 2].mean() == pytest.approx(before[:, 2].mean(), rel=0.15)
    released = FastAugmentation(TrainConfig(tile_size=tile, elastic_probability=1.0), released=True)
    released._intensity = lambda image, rng: image
    stronger = _spatial_draws(released, case, tile, range(30))
    assert stronger[:, 2].mean() > 2.5 * after[:, 2].mean()  # 4x the displacement
    assert stronger[:, 0].mean() < 0.5 * after[:, 0].mean()  # real context instead of zeros


@pytest.mark.parametrize("released", [False, True])
def test_fast_chain_keeps_labels_on_their_voxels(released):
    """Images and labels go through the same map: a channel equal to the tumour mask still matches
    the resampled labels (linear against nearest interpolation differ only at the border)."""
    labels = np.zeros((40, 48, 48), np.uint8)
    labels[8:30, 10:34, 12:40] = 2
    labels[14:24, 16:28, 18:32] = 4
    case = in_memory_case(np.repeat((labels > 0).astype(np.float32)[None], 4, axis=0), labels)
    chain = FastAugmentation(TrainConfig(tile_size=(32, 40, 40), elastic_probability=0.5), released=released)
    chain._intensity = lambda image, rng: image
    for seed in range(16):
        images, out = chain(case, np.array([4, 4, 4]), seed)
        assert ((images[0] > 0.5) == (out > 0)).mean() > 0.97, seed


def test_fast_chain_matches_the_monai_chain_in_intensity():
    """The intensity transforms (noise, blur, brightness, contrast, low resolution, gamma) on one
    patch: distributions of mean, spread, extremes and roughness agree (two-sample KS test)."""
    from scipy.stats import ks_2samp

    rng = np.random.default_rng(0)
    patch = (np.sin(np.linspace(0, 6, 32))[:, None, None] * np.cos(np.linspace(0, 4, 40))[None, :, None]
             + np.linspace(-1, 1, 40)[None, None, :]).astype(np.float32)
    image = np.stack([patch + k for k in range(4)]) + rng.normal(0, 0.05, (4, 32, 40, 40)).astype(np.float32)
    monai_chain = Augmentation(TrainConfig(tile_size=(32, 40, 40)))
    intensity = Compose(monai_chain.transform.transforms[3:9])
    fast = FastAugmentation(TrainConfig(tile_size=(32, 40, 40)))

    def statistics(out):
        return [out.mean(), out.std(), out.min(), out.max(), np.abs(np.diff(out, axis=3)).mean()]

    before, after = [], []
    for seed in range(300):
        intensity.set_random_state(seed=seed)
        before.append(statistics(np.asarray(intensity({"image": torch.from_numpy(image.copy())})["image"])))
        after.append(statistics(fast._intensity(image.copy(), np.random.default_rng(seed))))
    before, after = np.array(before), np.array(after)
    for column in range(before.shape[1]):
        assert ks_2samp(before[:, column], after[:, column]).pvalue > 0.01, column
    released = FastAugmentation(TrainConfig(tile_size=(32, 40, 40)), released=True)
    shifted = [released._intensity(image.copy(), np.random.default_rng(seed)).mean(axis=(1, 2, 3))
               - image.mean(axis=(1, 2, 3)) for seed in range(300)]
    # additive brightness moves the sequences independently; the multiplicative form cannot
    spread = np.array(shifted).std(axis=0)
    assert np.all(spread > 0.02)
