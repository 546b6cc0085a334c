"""Physical-space geometry: a blob placed in world space lands in the right place for any grid."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from conftest import synthetic_head, world_blob, world_coordinates
from lckd.geometry import Grid, from_network_axes, resample, working_grid
from lckd.io import Volume
from lckd.preparation import prepare_case, probabilities_to_reference, reference_footprint
from lckd.preprocess import Normalisation, uncrop

BLOB = (12.0, -6.0, 9.0)
# The small test lesion would fall in sparse histogram bins; keep it unclipped so it stays visible.
UNCLIPPED = Normalisation(min_bin_count=1)


def rotation(axis: int, degrees: float) -> np.ndarray:
    angle = np.deg2rad(degrees)
    c, s = np.cos(angle), np.sin(angle)
    i, j = [a for a in range(3) if a != axis]
    matrix = np.eye(3)
    matrix[i, i], matrix[i, j], matrix[j, i], matrix[j, j] = c, -s, s, c
    return matrix


def grid_affine(linear: np.ndarray, shape) -> np.ndarray:
    """Affine with ``linear`` whose voxel grid is centred on the world origin."""
    affine = np.eye(4)
    affine[:3, :3] = linear
    affine[:3, 3] = -linear @ (np.asarray(shape, float) - 1) / 2
    return affine


REFERENCES = {
    "ras": (grid_affine(np.diag([2.0, 2.0, 2.0]), (56, 64, 50)), (56, 64, 50)),
    "lps": (grid_affine(np.diag([-2.0, -2.0, 2.0]), (56, 64, 50)), (56, 64, 50)),
    "oblique": (grid_affine(rotation(2, 20) @ rotation(0, 15) @ np.diag([2.0, 2.0, 2.0]), (60, 66, 54)), (60, 66, 54)),
    "anisotropic": (grid_affine(np.diag([1.5, 1.5, 4.0]) @ np.eye(3)[[1, 0, 2]], (70, 76, 26)), (70, 76, 26)),
}


def world_centroid(data: np.ndarray, affine: np.ndarray) -> np.ndarray:
    centre = np.array(ndimage.center_of_mass(np.clip(data, 0, None)))
    return affine[:3, :3] @ centre + affine[:3, 3]


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_blob_round_trip_through_network_axes_lands_in_place(name):
    affine, shape = REFERENCES[name]
    reference = Volume(data=synthetic_head(shape, affine, blob_centre=BLOB), affine=affine)
    prepared = prepare_case({"t1ce": reference}, spacing_mm=(2.0, 2.0, 2.0), normalisation=UNCLIPPED)
    # Use the normalised image itself as a 'probability' and map it back onto the reference grid.
    image = prepared.images[2]
    half_way = (image.max() + np.median(image[image != 0])) / 2  # the blob's 0.5 level
    lesion = (image > half_way).astype(np.float32)
    back = probabilities_to_reference(np.stack([lesion] * 3), prepared)
    assert back.shape == (3,) + shape
    truth = world_blob(world_coordinates(shape, affine), BLOB, 8.0) > 0.5
    found = back[0] > 0.5
    assert np.linalg.norm(world_centroid(found.astype(float), affine) - np.array(BLOB)) < 1.5
    dice = 2 * (found & truth).sum() / (found.sum() + truth.sum())
    assert dice > 0.85, dice


def test_ras_reference_at_model_spacing_is_copied_exactly():
    affine, shape = REFERENCES["lps"]
    data = np.random.default_rng(0).random(shape).astype(np.float32)
    grid = working_grid(Grid(shape, affine), (2.0, 2.0, 2.0))
    on_grid = resample(data, affine, grid)
    back = resample(on_grid, grid.affine, Grid(shape, affine))
    np.testing.assert_array_equal(back, data)
    assert grid.shape == shape and grid.affine[0, 0] == 2.0


def test_mismatched_inputs_are_resampled_onto_the_reference():
    """FLAIR on an oblique anisotropic grid and T1ce on an LPS grid see the same world blob."""
    ref_affine, ref_shape = REFERENCES["lps"]
    other_affine, other_shape = REFERENCES["oblique"]
    volumes = {"t1ce": Volume(synthetic_head(ref_shape, ref_affine, blob_centre=BLOB), ref_affine),
               "flair": Volume(synthetic_head(other_shape, other_affine, seed=5, blob_centre=BLOB), other_affine)}
    prepared = prepare_case(volumes, (2.0, 2.0, 2.0), UNCLIPPED)
    assert prepared.reference == "t1ce" and prepared.present == [True, False, True, False]
    flair, t1ce = prepared.images[0], prepared.images[2]
    both = (flair != 0) & (t1ce != 0)
    assert np.corrcoef(flair[both], t1ce[both])[0, 1] > 0.9
    lesion_flair = np.array(ndimage.center_of_mass(flair > 2))
    lesion_t1ce = np.array(ndimage.center_of_mass(t1ce > 2))
    assert np.linalg.norm(lesion_flair - lesion_t1ce) < 1.0  # in 2 mm voxels


def test_reference_choice_and_override():
    affine, shape = REFERENCES["ras"]
    head = synthetic_head(shape, affine)
    volumes = {"flair": Volume(head, affine), "t2": Volume(head, affine), "t1": Volume(head, affine)}
    assert prepare_case(volumes, (2, 2, 2), UNCLIPPED).reference == "t1"
    assert prepare_case(volumes, (2, 2, 2), UNCLIPPED, reference="t2").reference == "t2"


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_mapping_back_only_the_brain_footprint_equals_mapping_the_whole_grid(name):
    affine, shape = REFERENCES[name]
    head = synthetic_head(shape, affine, blob_centre=BLOB)
    head[:12], head[-12:], head[:, :12], head[:, -12:] = 0, 0, 0, 0  # a brain smaller than the field of view
    reference = Volume(data=head, affine=affine)
    prepared = prepare_case({"t1ce": reference}, spacing_mm=(1.5, 2.5, 2.0), normalisation=UNCLIPPED)
    probabilities = np.random.default_rng(1).random((3,) + prepared.images.shape[1:]).astype(np.float32)
    full = from_network_axes(uncrop(probabilities, prepared.box, prepared.network_shape, fill=0.0))
    expected = np.stack([resample(region, prepared.grid.affine, prepared.reference_grid) for region in full])
    # same values up to float32 rounding of the shifted sampling coordinates
    np.testing.assert_allclose(probabilities_to_reference(probabilities, prepared), expected, rtol=0, atol=1e-6)
    footprint = reference_footprint(prepared)
    outside = np.ones(shape, bool)
    outside[footprint] = False
    assert not expected[:, outside].any()  # the skipped voxels are exactly 0 on the whole grid
    assert outside.any() or name == "oblique"  # an oblique grid's box around the rotated brain box is all of it here
