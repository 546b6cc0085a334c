"""Labels <-> regions, BraTS conventions, post-processing, normalisation and the brain crop."""

from __future__ import annotations

import numpy as np
import pytest

from lckd.labels import (
    convert_convention,
    labels_from_regions,
    region_volumes_ml,
    regions_from_labels,
)
from lckd.postprocessing import (
    drop_small_components,
    keep_largest_component,
    parse_rule,
    postprocess,
    relabel_small_enhancing,
    released_postprocess,
)
from lckd.preprocess import Normalisation, brain_box, crop, normalise, robust_maximum, uncrop
from lckd.sequences import all_subsets, presence_mask, subset_key


def test_regions_follow_brats_definitions():
    labels = np.array([0, 1, 2, 4])
    regions = regions_from_labels(labels)
    np.testing.assert_array_equal(regions[0], [0, 0, 0, 1])  # ET
    np.testing.assert_array_equal(regions[1], [0, 1, 1, 1])  # WT
    np.testing.assert_array_equal(regions[2], [0, 1, 0, 1])  # TC
    np.testing.assert_array_equal(regions_from_labels(np.array([3, 4]), et_label=3)[0], [1, 0])


def test_nested_relabel_inverts_regions_for_both_conventions():
    labels = np.random.default_rng(0).choice([0, 1, 2, 4], size=(20, 20, 20))
    np.testing.assert_array_equal(labels_from_regions(regions_from_labels(labels).astype(float)), labels)
    brats2023 = labels_from_regions(regions_from_labels(labels).astype(float), et_label=3)
    np.testing.assert_array_equal(brats2023, convert_convention(labels, 4, 3))
    assert labels_from_regions(np.full((3, 2), 0.5)).tolist() == [0, 0]  # threshold is strict


def test_inconsistent_regions_are_nested():
    # ET without TC or WT still yields ET; TC without WT yields necrosis
    regions = np.array([[0.9, 0.1], [0.1, 0.1], [0.1, 0.9]])
    assert labels_from_regions(regions).tolist() == [4, 1]


def test_small_enhancing_tumour_becomes_necrosis_by_volume():
    labels = np.zeros((10, 10, 10), np.uint8)
    labels[:2, :2, :2] = 4
    assert (relabel_small_enhancing(labels, 1.0) == 1).sum() == 8  # 8 mm^3 < 0.5 mL
    assert (relabel_small_enhancing(labels, 125.0) == 4).sum() == 8  # 8 voxels of 5 mm: 1 mL, kept
    big = np.full((10, 10, 10), 4, np.uint8)
    assert (relabel_small_enhancing(big, 1.0) == 4).all()


def test_specks_below_the_size_are_dropped():
    labels = np.zeros((20, 20, 20), np.uint8)
    labels[2:12, 2:12, 2:12] = 2  # 1000 voxels
    labels[5:8, 5:8, 5:8] = 4
    labels[15:17, 15:17, 15:17] = 1  # 8 voxels, apart from the tumour
    labels[17, 17, 17] = 4  # touches the 8-voxel speck diagonally: one 26-connected component
    cleaned = drop_small_components(labels, voxel_volume_mm3=1.0, min_ml=0.5)
    assert (cleaned[2:12, 2:12, 2:12] == labels[2:12, 2:12, 2:12]).all()
    assert cleaned[14:, 14:, 14:].sum() == 0
    assert (drop_small_components(labels, voxel_volume_mm3=100.0, min_ml=0.5) == labels).all()  # 0.9 mL: kept
    assert (drop_small_components(labels, voxel_volume_mm3=1.0) == 0).all()  # the default 2 mL: all gone
    both = postprocess(labels, "specks+et500", 8.0)  # 2 mm voxels: the tumour 8 mL, the speck 0.07 mL
    expected = cleaned.copy()
    expected[expected == 4] = 1  # the 27 enhancing voxels left (0.22 mL) fall under the BraTS rule
    assert (both == expected).all()
    assert (postprocess(labels, "none", 8.0) == labels).all()
    assert parse_rule("specks+et500") == ("specks", "et500")
    with pytest.raises(Exception, match="unknown post-processing"):
        parse_rule("biggest")


def test_largest_keeps_one_component_whatever_the_size():
    labels = np.zeros((20, 20, 20), np.uint8)
    labels[2:12, 2:12, 2:12] = 2  # 1000 voxels
    labels[5:8, 5:8, 5:8] = 4
    labels[14:19, 14:19, 14:19] = 1  # 125 voxels, apart from the tumour
    kept = keep_largest_component(labels)
    assert (kept[:13, :13, :13] == labels[:13, :13, :13]).all()
    assert kept[13:, 13:, 13:].sum() == 0
    assert kept.dtype == labels.dtype
    assert (postprocess(labels, "largest", 1.0) == kept).all()
    assert (postprocess(labels, "specks", 20.0) == labels).all()  # 20 mm^3 voxels: a 2.5 mL island passes specks
    assert (keep_largest_component(kept) == kept).all()  # one component: unchanged
    assert (keep_largest_component(np.zeros_like(labels)) == 0).all()


def released_case() -> np.ndarray:
    """A 61 mL oedema-and-necrosis tumour above the first 26 mm, a 1.6 mL blob apart from it, a 3.1 mL
    blob wholly in the first 26 mm of the third axis (2 mm voxels)."""
    labels = np.zeros((40, 40, 60), np.uint8)
    labels[5:25, 5:25, 20:39] = 2  # 7600 voxels of 8 mm^3: 60.8 mL
    labels[10:15, 10:15, 25:30] = 1
    labels[30:35, 30:35, 40:48] = 2  # 200 voxels: 1.6 mL, under min(2 mL, a tenth of 61 mL)
    labels[30:37, 30:37, 2:10] = 2  # 392 voxels: 3.1 mL, top at 20 mm
    return labels


def test_released_rule_drops_small_and_border_components():
    labels = released_case()
    out = released_postprocess(labels, (2.0, 2.0, 2.0), t1ce=None)
    assert (out[5:25, 5:25, 20:39] == labels[5:25, 5:25, 20:39]).all()  # the tumour is kept as it is
    assert out[30:, 30:].sum() == 0  # the small blob and the border blob are gone
    border_only = labels.copy()
    border_only[30:35, 30:35, 40:48] = 0
    on_1mm = released_postprocess(border_only, (2.0, 2.0, 1.0), t1ce=None)  # its top now at 10 mm: still border
    assert on_1mm[30:, 30:].sum() == 0
    tall = released_postprocess(border_only, (2.0, 2.0, 4.0), t1ce=None)  # top at 40 mm: kept
    assert (tall[30:37, 30:37, 2:10] == 2).all()
    assert (postprocess(labels, "released", 8.0) == out).all()


def test_released_rule_clusters_oedema_on_t1ce_only_when_given():
    labels = released_case()
    t1ce = np.full(labels.shape, 100.0)
    t1ce[5:25, 5:15, 20:39] = 40.0  # half of the oedema is dark on T1ce
    out = released_postprocess(labels, (2.0, 2.0, 2.0), t1ce=t1ce)
    oedema = labels == 2
    dark = np.zeros_like(oedema)
    dark[5:25, 5:15, 20:39] = True
    assert (out[oedema & dark] == 1).all() and (out[oedema & ~dark & (out > 0)] == 2).all()
    assert (released_postprocess(labels, (2.0, 2.0, 2.0), t1ce=np.full(labels.shape, 7.0))[oedema] != 1).all()
    with_et = labels.copy()
    with_et[15:25, 15:25, 30:39] = 4  # 900 enhancing voxels: over the case's 12 %, no clustering
    assert ((released_postprocess(with_et, (2.0, 2.0, 2.0), t1ce=t1ce) == 1).sum() == (with_et == 1).sum())
    small_et = labels.copy()
    small_et[20:22, 20:22, 30:32] = 4  # 8 voxels (0.06 mL): relabelled as necrosis by the BraTS rule
    assert (released_postprocess(small_et, (2.0, 2.0, 2.0), t1ce=None) == 4).sum() == 0


def test_region_volumes_in_millilitres():
    labels = np.zeros((10, 10, 10), np.uint8)
    labels[:5] = 2
    labels[:2] = 4
    volumes = region_volumes_ml(labels, voxel_volume_mm3=8.0)
    assert volumes == {"ET": 1.6, "WT": 4.0, "TC": 1.6}


def test_normalisation_zscores_brain_and_clips_outliers():
    rng = np.random.default_rng(0)
    image = np.zeros((40, 40, 40), np.float32)
    image[5:35, 5:35, 5:35] = rng.normal(500, 50, (30, 30, 30))
    image[20, 20, 20] = 1e6  # a single hot voxel
    out = normalise(image)
    brain = image != 0
    assert abs(out[brain].mean()) < 1e-3 and abs(out[brain].std() - 1) < 1e-3
    assert (out[~brain] == 0).all()
    assert out[20, 20, 20] < 50  # clipped to the robust maximum (one 1000-wide bin), not 20 000 sigmas
    assert robust_maximum(image[brain], 1000, 50) < 1e6


def test_normalisation_settings_round_trip():
    settings = Normalisation(histogram_bins=500)
    assert Normalisation.from_dict(settings.to_dict()) == settings
    with pytest.raises(ValueError):
        Normalisation.from_dict({"name": "minmax"})


def test_brain_box_crop_and_uncrop():
    image = np.zeros((30, 40, 50), np.float32)
    image[10:20, 5:15, 30:45] = 1
    box = brain_box([image], margin=2)
    assert [(s.start, s.stop) for s in box] == [(8, 22), (3, 17), (28, 47)]
    stacked = np.stack([image, image * 2])
    restored = uncrop(crop(stacked, box), box, image.shape)
    np.testing.assert_array_equal(restored, stacked)
    assert brain_box([np.zeros((3, 4, 5))]) == (slice(0, 3), slice(0, 4), slice(0, 5))


def test_subsets_and_keys():
    subsets = all_subsets()
    assert len(subsets) == 15 and len(set(subsets)) == 15
    assert subset_key(["t1ce", "flair"]) == "flair+t1ce"
    assert presence_mask(["t2"]) == [False, False, False, True]
    with pytest.raises(ValueError):
        subset_key([])
    with pytest.raises(ValueError):
        presence_mask(["dwi"])
