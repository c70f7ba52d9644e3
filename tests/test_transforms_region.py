"""Region (hip/thigh/leg/foot) and side recognition on real scans and phantoms."""
from __future__ import annotations

import warnings
from functools import lru_cache

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import LoadImage

from tools.phantoms import make_phantom
from muscle_pipeline.transforms.legs import MirrorToRight, leg_axes, split_legs
from muscle_pipeline.transforms.region import REGIONS, recognize_region, recognize_side, voting_copy, voting_slices

torch.set_num_threads(2)
STATIONS = [f"qmritools/wholeleg_stations_unlabeled/Join_{i}.nii.gz" for i in range(1, 8)]
THIGH = "qmritools/thigh_calf_unlabeled/test_up.nii.gz"
CALF = "qmritools/thigh_calf_unlabeled/test_low.nii.gz"
CT = "totalsegmentator/ct_abdomen_pelvis/example_ct.nii.gz"
SINGLE_CALF = "qmritools/calf_dti_labeled_half/twoLegs_x80-160.nii.gz"


@lru_cache(maxsize=None)
def _load(path: str) -> MetaTensor:
    return LoadImage(reader="NibabelReader", image_only=True, ensure_channel_first=True)(path)


def load(shared_data, rel) -> MetaTensor:
    return _load(str(shared_data / rel)).clone()


@lru_cache(maxsize=None)
def _region(path: str):
    return recognize_region(_load(path).clone())


def region_of(shared_data, rel):
    return _region(str(shared_data / rel))


def test_whole_leg_stations_run_from_foot_to_hip(shared_data):
    """Join_1 … Join_7 were acquired from the feet up to the pelvis (SOURCES.md)."""
    results = [region_of(shared_data, rel) for rel in STATIONS]
    regions = [r.region for r in results]
    print("stations:", regions, "confidence:", [round(r.confidence, 2) for r in results])
    order = [REGIONS.index(r) for r in regions]
    assert order == sorted(order), regions  # monotone foot -> leg -> thigh -> hip
    assert regions[0] == "foot" and regions[-1] == "hip"
    assert set(regions) == set(REGIONS) - {"knee"}  # no station is mostly knee
    # the knee lies in stations 4-5 (calf to thigh): their slices between calf and thigh say so
    assert [sum(v == "knee" for v in r.per_slice) >= 5 for r in results] == [False, False, False, True, True, False, False]
    assert all(r.confidence >= 0.5 for r in results)


def test_per_slice_votes_follow_anatomy_within_the_pelvis_station(shared_data):
    """Join_7 starts at the upper thighs (legs apart) and ends in the pelvis."""
    per_slice = region_of(shared_data, STATIONS[-1]).per_slice
    third = len(per_slice) // 3
    bottom = [v for v in per_slice[:third] if v]
    top = [v for v in per_slice[third:] if v]
    assert bottom.count("thigh") / len(bottom) >= 0.7
    assert top.count("hip") / len(top) >= 0.8


@pytest.mark.parametrize("rel,expected", [(THIGH, "thigh"), (CALF, "leg"), (CT, "hip")],
                         ids=["test_up", "test_low", "ct_pelvis"])
def test_single_station_scans(shared_data, rel, expected):
    result = region_of(shared_data, rel)
    assert result.region == expected
    assert result.confidence >= 0.9


def test_region_of_a_split_leg_matches_the_bilateral_scan(shared_data):
    for rel, expected in ((CALF, "leg"), (CT, "hip")):
        for crop in split_legs(load(shared_data, rel)):
            assert recognize_region(crop.image).region == expected, (rel, crop.side)


@pytest.mark.parametrize("change", ["flip_x", "permute"])
def test_region_does_not_depend_on_array_layout(shared_data, change):
    image = load(shared_data, THIGH)
    affine = np.asarray(image.affine, dtype=float)
    if change == "flip_x":
        flip = np.eye(4)
        flip[0, 0], flip[0, 3] = -1.0, image.shape[1] - 1
        moved = MetaTensor(torch.flip(image.as_tensor(), dims=(1,)), affine=torch.as_tensor(affine @ flip))
    else:
        perm = [2, 0, 1]  # new axis k = old axis perm[k]
        new_affine = affine.copy()
        new_affine[:3, :3] = affine[:3, perm]
        moved = MetaTensor(image.as_tensor().permute(0, *[p + 1 for p in perm]).contiguous(),
                           affine=torch.as_tensor(new_affine))
    assert recognize_region(moved).region == "thigh"


@pytest.mark.parametrize("region,modality,expected", [
    ("thigh", "mr", "thigh"), ("calf", "ct", "leg"), ("hip", "mr", "hip"), ("hip", "ct", "hip")])
def test_phantom_regions(region, modality, expected):
    ph = make_phantom(region, modality, shape=(128, 96, 40), orientation="LPS", seed=1)
    image = MetaTensor(torch.as_tensor(np.asarray(ph.image))[None], affine=torch.as_tensor(np.asarray(ph.image.affine)))
    assert recognize_region(image).region == expected


def test_calf_sides_confirmed_by_fibula(shared_data):
    for crop in split_legs(load(shared_data, CALF)):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no disagreement warning
            result = recognize_side(crop.image)
        assert result.side == crop.side
        assert result.anatomical == crop.side and result.agree
        # a mirrored leg is a right leg by header and by anatomy
        mirrored = recognize_side(MirrorToRight()(crop.image))
        assert mirrored.side == "right" and mirrored.anatomical == "right"


def test_thigh_sides_confirmed_by_femur_position(shared_data):
    for crop in split_legs(load(shared_data, THIGH)):
        result = recognize_side(crop.image)
        assert result.anatomical == crop.side and result.agree
        assert result.evidence["rule"] == "femur lateral to thigh centre"


def test_single_leg_side_and_a_wrong_hint_is_flagged(shared_data):
    image = load(shared_data, SINGLE_CALF)
    result = recognize_side(image)
    assert result.side == "right" and result.header_source.startswith("world x relative to isocentre")
    assert result.anatomical == "right" and result.agree
    with pytest.warns(UserWarning, match="disagrees with anatomy"):
        wrong = recognize_side(image, header_side="left")
    assert wrong.side == "left" and wrong.anatomical == "right" and wrong.agree is False


def test_voting_copy_keeps_the_voting_slices_where_they_are():
    """Issue 18: a voting copy holds the slices that vote, block-averaged in-plane; its affine puts
    each block at its voxels' centre with the axis directions kept (left stays left), and each
    kept slice within one slice of where it was (the copy's spacing along z is their mean)."""
    rng = np.random.default_rng(0)
    array = rng.normal(size=(1, 50, 100, 41)).astype(np.float32)
    # array axis 0 runs to the subject's left (-x), 1 superior (z, 100 slices), 2 anterior (y)
    affine = np.array([[-0.5, 0, 0, 10.0], [0, 0, 0.5, -20.0], [0, 2.0, 0, 5.0], [0, 0, 0, 1]])
    image = MetaTensor(torch.as_tensor(array), affine=torch.as_tensor(affine))
    copy, ks, factor = voting_copy(image, 16)
    assert factor == 3 and np.array_equal(ks, voting_slices(100, 16)) and ks.size == 16
    assert copy.shape == (1, 16, 16, 13)  # whole 1.5 mm blocks only
    assert leg_axes(copy.affine) == leg_axes(affine)
    i, k, j = 4, 7, 11
    block = array[0, 3 * i:3 * i + 3, ks[k], 3 * j:3 * j + 3]
    assert float(copy[0, i, k, j]) == pytest.approx(float(block.mean()), abs=1e-6)
    where = np.asarray(copy.affine, float) @ [i, k, j, 1]
    centre = np.mean([affine @ [3 * i + a, ks[k], 3 * j + b, 1] for a in range(3) for b in range(3)], axis=0)
    assert np.allclose(where[:2], centre[:2]) and abs(where[2] - centre[2]) <= 2.0
    # nothing to reduce: the image itself; the in-plane grid kept on request
    assert voting_copy(image, None, working_mm=None)[0] is image
    kept = voting_copy(image, 16, working_mm=None)[0]
    assert kept.shape == (1, 50, 16, 41) and np.array_equal(kept[0].numpy(), array[0][:, ks])
