"""The phantom generator: determinism, labels, BraTS-like contrast, informativeness, layouts."""

from __future__ import annotations

import numpy as np
import pytest

from lckd.cases import find_cases
from lckd.cli import main
from lckd.io import load_volume
from lckd.labels import regions_from_labels
from lckd.phantom.anatomy import load_anatomy
from lckd.phantom.generator import make_case, write_cases
from lckd.phantom.tumour import sample_tumour
from lckd.preprocess import normalise
from lckd.sequences import REGIONS, SEQUENCES

pytestmark = pytest.mark.xdist_group("phantom")


@pytest.fixture(scope="module")
def cases():
    return [make_case(seed=11, index=i, spacing=2.0) for i in range(4)]


def best_interval_dice(values: np.ndarray, truth: np.ndarray, quantiles: int = 40) -> float:
    """Best Dice of a rule 'inside the region iff the intensity lies in [a, b]' (a, b quantiles)."""
    order = np.argsort(values, kind="stable")
    inside = np.concatenate([[0], np.cumsum(truth[order])])
    edges = np.unique(np.linspace(0, values.size, quantiles + 1).astype(int))
    total = truth.sum()
    best = 0.0
    for i, low in enumerate(edges):
        for high in edges[i + 1:]:
            hits = inside[high] - inside[low]
            best = max(best, 2.0 * hits / (high - low + total))
    return best


def test_shapes_labels_and_background(cases):
    for case in cases:
        assert case.labels.shape == (120, 120, 78) and case.labels.dtype == np.uint8
        assert set(np.unique(case.labels)) <= {0, 1, 2, 4}
        assert (case.labels == 2).any() and ((case.labels == 1) | (case.labels == 4)).any()
        brain = case.images["t1"] != 0
        assert not (case.labels[~brain] > 0).any()  # tumour only inside the brain
        for name in SEQUENCES:
            assert case.images[name].shape == case.labels.shape and case.images[name].dtype == np.int16
            assert (case.images[name][case.images["t1"] == 0] == 0).mean() > 0.99  # background exactly 0
        assert np.allclose(np.diag(case.affine)[:3], 2.0)
        assert case.stacked().shape == (4,) + case.labels.shape
        centre_x_mm = (case.affine @ np.array(case.centre_voxel + (1,)))[0]
        assert abs(centre_x_mm) > 8.0  # in one hemisphere, off the midline
        assert case.labels[case.centre_voxel] in (1, 4)  # the core is around the centre


def test_contrast_follows_brats_appearance(cases):
    """Tissue ratios on the normalised images, as radiologists describe them."""
    for case in cases:
        normal = {name: normalise(case.images[name]) for name in SEQUENCES}
        et, oedema, necrosis = (case.labels == 4), (case.labels == 2), (case.labels == 1)
        healthy = (case.labels == 0) & (case.images["t1"] != 0)

        def mean(name, mask, normal=normal):
            return float(normal[name][mask].mean())

        if et.sum() > 20:
            assert mean("t1ce", et) > mean("t1ce", healthy) + 1.5  # ET bright on T1ce
            assert mean("t1", et) < mean("t1", healthy) + 0.5  # ... but not on T1
            gap = {name: abs(mean(name, et) - mean(name, oedema)) for name in SEQUENCES}
            assert gap["t1ce"] > 2.0 * max(gap["flair"], gap["t1"], gap["t2"])  # only T1ce tells ET from oedema
        assert mean("flair", oedema) > mean("flair", healthy) + 1.0  # oedema bright on FLAIR
        assert mean("t2", oedema) > mean("t2", healthy) + 0.5  # ... and on T2
        if necrosis.sum() > 20:
            assert mean("t1ce", necrosis) < mean("t1ce", healthy)  # necrosis dark on T1ce
        csf = healthy & (normal["t2"] > np.percentile(normal["t2"][healthy], 98))
        assert mean("flair", csf) < mean("flair", healthy)  # CSF (brightest on T2) is dark on FLAIR


def test_t1ce_is_most_informative_for_et_and_tc_flair_for_wt(cases):
    scores = {region: {name: [] for name in SEQUENCES} for region in REGIONS}
    for case in cases:
        brain = case.images["t1"] != 0
        regions = regions_from_labels(case.labels)
        for name in SEQUENCES:
            values = case.images[name][brain].astype(np.float32)
            for index, region in enumerate(REGIONS):
                if regions[index][brain].any():
                    scores[region][name].append(best_interval_dice(values, regions[index][brain]))
    best = {region: max(SEQUENCES, key=lambda n: np.mean(scores[region][n])) for region in REGIONS}
    assert best == {"ET": "t1ce", "TC": "t1ce", "WT": "flair"}, scores


def test_same_seed_same_bytes_and_prefix_stability(tmp_path):
    first = write_cases(tmp_path / "a", n_cases=2, seed=5, spacing=2.0, preview=True)
    again = write_cases(tmp_path / "b", n_cases=1, seed=5, spacing=2.0, preview=True)
    assert len(list(first[0].iterdir())) == 6  # 4 sequences, labels, preview
    for path in sorted(first[0].iterdir()):
        assert path.read_bytes() == (again[0] / path.name).read_bytes(), path.name
        if path.name.endswith(".gz"):  # no time stamp or file name in the gzip header
            header = path.read_bytes()[:10]
            assert header[4:8] == b"\0\0\0\0" and not header[3] & 0x08, path.name
    other = write_cases(tmp_path / "c", n_cases=1, seed=6, spacing=2.0)
    assert (first[0] / "Phantom_0000_t1.nii.gz").read_bytes() != (other[0] / "Phantom_0000_t1.nii.gz").read_bytes()


@pytest.mark.parametrize("layout", ["brats2018", "brats2021", "brats2023"])
def test_every_layout_is_read_by_the_case_loader(tmp_path, layout):
    assert main(["phantom", str(tmp_path), "--cases", "2", "--seed", "1", "--spacing", "3", "--layout", layout]) == 0
    cases = find_cases(tmp_path)
    assert [c.layout for c in cases] == [layout, layout]
    assert all(set(c.sequences) == set(SEQUENCES) and c.segmentation is not None for c in cases)
    expected = make_case(1, spacing=3.0).labels
    labels = load_volume(cases[0].segmentation, allow_empty=True).data
    et = cases[0].et_label
    assert set(np.unique(labels)) <= {0, 1, 2, et}
    assert np.array_equal(labels == et, expected == 4) and np.array_equal(labels == 2, expected == 2)
    volume = load_volume(cases[0].sequences["t1ce"])
    assert volume.shape == (80, 80, 52) and np.allclose(volume.affine, make_case(1, spacing=3.0).affine)


@pytest.mark.parametrize("layout", ["brats2021", "brats2023"])
def test_training_loader_reads_the_layouts(tmp_path, layout):
    data = pytest.importorskip("training.data")
    from lckd.preprocess import Normalisation

    folder = write_cases(tmp_path / "cases", n_cases=1, seed=2, layout=layout, spacing=4.0)[0]
    case = find_cases(folder.parent)[0]
    cached = data.load_cached(data.cache_case(case, tmp_path / "cache", 4.0, Normalisation()))
    assert cached.images.shape[0] == 4 and set(np.unique(cached.labels)) <= {0, 1, 2, 4}
    truth = make_case(2, spacing=4.0).labels
    assert (cached.labels == 4).sum() == (truth == 4).sum() and (cached.labels == 2).sum() == (truth == 2).sum()


def test_preview_and_bad_arguments(tmp_path, capsys):
    assert main(["phantom", str(tmp_path / "p"), "--spacing", "3", "--preview"]) == 0
    preview = next((tmp_path / "p").rglob("*_preview.png"))
    assert preview.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for bad in (["--cases", "0"], ["--seed", "-1"], ["--spacing", "0"], ["--spacing", "nan"]):
        assert main(["phantom", str(tmp_path / "q")] + bad) != 0
        error = capsys.readouterr().err
        assert error.count("\n") == 1 and " ".join(bad) in error, error
    assert not (tmp_path / "q").exists()
    (tmp_path / "file").write_text("")
    assert main(["phantom", str(tmp_path / "file"), "--spacing", "4"]) != 0
    assert "not a folder" in capsys.readouterr().err
    with pytest.raises(ValueError):
        make_case(-1, spacing=4.0)


def test_mass_effect_displaces_tissue_only_when_asked():
    anatomy = load_anatomy(3.0)
    still = sample_tumour(anatomy, np.random.default_rng(3), mass_effect=False)
    moved = sample_tumour(anatomy, np.random.default_rng(3), mass_effect=True)
    assert np.array_equal(still.tissues["white"], anatomy.white)
    change = np.abs(moved.tissues["white"] - anatomy.white)
    assert change.max() > 0.2
    distance_mm = np.linalg.norm(np.argwhere(change > 0.05) - np.array(moved.centre_voxel), axis=1) * 3.0
    assert distance_mm.max() < 120.0  # local to the tumour, not a global shift


def test_full_size_case_is_on_the_brats_grid():
    case = make_case(seed=0, index=0, spacing=1.0)
    assert case.labels.shape == (240, 240, 155)
    assert np.allclose(np.diag(case.affine)[:3], 1.0)
    sizes_ml = regions_from_labels(case.labels).sum(axis=(1, 2, 3)) * case.voxel_volume_ml()
    assert 0 < sizes_ml[1] < 500  # whole tumour within BraTS' range
