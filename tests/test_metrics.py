"""Metrics on synthetic shapes whose answers are known in closed form."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.metrics import compute_iou

from muscle_pipeline.metrics import (
    ConfusionMatrix,
    average_surface_distance,
    dice,
    hausdorff95,
    label_metrics,
    per_slice_dice,
    photo_metrics,
    segmentation_metrics,
    volume_error_pct,
)


def _cube(shape=(40, 40, 40), start=(10, 10, 10), size=10, value=1, dtype=np.uint8):
    out = np.zeros(shape, dtype)
    out[tuple(slice(s, s + size) for s in start)] = value
    return out


def _ball(radius: float, shape=(48, 48, 48)) -> np.ndarray:
    centre = (np.array(shape) - 1) / 2
    grid = np.indices(shape) - centre.reshape(3, 1, 1, 1)
    return (np.sqrt((grid**2).sum(0)) <= radius).astype(np.uint8)


@pytest.mark.parametrize("k", [1, 2, 5])
def test_offset_cubes_have_known_dice(k):
    ref = _cube()
    pred = _cube(start=(10 + k, 10, 10))
    # overlap (10-k)*10*10 voxels of 1000 each: Dice = 2*(10-k)*100 / 2000
    assert dice(pred, ref, 1) == pytest.approx((10 - k) / 10, abs=1e-6)


def test_anisotropic_spacing_scales_distances_and_volumes_along_the_right_axis():
    ref = _cube()
    shifted_x = _cube(start=(12, 10, 10))
    shifted_y = _cube(start=(10, 12, 10))
    spacing = (2.0, 1.0, 1.0)
    # 100 of the 488 surface voxels (the far face, >5 %) lie 2 voxels from the other cube
    assert hausdorff95(shifted_x, ref, 1, (1.0, 1.0, 1.0)) == pytest.approx(2.0)
    assert hausdorff95(shifted_x, ref, 1, spacing) == pytest.approx(4.0)
    assert hausdorff95(shifted_y, ref, 1, spacing) == pytest.approx(2.0)
    asd_iso = average_surface_distance(shifted_x, ref, 1, (1.0, 1.0, 1.0))
    asd_x = average_surface_distance(shifted_x, ref, 1, spacing)
    assert average_surface_distance(shifted_x, ref, 1, (2.0, 2.0, 2.0)) == pytest.approx(2 * asd_iso, rel=1e-5)
    # the coarse axis is the shifted one: larger than isotropic, larger than a shift along y
    assert asd_iso < asd_x and average_surface_distance(shifted_y, ref, 1, spacing) < asd_x
    # spacing follows its axis when the arrays are transposed
    swap = lambda a: np.ascontiguousarray(a.transpose(1, 0, 2))  # noqa: E731
    assert average_surface_distance(swap(shifted_x), swap(ref), 1, (1.0, 2.0, 1.0)) == pytest.approx(asd_x, rel=1e-6)
    m = label_metrics(shifted_x, ref, 1, spacing)
    assert m["volume_ref_ml"] == pytest.approx(1000 * 2.0 / 1000)
    assert m["dice"] == pytest.approx(0.8, abs=1e-6)


def test_sphere_against_sphere_one_voxel_larger():
    ref, pred = _ball(15), _ball(16)
    asd = average_surface_distance(pred, ref, 1, (1.0, 1.0, 1.0))
    assert 0.8 < asd < 1.25  # one voxel, up to discretisation of the two surfaces
    assert average_surface_distance(pred, ref, 1, (0.5, 0.5, 0.5)) == pytest.approx(asd / 2, rel=1e-5)
    assert 0.99 <= hausdorff95(pred, ref, 1, (1.0, 1.0, 1.0)) <= 1.5
    expected = (16**3 - 15**3) / 15**3 * 100  # continuous-ball volume ratio
    assert volume_error_pct(pred, ref, 1) == pytest.approx(expected, abs=3.0)


def test_metadata_spacing_is_used_when_none_given():
    affine = np.diag([2.0, 1.0, 0.5, 1.0])
    ref = MetaTensor(torch.from_numpy(_cube()), affine=affine)
    pred = MetaTensor(torch.from_numpy(_cube(start=(12, 10, 10))), affine=affine)
    m = label_metrics(pred, ref, 1)
    assert m["volume_ref_ml"] == pytest.approx(1.0)
    assert m["hd95_mm"] == pytest.approx(4.0)


def test_empty_masks_follow_the_documented_table():
    ref, empty = _cube(), np.zeros((40, 40, 40), np.uint8)
    missed = label_metrics(empty, ref, 1)
    assert missed["dice"] == 0.0 and math.isinf(missed["asd_mm"]) and math.isinf(missed["hd95_mm"])
    assert missed["volume_error_pct"] == -100.0
    invented = label_metrics(ref, empty, 1)
    assert invented["dice"] == 0.0 and math.isinf(invented["hd95_mm"]) and math.isnan(invented["volume_error_pct"])
    absent = label_metrics(empty, empty, 1)
    assert all(math.isnan(absent[k]) for k in ("dice", "asd_mm", "hd95_mm", "volume_error_pct"))
    assert absent["volume_ref_ml"] == 0.0


def test_multilabel_maps_are_scored_per_value():
    ref = _cube(value=3) + _cube(start=(25, 25, 25), value=7)
    pred = _cube(start=(12, 10, 10), value=3) + _cube(start=(25, 25, 25), value=9)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no MONAI empty-mask warnings leak out
        table = segmentation_metrics(pred, ref, spacing=(1, 1, 1))
    assert sorted(table) == [3, 7, 9]
    assert table[3]["dice"] == pytest.approx(0.8, abs=1e-6)
    assert table[7]["dice"] == 0.0 and table[9]["dice"] == 0.0
    assert table[7]["volume_error_pct"] == -100.0


def test_per_slice_dice_along_an_axis():
    ref = _cube()
    pred = _cube(start=(12, 10, 10))
    values = per_slice_dice(pred, ref, 1, axis=0)
    assert values.shape == (40,)
    assert np.all(values[10:12] == 0) and np.all(values[20:22] == 0)
    assert np.allclose(values[12:20], 1.0)
    assert np.all(np.isnan(values[:10])) and np.all(np.isnan(values[22:]))
    # along z every slice 10..19 holds both cubes, overlapping by 8 of 10 rows
    assert np.allclose(per_slice_dice(pred, ref, 1, axis=2)[10:20], 0.8)


def test_photo_metrics_by_hand_and_against_monai():
    ref = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 0, 0], [2, 2, 0, 0]])
    pred = np.array([[0, 0, 1, 1], [0, 1, 1, 1], [2, 0, 0, 0], [2, 2, 0, 0]])
    out = photo_metrics(pred, ref, num_classes=4)
    # class 0: TP 7, ref 8, pred 8 -> 7/9; class 1: TP 4, pred 5 -> 4/5; class 2: TP 3, ref 4 -> 3/4; class 3 absent
    assert out["iou"][:3] == pytest.approx([7 / 9, 4 / 5, 3 / 4])
    assert math.isnan(out["iou"][3])
    assert out["miou"] == pytest.approx((7 / 9 + 4 / 5 + 3 / 4) / 3)
    assert out["pixel_accuracy"] == pytest.approx(14 / 16)
    assert photo_metrics(pred, ref, 4, include_background=False)["miou"] == pytest.approx((4 / 5 + 3 / 4) / 2)

    one_hot = lambda a: torch.from_numpy(np.eye(3)[a].transpose(2, 0, 1)[None])  # noqa: E731
    monai_iou = compute_iou(one_hot(pred), one_hot(ref), include_background=True)[0].numpy()
    assert out["iou"][:3] == pytest.approx(monai_iou)


def test_confusion_matrix_accumulates_images():
    rng = np.random.default_rng(0)
    preds, refs = rng.integers(0, 3, (5, 16, 16)), rng.integers(0, 3, (5, 16, 16))
    acc = ConfusionMatrix(3)
    for p, r in zip(preds, refs):
        acc.update(p, r)
    pooled = photo_metrics(preds, refs, 3)
    assert acc.result()["iou"] == pytest.approx(pooled["iou"])
    assert pooled["pixel_accuracy"] == pytest.approx(np.mean(preds == refs))
    with pytest.raises(ValueError, match="outside"):
        ConfusionMatrix(2).update(preds, refs)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shape"):
        dice(np.zeros((4, 4, 4)), np.zeros((4, 4, 5)), 1)
