"""Post-processing on constructed label maps where the right answer is obvious by construction."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from muscle_pipeline.postprocess import (
    CleanLabelMap,
    CleanLabelMapd,
    ball_mm,
    clean_label_map,
    close_labels,
    fill_label_holes,
    keep_largest_component,
)

ISO = (1.0, 1.0, 1.0)


def _empty(shape=(30, 30, 30), dtype=np.uint8):
    return np.zeros(shape, dtype)


def test_stray_island_removed_per_label():
    labels = _empty()
    labels[5:15, 5:15, 5:15] = 1  # main body of label 1
    labels[25:27, 25:27, 25:27] = 1  # stray island of label 1 (8 voxels)
    labels[20:22, 2:4, 2:4] = 2  # label 2: a single small component, smaller than the island
    out = clean_label_map(labels, ISO, closing_mm=0, fill_holes=False)
    assert np.all(out[25:27, 25:27, 25:27] == 0)
    assert np.array_equal(out[5:15, 5:15, 5:15], labels[5:15, 5:15, 5:15])
    assert np.all(out[20:22, 2:4, 2:4] == 2)
    assert np.count_nonzero(out) == 1000 + 8


def test_connectivity_parameter():
    labels = _empty()
    labels[5:10, 5:10, 5:10] = 1
    labels[10:12, 10:12, 10:12] = 1  # touches the big cube only at a corner
    assert np.count_nonzero(keep_largest_component(labels, connectivity=26)) == 125 + 8
    assert np.count_nonzero(keep_largest_component(labels, connectivity=6)) == 125


def test_hole_filled_unless_it_holds_another_label():
    labels = _empty()
    labels[5:15, 5:15, 5:15] = 1
    labels[8:10, 8:10, 8:10] = 0  # empty cavity: a hole
    labels[11:14, 11:14, 11:14] = 0  # second cavity, with another structure inside
    labels[12, 12, 12] = 3
    out = fill_label_holes(labels)
    assert np.all(out[8:10, 8:10, 8:10] == 1)
    assert out[12, 12, 12] == 3
    assert np.count_nonzero(out[11:14, 11:14, 11:14] == 0) == 26  # that cavity stays open


def test_gap_closed_in_mm_respecting_spacing():
    labels = _empty()
    labels[5:25, 5:25, 5:12] = 1
    labels[5:25, 5:25, 13:20] = 1  # 1-voxel gap along z at index 12
    labels[5:25, 5:7, 12] = 1  # a bridge, so both slabs are one component
    out = clean_label_map(labels, ISO, closing_mm=2.0, fill_holes=False)
    assert np.all(out[6:24, 6:24, 12] == 1)
    # with 5 mm slices a 2 mm ball has no extent along z, so that gap (5 mm) stays open
    thick = clean_label_map(labels, (1.0, 1.0, 5.0), closing_mm=2.0, fill_holes=False)
    assert np.all(thick[10:20, 10:20, 12] == 0)


def test_ball_in_mm_is_an_ellipsoid_in_voxels():
    assert ball_mm(2.0, (1.0, 1.0, 1.0)).shape == (5, 5, 5)
    assert ball_mm(2.0, (1.0, 0.5, 5.0)).shape == (5, 9, 1)
    assert ball_mm(2.0, ISO).sum() == 33  # offsets with |d|² ≤ 4: 1 + 6 + 12 + 8 + 6


def test_other_labels_never_overwritten():
    labels = _empty()
    labels[5:25, 5:25, 5:12] = 1
    labels[5:25, 5:25, 13:20] = 1
    labels[5:25, 5:7, 12] = 1
    labels[10:15, 10:15, 12] = 2  # another muscle sits in the gap
    labels[16, 16, 8] = 4  # ... and a speck inside label 1's body
    out = clean_label_map(labels, ISO, closing_mm=3.0)
    assert np.all(out[10:15, 10:15, 12] == 2)
    assert out[16, 16, 8] == 4
    changed = out != labels
    assert np.all(labels[changed] == 0), "only background voxels may change label"


def test_no_label_created_or_lost_and_dtype_kept():
    rng = np.random.default_rng(3)
    for dtype in (np.uint8, np.int16, np.int64):
        labels = rng.choice(np.array([0, 0, 0, 5, 7, 105], dtype), size=(24, 24, 16))
        out = clean_label_map(labels, (1.2, 1.2, 3.0), closing_mm=2.5)
        assert out.dtype == dtype
        assert set(np.unique(out)) == set(np.unique(labels))


def test_types_and_metadata_preserved():
    affine = torch.diag(torch.tensor([1.0, 1.0, 5.0, 1.0]))
    labels = _empty(dtype=np.int16)
    labels[5:15, 5:15, 5:15] = 3
    labels[20, 20, 20] = 3
    meta = MetaTensor(torch.from_numpy(labels), affine=affine, meta={"filename_or_obj": "case.nii.gz"})
    out = clean_label_map(meta)  # spacing from the affine
    assert isinstance(out, MetaTensor) and out.dtype == torch.int16
    assert torch.equal(out.affine, meta.affine) and out.meta["filename_or_obj"] == "case.nii.gz"
    assert out[20, 20, 20] == 0

    as_tensor = clean_label_map(torch.from_numpy(labels), ISO)
    assert type(as_tensor) is torch.Tensor and as_tensor.dtype == torch.int16


def test_closing_needs_spacing():
    with pytest.raises(ValueError, match="spacing"):
        clean_label_map(_empty(), closing_mm=2.0)
    assert np.array_equal(close_labels(_empty(), (5.0, 5.0, 5.0), 2.0), _empty())


def test_monai_transform_pair_on_channel_first_maps():
    labels = _empty()
    labels[5:15, 5:15, 5:15] = 1
    labels[8:10, 8:10, 8:10] = 0
    labels[25, 25, 25] = 1
    image = MetaTensor(torch.from_numpy(labels[None]), affine=torch.eye(4))
    out = CleanLabelMap()(image)
    assert isinstance(out, MetaTensor) and out.shape == (1, 30, 30, 30)
    assert out[0, 25, 25, 25] == 0 and torch.all(out[0, 8:10, 8:10, 8:10] == 1)
    d = CleanLabelMapd(keys="label", closing_mm=0)({"label": image, "image": "untouched"})
    assert torch.equal(d["label"], out) and d["image"] == "untouched"


@pytest.mark.parametrize("seed", range(6))
def test_box_restricted_steps_match_whole_map_references(seed):
    """Issue 18: largest component per label box and the closing (ball as a union of boxes,
    erosion only where it can add) give exactly what whole-map cc3d and
    ``ndimage.binary_closing`` with the ball give, on anisotropic grids, 2D and 3D."""
    import cc3d
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    ndim = 2 if seed % 3 == 0 else 3
    shape = tuple(int(n) for n in rng.integers(10, 36, ndim))
    labels = (ndimage.gaussian_filter(rng.random(shape), 1.5) * 9).astype(np.uint8) % 4
    labels[rng.random(shape) < 0.08] = 0
    spacing = tuple(float(s) for s in rng.uniform(0.4, 2.0, ndim))
    radius = float(rng.uniform(0.8, 4.0))

    largest = keep_largest_component(labels, connectivity=26)
    components = cc3d.connected_components(labels, connectivity=8 if ndim == 2 else 26)
    for value in range(1, 4):
        ids, counts = np.unique(components[labels == value], return_counts=True)
        if ids.size:
            assert np.array_equal(largest == value, components == ids[counts.argmax()])

    closed = close_labels(largest, spacing, radius)
    ball = ball_mm(radius, spacing)
    pad = [(n // 2, n // 2) for n in ball.shape]
    expected = largest.copy()
    for value in range(1, 4):
        mask = ndimage.binary_closing(np.pad(largest == value, pad), structure=ball)
        mask = mask[tuple(slice(p, p + n) for (p, _), n in zip(pad, shape))]
        expected[mask & (expected == 0)] = value
    assert np.array_equal(closed, expected)


@pytest.mark.parametrize("z_gap", [60, 61, 62, 63])
def test_clean_label_map_known_answer_across_packed_words(z_gap):
    """Issue 18 (bit-packed closing, multi-label components): a map whose cleaned form is
    derived by hand. Along z (80 slices) the closing's packed rows span two 64-bit words; the
    gap slices put it on and around the word boundary.

    Label 1: a slab with a 4x4x4 cavity, a 1-slice gap (bridged along y = 9) and a stray
    island; label 2: a block and a stray voxel. Closing with 1 mm on 1 mm voxels is a closing
    with the 6-neighbour cross: a gap voxel is added where all its 6 neighbours touch the slab."""
    labels = np.zeros((20, 20, 80), np.uint8)
    labels[2:10, 2:10, 5:70] = 1
    labels[4:8, 4:8, 20:24] = 0  # cavity: enclosed background
    labels[2:10, 2:9, z_gap] = 0  # gap through the slab, except the row y = 9 (one component)
    labels[15:17, 15:17, 75:77] = 1  # stray island of label 1
    labels[12:18, 2:8, 10:40] = 2
    labels[18, 18, 2] = 2  # stray voxel of label 2

    expected = np.zeros_like(labels)
    expected[2:10, 2:10, 5:70] = 1  # cavity filled (the closing fills its rim, the hole filling the rest)
    expected[2:10, 2:9, z_gap] = 0
    expected[3:9, 3:9, z_gap] = 1  # the gap closes except its rim on the open sides x = 2, 9, y = 2
    expected[12:18, 2:8, 10:40] = 2  # strays gone

    for layout in (labels, np.asfortranarray(labels)):
        out = clean_label_map(layout, ISO, closing_mm=1.0)
        assert np.array_equal(out, expected)
    # each step on its own
    largest = keep_largest_component(labels)
    without_strays = labels.copy()
    without_strays[15:17, 15:17, 75:77] = without_strays[18, 18, 2] = 0
    assert np.array_equal(largest, without_strays)
    no_closing = clean_label_map(labels, ISO, closing_mm=0)
    assert np.all(no_closing[4:8, 4:8, 20:24] == 1)  # the cavity, filled by the hole filling alone
    assert np.all(no_closing[2:10, 2:9, z_gap] == 0)  # the gap is open to the outside: no hole
    closed = close_labels(largest, ISO, 1.0)
    assert np.all(closed[3:9, 3:9, z_gap] == 1) and np.all(closed[2, 2:9, z_gap] == 0)


def test_largest_component_ties_go_to_the_first_in_memory_order():
    """Two equal islands: the one met first in C order stays (Fortran order for a Fortran map,
    as cc3d reads it)."""
    labels = np.zeros((6, 6, 6), np.uint8)
    labels[0, 0, 3] = 5  # C order (z fastest): flat index 3, before 5 * 36 + 5 * 6 = 210
    labels[5, 5, 0] = 5  # Fortran order (x fastest): 5 + 5 * 6 = 35, before 3 * 36 = 108
    c = keep_largest_component(labels)
    assert c[0, 0, 3] == 5 and c[5, 5, 0] == 0
    f = keep_largest_component(np.asfortranarray(labels))
    assert f[0, 0, 3] == 0 and f[5, 5, 0] == 5


@pytest.mark.parametrize("seed", range(4))
def test_hole_filling_matches_ndimage_fill_holes(seed):
    """Issue 18: the cavities filled per label are those of ``ndimage.binary_fill_holes`` of the
    label's mask, except a cavity holding another label's voxel."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    shape = tuple(int(n) for n in rng.integers(12, 30, 3))
    labels = (ndimage.gaussian_filter(rng.random(shape), 1.0) * 12).astype(np.uint8) % 3
    labels[rng.random(shape) < 0.05] = 0
    out = fill_label_holes(labels)
    expected = labels.copy()
    for value in (1, 2):
        mask = labels == value
        cavities, n = ndimage.label(ndimage.binary_fill_holes(mask) & ~mask)
        for k in range(1, n + 1):
            if not labels[cavities == k].any():
                expected[cavities == k] = value
    assert np.array_equal(out, expected)
