"""Cascade building blocks on small synthetic volumes: boxes, stage-1 fallback, stage-2 jitter
averaging and sliding windows, fusion, and resampling back to an arbitrarily oriented input grid.

Stage networks are replaced by "indicator" modules (logits computed voxel-wise from the image),
so every expected output is known exactly and the tests check the cascade's geometry, not training.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from muscle_pipeline.cascade import (
    Box, BoxPriors, CascadeModel, box_from_mask, Localizer, MaxProbabilityFusiond, Refiner, WorldBox, box_from_probability,
    enlarge_box, fuse_local_probabilities, fuse_probabilities, jitter_boxes,
)
from muscle_pipeline.cascade.fuse import _blocks, block_voxels_for_budget
from muscle_pipeline.cascade.refine import LocalProbability
from muscle_pipeline.labels import value_of


class IndicatorNet(torch.nn.Module):
    """Channel 0 = background; channel c (1-based) is confident where the image equals ``levels[c-1]``."""

    def __init__(self, levels):
        super().__init__()
        self.levels = list(levels)
        self.dummy = torch.nn.Parameter(torch.zeros(1))  # the cascade asks parameters() for the device

    def forward(self, x):
        chans = [torch.zeros_like(x)] + [((x - l).abs() < 0.25).float() * 20 - 10 for l in self.levels]
        return torch.cat(chans, 1)


def dice(a, b):
    a, b = np.asarray(a) != 0, np.asarray(b) != 0
    return 2 * (a & b).sum() / (a.sum() + b.sum())


# --- boxes ------------------------------------------------------------------------------------
def test_box_from_probability_ignores_a_stray_blob_and_returns_none_when_empty():
    prob = np.zeros((30, 30, 30), np.float32)
    prob[5:15, 6:16, 7:20] = 0.9
    prob[25:27, 25:27, 25:27] = 0.8  # small false positive far away
    assert box_from_probability(prob) == Box((5, 6, 7), (15, 16, 20))
    assert box_from_probability(prob, largest_component=False) == Box((5, 6, 7), (27, 27, 27))
    assert box_from_probability(np.full((5, 5, 5), 0.4)) is None


def test_random_enlargement_keeps_the_muscle_inside_and_stays_within_ratio():
    rng = np.random.default_rng(0)
    box, shape = Box((20, 30, 10), (40, 45, 20)), (100, 100, 100)
    for _ in range(200):
        e = enlarge_box(box, shape, rng, (1.0, 1.8))
        assert e.contains(box)
        ratio = np.asarray(e.shape) / np.asarray(box.shape)
        assert np.all(ratio >= 1.0) and np.all(ratio <= 1.8 + 2 / np.asarray(box.shape))
    # near the border the box is clipped to the grid but still holds the muscle
    edge = Box((0, 0, 0), (10, 10, 10))
    for e in jitter_boxes(edge, (12, 12, 12), 20, rng):
        assert e.contains(edge) and all(b <= 12 for b in e.stop) and all(a >= 0 for a in e.start)


@pytest.mark.parametrize("affine", [
    np.diag([2.0, 3.0, 4.0, 1.0]),
    np.array([[0, 0, -2.0, 50], [1.5, 0, 0, -20], [0, -3.0, 0, 10], [0, 0, 0, 1]]),  # permuted + flipped
])
def test_world_box_round_trip_on_any_orientation(affine):
    box = Box((3, 4, 5), (9, 11, 8))
    assert box.to_world(affine).to_voxels(affine, (20, 20, 20)) == box


def _priors():
    # two training cases of three muscles: a and b in group g1 (side by side), c in g2 below a
    cases = []
    for shift in (0.0, 4.0):
        s = np.array([shift, 0, 0])
        cases.append({
            "a": WorldBox(np.array([10, 10, 10.0]) + s, np.array([20, 20, 30.0]) + s),
            "b": WorldBox(np.array([20, 10, 10.0]) + s, np.array([30, 20, 30.0]) + s),
            "c": WorldBox(np.array([12, 10, -10.0]) + s, np.array([18, 16, 5.0]) + s),
        })
    return BoxPriors.fit(cases, {"g1": ["a", "b"], "g2": ["c"]}), cases


def test_priors_place_muscles_within_their_group_box():
    priors, cases = _priors()
    group = WorldBox(np.array([10, 10, 10.0]), np.array([30, 20, 30.0]))
    a = priors.muscle_box_from_group("a", group)
    np.testing.assert_allclose(a.lo, cases[0]["a"].lo)
    np.testing.assert_allclose(a.hi, cases[0]["a"].hi)


def test_stage1_neighbour_fallback_when_a_group_vanishes():
    """Group g2 has no voxel in the stage-1 map: muscle c gets its box from a and b."""
    priors, cases = _priors()
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [-19, -19, -19]  # voxel faces fall on even world mm, so the group box is exact
    image = torch.zeros((1, 40, 40, 50))
    g1 = cases[0]["a"].lo, cases[0]["b"].hi  # world extent of group g1 in case 0
    vox = WorldBox(*g1).to_voxels(affine, image.shape[1:])
    image[(0, *vox.slices)] = 1.0  # level 1 → group 1; level 2 (group 2) absent
    localizer = Localizer(IndicatorNet([1.0, 2.0]), priors, roi_size=(16, 16, 16), margin_mm=0.0)
    boxes = localizer.boxes(MetaTensor(image, affine=torch.as_tensor(affine)))
    for m in ("a", "b"):
        np.testing.assert_allclose(boxes[m].lo, cases[0][m].lo, atol=1e-6)
        np.testing.assert_allclose(boxes[m].hi, cases[0][m].hi, atol=1e-6)
    # c: centre = mean over a, b of (their centre + mean training offset), size = mean size
    np.testing.assert_allclose(boxes["c"].center, cases[0]["c"].center, atol=1e-6)
    np.testing.assert_allclose(boxes["c"].size, cases[0]["c"].size, atol=1e-6)


# --- stage 2 ----------------------------------------------------------------------------------
@pytest.mark.parametrize("patch", [(32, 32, 32), (8, 8, 8)])  # crop inside one window / tiled by sliding window
def test_refiner_averages_jittered_crops_back_on_the_grid(patch):
    image = torch.zeros((1, 40, 40, 40))
    image[0, 10:20, 12:22, 15:25] = 1.0
    box = Box((10, 12, 15), (20, 22, 25))
    refiner = Refiner({"m": IndicatorNet([1.0])}, {"m": patch}, n_jitter=6, seed=3)
    item = refiner.refine_muscle("m", image, box, np.random.default_rng(0))
    assert item.box.contains(box) and item.prob.shape == item.box.shape
    full = torch.zeros((40, 40, 40))
    full[item.box.slices] = item.prob
    truth = image[0] > 0
    assert full[truth].min() > 0.99 and full[~truth].max() < 0.01


# --- fusion -----------------------------------------------------------------------------------
def test_max_probability_fusion_with_background_threshold():
    probs = torch.zeros((2, 4, 1, 1))
    probs[0, :, 0, 0] = torch.tensor([0.9, 0.6, 0.3, 0.2])
    probs[1, :, 0, 0] = torch.tensor([0.1, 0.7, 0.45, 0.0])
    out = MaxProbabilityFusiond("p", values=[28, 30], threshold=0.4)({"p": probs})["p"]
    assert out[:, 0, 0].tolist() == [28, 30, 30, 0]
    assert fuse_probabilities(probs, [28, 30], 0.5)[:, 0, 0].tolist() == [28, 30, 0, 0]


def test_local_probabilities_are_resampled_onto_a_flipped_finer_grid():
    src_affine = np.diag([2.0, 2.0, 2.0, 1.0])
    prob = torch.zeros((10, 10, 10))
    prob[2:6, 2:6, 2:6] = 1.0
    item = LocalProbability("soleus", Box((5, 5, 5), (15, 15, 15)), prob)  # world 14..22 mm (centres) per axis
    # target: 1 mm voxels, x flipped, axes permuted
    tgt = np.array([[0, -1.0, 0, 60], [1.0, 0, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1]])
    labels = fuse_local_probabilities([item], {"soleus": 28}, src_affine, tgt, (40, 64, 40))
    idx = np.argwhere(labels.numpy() == 28)
    world = idx @ tgt[:3, :3].T + tgt[:3, 3]
    # source voxels 7..10 (centres 14..20 mm) → the 1 mm grid holds ~13..21 mm
    assert world.min(0).min() >= 12 and world.max(0).max() <= 22 and len(idx) > 400


def test_fusion_in_blocks_under_a_memory_budget_equals_fusion_at_once():
    """A tiny budget splits each muscle's resampling into many slabs; the labels must not change."""
    src_affine = np.diag([2.0, 2.0, 3.0, 1.0])
    smooth = torch.nn.functional.avg_pool3d(torch.rand(1, 1, 24, 20, 18, generator=torch.Generator().manual_seed(1)),
                                            5, stride=1, padding=2)[0, 0]
    items = [LocalProbability("soleus", Box((2, 2, 2), (22, 18, 16)), smooth[2:22, 2:18, 2:16] * 1.6),
             LocalProbability("tibialis_anterior", Box((6, 0, 4), (24, 20, 18)), smooth.flip(0)[6:24, 0:20, 4:18] * 1.6)]
    values = {"soleus": 28, "tibialis_anterior": 30}
    # target: 1 mm voxels, y flipped, axes permuted, slightly oblique
    angle = np.deg2rad(7)
    rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    tgt = np.eye(4)
    tgt[:3, :3] = rot @ np.array([[0, 0, 1.0], [-1.0, 0, 0], [0, 1.0, 0]])
    tgt[:3, 3] = [2.0, 40.0, 1.0]
    whole = fuse_local_probabilities(items, values, src_affine, tgt, (60, 48, 50))
    blocks = fuse_local_probabilities(items, values, src_affine, tgt, (60, 48, 50), memory_budget_mb=0.25)
    n_blocks = len(list(_blocks(Box((0, 0, 0), (40, 40, 40)), block_voxels_for_budget(0.25))))
    assert n_blocks >= 7  # 64000 voxels in slabs of <= 8192
    assert set(np.unique(whole.numpy())) == {0, 28, 30}
    assert (blocks.numpy() != whole.numpy()).mean() < 1e-4  # trilinear at block seams: identical up to rounding


@pytest.mark.parametrize("perm,flips", [((0, 1, 2), (1, 1, 1)), ((1, 0, 2), (-1, 1, 1)), ((2, 0, 1), (1, -1, -1))])
def test_axis_aligned_resampling_equals_monai_spatial_resample(perm, flips):
    """Issue 18: the separable trilinear resampling used for axis-aligned grids gives MONAI's
    ``SpatialResample`` values (zeros outside, same voxel-centre convention) to float rounding."""
    from monai.transforms import SpatialResample

    from muscle_pipeline.cascade.fuse import _resample_axis_aligned

    prob = torch.rand(7, 9, 6, generator=torch.Generator().manual_seed(3))
    src = np.diag([3.0, 3.0, 3.0, 1.0])
    src[:3, 3] = [4.0, -2.0, 1.0]
    tgt = np.zeros((4, 4))
    spacing = [0.74, 0.8, 0.68]
    for t, (axis, sign) in enumerate(zip(perm, flips)):
        tgt[axis, t] = sign * spacing[t]
        tgt[axis, 3] = -4.0 if sign > 0 else 28.0  # the target covers the source box and some air
    tgt[3, 3] = 1.0
    shape = (44, 40, 38)
    ours = _resample_axis_aligned(prob, src, tgt, shape)
    monai = SpatialResample(mode="bilinear", padding_mode="zeros")(
        MetaTensor(prob[None], affine=torch.as_tensor(src)), dst_affine=torch.as_tensor(tgt), spatial_size=shape)[0]
    assert ours.shape == shape and float(monai.max()) > 0.5 and (monai == 0).any()
    assert torch.allclose(ours, monai.as_tensor(), atol=1e-5)
    oblique = tgt.copy()
    oblique[:3, :3] = oblique[:3, :3] @ np.array([[1, 0.1, 0], [0, 1, 0], [0, 0, 1.0]])
    assert _resample_axis_aligned(prob, src, oblique, shape) is None


def test_fusion_only_where_the_threshold_is_reachable_gives_the_same_labels():
    """Issue 18: each muscle is resampled only around its stage-2 voxels at or above the fusion
    threshold; the labels equal MONAI's resampling of every muscle's whole box (to rounding)."""
    from monai.transforms import SpatialResample

    src_affine = np.diag([3.0, 3.0, 3.0, 1.0])
    smooth = torch.nn.functional.avg_pool3d(torch.rand(1, 1, 24, 20, 18, generator=torch.Generator().manual_seed(2)),
                                            5, stride=1, padding=2)[0, 0]
    items = [LocalProbability("soleus", Box((2, 2, 2), (22, 18, 16)), (smooth[2:22, 2:18, 2:16] - 0.3) * 2.5),
             LocalProbability("tibialis_anterior", Box((6, 0, 4), (24, 20, 18)),
                              (smooth.flip(0)[6:24, 0:20, 4:18] - 0.3) * 2.5),
             LocalProbability("gastrocnemius_medialis", Box((0, 0, 0), (5, 5, 5)), torch.full((5, 5, 5), 0.3))]
    values = {"soleus": 28, "tibialis_anterior": 30, "gastrocnemius_medialis": 22}
    tgt = np.array([[0, -0.8, 0, 70.0], [0.75, 0, 0, -1.0], [0, 0, 1.1, 2.0], [0, 0, 0, 1]])
    shape = (80, 90, 50)
    ours = fuse_local_probabilities(items, values, src_affine, tgt, shape).numpy()
    # reference: every muscle's whole box through MONAI, the most probable above 0.5 wins
    best = np.zeros(shape, np.uint8)
    labels = np.zeros(shape, np.uint8)
    for item in items:
        src = MetaTensor(item.prob[None].float(), affine=torch.as_tensor(item.box.affine_of_crop(src_affine)))
        prob = SpatialResample(mode="bilinear", padding_mode="zeros")(src, dst_affine=torch.as_tensor(tgt),
                                                                       spatial_size=shape)[0].numpy()
        q = np.round(np.clip(prob, 0, 1) * 255).astype(np.uint8)
        better = q > best
        best[better], labels[better] = q[better], values[item.muscle]
    labels[best < 128] = 0
    assert set(np.unique(ours)) == {0, 28, 30}  # the muscle that never reaches 0.5 labels nothing
    assert (ours != labels).mean() < 1e-4


# --- whole cascade ----------------------------------------------------------------------------
def _toy_cascade():
    # one muscle (soleus) in its own group; stage 1 at 4 mm, stage 2 at 2 mm
    lo, hi = np.array([-10.0, -6, -20]), np.array([10.0, 8, 16])
    priors = BoxPriors.fit([{"soleus": WorldBox(lo, hi)}], {"posterior_leg_superficial": ["soleus"]})
    localizer = Localizer(IndicatorNet([1.0]), priors, roi_size=(16, 16, 16), margin_mm=4.0)
    refiner = Refiner({"soleus": IndicatorNet([1.0])}, {"soleus": (16, 16, 16)}, n_jitter=4)
    model = CascadeModel(["soleus"], "mr", localizer, refiner, (4, 4, 4), (2, 2, 2), intensity=lambda x: x,
                         postprocess=True, closing_mm=0.0)
    return model, lo, hi


def _world_block_image(affine, shape, lo, hi):
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1).reshape(-1, 3)
    world = idx @ affine[:3, :3].T + affine[:3, 3]
    inside = np.all((world >= lo) & (world <= hi), 1).reshape(shape)
    return MetaTensor(torch.as_tensor(inside[None].astype(np.float32)), affine=torch.as_tensor(affine)), inside


@pytest.mark.parametrize("affine", [
    np.array([[1.0, 0, 0, -30], [0, 1.0, 0, -30], [0, 0, 2.0, -40], [0, 0, 0, 1]]),
    np.array([[0, 0, -1.0, 30], [-1.0, 0, 0, 30], [0, 2.0, 0, -40], [0, 0, 0, 1]]),  # LPS-like, permuted
])
def test_cascade_output_lies_on_the_input_grid_at_the_right_world_place(affine):
    model, lo, hi = _toy_cascade()
    shape = (60, 60, 40) if affine[0, 0] else (60, 40, 60)
    image, inside = _world_block_image(affine, shape, lo, hi)
    labels = model.predict(image)
    assert tuple(labels.shape) == shape and labels.dtype == torch.uint8
    np.testing.assert_allclose(np.asarray(labels.affine), affine)
    assert set(np.unique(labels.numpy())) == {0, value_of("soleus_right")}
    # stage 2 runs at 2 mm on a 1 mm input: faces may move by one input voxel, never more
    got, want = box_from_mask(labels.numpy()), box_from_mask(inside)
    assert np.abs(np.subtract(got.start, want.start)).max() <= 1 and np.abs(np.subtract(got.stop, want.stop)).max() <= 1
    assert dice(labels.numpy(), inside) > 0.85
    proba = model.predict_proba(image)
    assert tuple(proba.shape) == (1, *shape) and float(proba[0][torch.as_tensor(inside)].mean()) > 0.8
