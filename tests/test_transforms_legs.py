"""Leg split, mirroring and merge: sides from world coordinates, exact round trips, real scans."""
from __future__ import annotations

import json
from functools import lru_cache

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Flip, LoadImage

from muscle_pipeline.labels import STRUCTURES, label
from tools.phantoms import make_phantom
from muscle_pipeline.transforms.legs import (
    MirrorToRight,
    MirrorToRightd,
    SplitLegs,
    SplitLegsd,
    leg_axes,
    merge_legs,
    owned_mask,
    plan_legs,
    split_legs,
)

torch.set_num_threads(2)

BILATERAL = [
    "qmritools/thigh_calf_unlabeled/test_up.nii.gz",
    "qmritools/thigh_calf_unlabeled/test_low.nii.gz",
    "qmritools/thigh_calf_unlabeled/dixon_water.nii.gz",
    "qmritools/thigh_calf_unlabeled/dixon_fat.nii.gz",
    *[f"qmritools/wholeleg_stations_unlabeled/Join_{i}.nii.gz" for i in range(1, 8)],
    "swastling_musclemap/thigh_dixon_unlabeled/0006-Dixon_TE_345_th.nii.gz",
    "swastling_musclemap/calf_dixon3d_unlabeled/0026-dix3d_TR23_448m_fa05_345.nii.gz",
    "totalsegmentator/ct_abdomen_pelvis/example_ct.nii.gz",
]
CT = "totalsegmentator/ct_abdomen_pelvis/example_ct.nii.gz"
CT_SEG = "totalsegmentator/ct_abdomen_pelvis/example_seg_fast_force_split.nii.gz"


@lru_cache(maxsize=None)
def _load(path: str) -> MetaTensor:
    return LoadImage(reader="NibabelReader", image_only=True, ensure_channel_first=True)(path)


def load(shared_data, rel) -> MetaTensor:
    return _load(str(shared_data / rel)).clone()


def side_lut() -> np.ndarray:
    """value -> 0 unsided/background, 1 left, 2 right (ontology values)."""
    lut = np.zeros(256, np.int64)
    for lab in (label(v) for v in range(1, 256) if _is_label(v)):
        lut[lab.value] = {"left": 1, "right": 2}.get(lab.side, 0)
    return lut


def _is_label(v):
    try:
        label(v)
        return True
    except KeyError:
        return False


def phantom(region, modality, orientation, touching, seed=0, shape=(96, 64, 40)):
    ph = make_phantom(region, modality, shape=shape, orientation=orientation, seed=seed, legs_touching=touching)
    affine = torch.as_tensor(np.asarray(ph.image.affine), dtype=torch.float64)
    image = MetaTensor(torch.as_tensor(np.asarray(ph.image), dtype=torch.float32)[None], affine=affine)
    labels = MetaTensor(torch.as_tensor(np.asarray(ph.labels).astype(np.int64))[None], affine=affine.clone())
    return image, labels


def flip_input(img: MetaTensor, axis: int) -> MetaTensor:
    """The same scan stored with one array axis reversed (affine updated: same world)."""
    n = img.shape[axis + 1]
    flip = np.eye(4)
    flip[axis, axis], flip[axis, 3] = -1.0, n - 1
    affine = np.asarray(img.affine, dtype=float) @ flip
    return MetaTensor(torch.flip(img.as_tensor(), dims=(axis + 1,)), affine=torch.as_tensor(affine))


def permute_input(img: MetaTensor, perm) -> MetaTensor:
    """The same scan with its array axes permuted (new axis k = old axis perm[k])."""
    affine = np.asarray(img.affine, dtype=float).copy()
    affine[:3, :3] = affine[:3, list(perm)]
    return MetaTensor(img.as_tensor().permute(0, *[p + 1 for p in perm]).contiguous(), affine=torch.as_tensor(affine))


def left_owned(img: MetaTensor) -> np.ndarray:
    legs = plan_legs(img)
    assert [leg["side"] for leg in legs] == ["left", "right"]
    return owned_mask(legs[0], full=True)


# ------------------------------------------------------------------------------------------
def test_leg_axes_follow_world_axes_not_array_order():
    # array axes (A, S, L): axis 2 runs towards the subject's left, axis 1 superior
    affine = np.array([[0, 0, -2.0, 100], [1.5, 0, 0, -50], [0, 3.0, 0, 10], [0, 0, 0, 1]])
    axes = leg_axes(affine)
    assert (axes.lr, axes.ap, axes.si) == (2, 0, 1)
    assert (axes.lr_sign, axes.ap_sign, axes.si_sign) == (-1, 1, 1)


@pytest.mark.parametrize(
    "region,modality,orientation,touching",
    [("calf", "mr", "RAS", False), ("thigh", "mr", "LPS", True), ("hip", "ct", "PIR", False),
     ("hip", "mr", "RAS", True), ("calf", "ct", "ASL", True)],
)
def test_phantom_split_mirror_unmirror_merge_is_exact(region, modality, orientation, touching):
    image, labels = phantom(region, modality, orientation, touching)
    sides = side_lut()[labels[0].numpy()]
    crops = split_legs(image)
    assert [c.side for c in crops] == ["left", "right"]
    for crop in crops:
        own = owned_mask(crop.info, full=True)
        wanted = sides == (1 if crop.side == "left" else 2)
        assert (wanted & own).sum() / wanted.sum() >= 0.99, crop.side

    label_crops = split_legs(labels, like=crops)
    image_mirror, label_mirror = MirrorToRight(), MirrorToRight(labels=True)
    mirrored = [label_mirror(c.image) for c in label_crops]
    mirrored_images = [image_mirror(c.image) for c in crops]
    left_m, right_m = mirrored
    own_left = owned_mask(crops[0].info)
    # the mirrored left leg is labelled like a right leg: only right/unsided values where it owns
    owned_sides = side_lut()[left_m[0].numpy()[np.flip(own_left, axis=leg_axes(crops[0].image.affine).lr)]]
    assert (owned_sides == 1).sum() <= 0.01 * (owned_sides == 2).sum()
    assert torch.equal(right_m.as_tensor(), label_crops[1].image.as_tensor())  # right legs untouched
    # image and label of the mirrored leg stay on the same grid
    assert torch.allclose(mirrored_images[0].affine, left_m.affine)

    restored = [label_mirror.inverse(m) for m in mirrored]
    merged = merge_legs(restored, labels)
    assert torch.equal(merged.as_tensor(), labels.as_tensor())
    assert torch.allclose(merged.affine, labels.affine)


def test_mirror_reflects_world_and_keeps_orientation_codes():
    image, _ = phantom("calf", "mr", "LPS", False, shape=(64, 48, 24))
    left = split_legs(image)[0]
    assert left.side == "left"
    before = np.asarray(left.image.affine, dtype=float)
    mirrored = MirrorToRight()(left.image)
    after = np.asarray(mirrored.affine, dtype=float)
    assert nib.aff2axcodes(after) == nib.aff2axcodes(before)  # LPS stays LPS
    # voxel content moves to the mirror-image world position: x -> -x, y and z unchanged
    lr = leg_axes(before).lr
    n = left.image.shape[lr + 1]
    index = np.array([3.0, 5.0, 7.0, 1.0])
    flipped = index.copy()
    flipped[lr] = n - 1 - index[lr]
    world_before = before @ index
    world_after = after @ flipped
    assert np.allclose(world_after[:3], world_before[:3] * np.array([-1, 1, 1]))
    # MONAI's Flip instead keeps world positions (affine codes flip); documented contrast
    monai_flipped = Flip(spatial_axis=lr)(left.image.clone())
    assert nib.aff2axcodes(np.asarray(monai_flipped.affine)) != nib.aff2axcodes(before)
    restored = MirrorToRight().inverse(mirrored)
    assert torch.equal(restored.as_tensor(), left.image.as_tensor())
    assert np.array_equal(np.asarray(restored.affine), before)


def test_dictionary_pipeline_inverts_through_padding():
    image, labels = phantom("thigh", "ct", "RAS", True, seed=4)
    split = SplitLegsd(keys=["image", "label"], margin_mm=15.0)
    mirror = MirrorToRightd(keys=["image", "label"], label_keys="label")
    samples = [mirror(s) for s in split({"image": image, "label": labels})]
    assert [s["leg_side"] for s in samples] == ["left", "right"]
    full_size = [split.inverse(mirror.inverse(s))["label"] for s in samples]
    assert all(tuple(f.shape) == tuple(labels.shape) for f in full_size)
    merged = merge_legs(full_size, image, legs=[s["image"].meta["leg"] for s in samples])
    assert torch.equal(merged.as_tensor(), labels.as_tensor())


@pytest.mark.parametrize("transform", ["flip0", "flip1", "flip2", "perm120", "perm021"])
def test_flipping_or_permuting_axes_keeps_sides_phantom(transform):
    image, labels = phantom("thigh", "mr", "RAS", True, seed=2)
    reference = left_owned(image)
    if transform.startswith("flip"):
        axis = int(transform[-1])
        moved = left_owned(flip_input(image, axis))
        back = np.flip(moved, axis=axis)
    else:
        perm = [int(c) for c in transform[4:]]
        moved = left_owned(permute_input(image, perm))
        back = np.transpose(moved, np.argsort(perm))
    assert (back == reference).mean() >= 0.995  # ties in a perfectly symmetric valley may move one column
    sides = side_lut()[labels[0].numpy()]
    assert ((sides == 1) & back).sum() / (sides == 1).sum() >= 0.99


@pytest.mark.parametrize("transform", ["flip0", "perm102"])
def test_flipping_or_permuting_axes_keeps_sides_ct(shared_data, transform):
    image = load(shared_data, CT)
    seg = load(shared_data, CT_SEG)[0].numpy().astype(int)
    names = {int(k): v for k, v in json.loads((shared_data / "totalsegmentator/labels_total.json").read_text()).items()}
    left_values = [v for v, n in names.items() if n.endswith("_left")]
    if transform == "flip0":
        back = np.flip(left_owned(flip_input(image, 0)), axis=0)
    else:
        back = np.transpose(left_owned(permute_input(image, [1, 0, 2])), [1, 0, 2])
    left_voxels = np.isin(seg, left_values)
    assert (left_voxels & back).sum() / left_voxels.sum() >= 0.99


def _ct_seg_in_ontology(shared_data) -> MetaTensor:
    """The TotalSegmentator CT labels that exist in our ontology, as ontology values."""
    names = json.loads((shared_data / "totalsegmentator/labels_total.json").read_text())
    by_alias = {alias: s.name for s in STRUCTURES for alias in s.aliases}
    lut = np.zeros(256, np.int64)
    for value, name in names.items():
        base, _, side = name.rpartition("_")
        candidates = [name]
        if side in ("left", "right"):
            candidates.append(f"{by_alias.get(base, base)}_{side}")
        for cand in candidates:
            if _is_name(cand):
                lut[int(value)] = label(cand).value
                break
    seg = load(shared_data, CT_SEG)
    mapped = lut[seg[0].numpy().astype(int)]
    return MetaTensor(torch.as_tensor(mapped)[None], affine=seg.affine.clone())


def _is_name(name):
    try:
        label(name)
        return True
    except KeyError:
        return False


def test_ct_pelvis_midline_split_matches_totalsegmentator_sides(shared_data):
    image = load(shared_data, CT)
    seg = load(shared_data, CT_SEG)[0].numpy().astype(int)
    names = {int(k): v for k, v in json.loads((shared_data / "totalsegmentator/labels_total.json").read_text()).items()}
    crops = split_legs(image)
    assert [c.side for c in crops] == ["left", "right"]
    assert crops[0].info["split_method"] == "midline"  # legs never apart in this field of view
    for crop in crops:
        values = [v for v, n in names.items() if n.endswith("_" + crop.side)]
        voxels = np.isin(seg, values)
        inside = (voxels & owned_mask(crop.info, full=True)).sum() / voxels.sum()
        assert inside >= 0.99, (crop.side, inside)

    labels = _ct_seg_in_ontology(shared_data)
    assert {"femur_left", "gluteus_maximus_left", "iliopsoas_right"} <= {
        label(int(v)).name for v in np.unique(labels.numpy()) if v}
    label_crops = split_legs(labels, like=crops)
    mirror = MirrorToRight(labels=True)
    mirrored = [mirror(c.image) for c in label_crops]
    # after mirroring, the left crop carries right values for the left femur
    assert (mirrored[0].numpy() == label("femur_right").value).sum() >= (labels.numpy() == label("femur_left").value).sum()
    merged = merge_legs([mirror.inverse(m) for m in mirrored], labels)
    assert torch.equal(merged.as_tensor(), labels.as_tensor())


@pytest.mark.parametrize("rel", BILATERAL, ids=[p.split("/")[-1][:16] for p in BILATERAL])
def test_real_bilateral_scans_give_two_plausible_legs(shared_data, rel):
    image = load(shared_data, rel)
    legs = plan_legs(image)
    assert [leg["side"] for leg in legs] == ["left", "right"]
    left, right = legs
    assert left["centroid_mm"][0] < right["centroid_mm"][0]  # RAS: subject's left at smaller x
    volumes = np.array([left["volume_ml"], right["volume_ml"]])
    assert volumes.min() / volumes.max() >= 0.6, volumes  # two legs of one subject
    assert volumes.min() >= 300 and volumes.max() <= 20000, volumes  # a foot up to half a pelvis
    spacing = np.linalg.norm(np.asarray(image.affine)[:3, :3], axis=0)
    lr = leg_axes(image.affine).lr
    for leg in legs:
        width_mm = (leg["roi_end"][lr] - leg["roi_start"][lr]) * spacing[lr]
        assert 60 <= width_mm <= 330, width_mm
    # every voxel owned by exactly one leg
    own = owned_mask(left, full=True).astype(int) + owned_mask(right, full=True).astype(int)
    assert (own == 1).all()


def test_single_leg_side_from_isocentre_or_hint(shared_data):
    rel = "qmritools/calf_dti_labeled_half/"
    image = load(shared_data, rel + "twoLegs_x80-160.nii.gz")
    labels = load(shared_data, rel + "labels_x80-160.nii.gz")
    crops = split_legs(image)
    assert len(crops) == 1
    assert crops[0].side == "right"  # world x > 0 (SOURCES.md: this half is the right leg)
    assert crops[0].info["side_source"].startswith("world x relative to isocentre")
    assert split_legs(image, side="left")[0].side == "left"
    assert (labels[0].numpy() > 0).sum() == (labels[0].numpy()[owned_mask(crops[0].info, full=True)] > 0).sum()
    merged = merge_legs([c.image for c in split_legs(labels, like=crops)], labels)
    assert torch.equal(merged.as_tensor(), labels.as_tensor())


def test_split_legs_array_transform_inverse_pads_back():
    image, _ = phantom("calf", "mr", "RAS", False, shape=(64, 48, 24))
    splitter = SplitLegs(margin_mm=5.0)
    crops = splitter(image)
    assert all(c.shape[1:] != image.shape[1:] for c in crops)
    for crop in crops:
        padded = splitter.inverse(crop)
        assert tuple(padded.shape) == tuple(image.shape)
        roi = tuple(slice(s, e) for s, e in zip(crop.meta["leg"]["roi_start"], crop.meta["leg"]["roi_end"]))
        assert torch.equal(padded[(slice(None),) + roi].as_tensor(), image[(slice(None),) + roi].as_tensor())
        assert torch.allclose(padded.affine, image.affine)


def test_invertd_on_a_prediction_brings_left_values_back():
    """Inference style: the prediction is inverted with the image's record (Invertd)."""
    from monai.transforms import Compose, Invertd

    image, labels = phantom("calf", "ct", "RAS", False, seed=5)
    pre = Compose([SplitLegsd(keys="image"), MirrorToRightd(keys="image", invert_as_labels=True)])
    label_crops = split_legs(labels, like=split_legs(image))
    restored = []
    for sample, label_crop in zip(pre({"image": image}), label_crops):
        # an oracle "network": the true labels as they look on the mirrored crop (right values)
        truth = MirrorToRight(side=sample["leg_side"], labels=True)(label_crop.image)
        sample["pred"] = MetaTensor(truth.as_tensor(), meta=dict(sample["image"].meta))
        inverted = Invertd(keys="pred", transform=pre, orig_keys="image", nearest_interp=True)(sample)["pred"]
        restored.append(inverted)
    assert all(tuple(r.shape) == tuple(labels.shape) for r in restored)  # padded back to the full grid
    merged = merge_legs(restored, image, legs=[c.info for c in label_crops])
    assert torch.equal(merged.as_tensor(), labels.as_tensor())


def test_segment_per_leg_runs_a_right_leg_model_on_both_legs():
    from muscle_pipeline.labels import LEFT_OFFSET
    from muscle_pipeline.transforms.legs import segment_per_leg

    image, labels = phantom("thigh", "mr", "LPS", True, seed=6)
    seen_sides = []

    def right_leg_model(crop):
        # stands in for a network trained on right legs: it must only ever see right legs
        seen_sides.append(crop.meta["leg"]["side"])
        box = tuple(slice(a, b) for a, b in zip(crop.meta["leg"]["roi_start"], crop.meta["leg"]["roi_end"]))
        truth = labels[0].numpy()[box]
        if crop.meta["leg"].get("mirrored_from") == "left":
            truth = np.flip(truth, axis=leg_axes(crop.affine).lr)
            truth = np.where(truth > LEFT_OFFSET, truth - LEFT_OFFSET, truth)  # what it would predict
        return torch.as_tensor(truth.copy())

    merged = segment_per_leg(image, right_leg_model)
    assert seen_sides == ["right", "right"]
    assert torch.equal(merged.as_tensor(), labels.as_tensor())


def _finer(img: MetaTensor, factor: int, trim: int = 2) -> MetaTensor:
    """The same scan on an in-plane grid ``factor`` times finer (the two in-plane array axes,
    whatever they are), a few voxels trimmed so that the working grid's last blocks are partial."""
    axes = leg_axes(img.affine)
    arr = img.as_tensor()
    affine = np.asarray(img.affine, dtype=float).copy()
    for ax in (axes.lr, axes.ap):
        arr = arr.repeat_interleave(factor, dim=ax + 1)
        arr = arr.narrow(ax + 1, 0, arr.shape[ax + 1] - trim)
        affine[:3, 3] -= affine[:3, ax] * (factor - 1) / (2 * factor)
        affine[:3, ax] /= factor
    return MetaTensor(arr.contiguous(), affine=torch.as_tensor(affine))


@pytest.mark.parametrize("region,modality,orientation,touching",
                         [("hip", "ct", "PIR", False), ("hip", "mr", "RAS", True), ("calf", "ct", "ASL", True)])
def test_plan_on_the_working_grid_equals_the_full_resolution_plan(region, modality, orientation, touching):
    """Issue 18: plan_legs splits on the body mask's ~2 mm working grid (expanded along left-right
    only, rows weighted along anterior-posterior) and takes boxes, volumes and centroids from it;
    all of it equals splitting the full-resolution mask, as before."""
    from muscle_pipeline.transforms.legs import _extent, body_mask, find_split, voxel_spacing

    image, _ = phantom(region, modality, orientation, touching)
    image = _finer(image, 4)  # ~1 mm in-plane: working-grid blocks of 2 voxels
    affine = np.asarray(image.affine, dtype=float)
    mask = body_mask(image)
    split = find_split(mask, affine)
    legs = plan_legs(image, margin_mm=15.0)
    assert split.n_legs == len(legs) == 2
    voxel_ml = float(abs(np.linalg.det(affine[:3, :3]))) / 1000.0
    margin = np.ceil(15.0 / voxel_spacing(affine)).astype(int)
    for leg in legs:
        assert np.allclose(leg["boundary"], split.boundary)
        first, last, centroid, count = _extent(owned_mask(leg, full=True) & mask)
        lo, hi = np.maximum(first - margin, 0), np.minimum(last + 1 + margin, mask.shape)
        lo[split.axes.si], hi[split.axes.si] = 0, mask.shape[split.axes.si]
        assert leg["roi_start"] == lo.tolist() and leg["roi_end"] == hi.tolist()
        assert leg["volume_ml"] == pytest.approx(count * voxel_ml)
        assert np.allclose(leg["centroid_mm"], affine[:3, :3] @ centroid + affine[:3, 3])


def test_side_check_copy_keeps_the_voted_slices_and_the_ownership():
    """Issue 18: the side check runs on a copy of the crop with the slices it votes with,
    block-averaged in-plane; a block belongs to the leg its centre belongs to."""
    from muscle_pipeline.segmentation import SIDE_CHECK_SLICES, _side_check_copy

    image, _ = phantom("thigh", "mr", "LPS", True, shape=(96, 64, 80))
    image = _finer(image, 6, trim=3)
    crops = split_legs(image, margin_mm=15.0)
    for crop in crops:
        copy = _side_check_copy(crop)
        axes = leg_axes(crop.image.affine)
        assert copy.shape[1 + axes.si] == SIDE_CHECK_SLICES < crop.image.shape[1 + axes.si]
        assert leg_axes(copy.affine) == axes
        leg = copy.meta["leg"]
        assert leg["side"] == crop.side and list(leg["spatial_shape"]) != list(copy.shape[1:])
        factor = round(float(np.linalg.norm(np.asarray(copy.affine)[:3, axes.lr])
                             / np.linalg.norm(np.asarray(crop.image.affine)[:3, axes.lr])))
        assert factor >= 2
        ks = np.unique(np.linspace(0, crop.image.shape[1 + axes.si] - 1, SIDE_CHECK_SLICES).round().astype(int))
        # each block is owned like the full-grid voxel at (just past) its centre
        own_copy = owned_mask(leg)
        own_full = np.take(owned_mask(crop.info), ks, axis=axes.si)
        for ax in (axes.lr, axes.ap):
            centres = np.arange(copy.shape[1 + ax]) * factor + factor // 2
            own_full = np.take(own_full, centres, axis=ax)
        assert own_copy.shape == own_full.shape
        assert (own_copy == own_full).mean() > 0.99
