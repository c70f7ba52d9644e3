"""CT windows, MR percentile clipping + z-score inside the body, named presets."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor
from monai.transforms import Compose, LoadImage

from muscle_pipeline.transforms import (
    CTWindow,
    CTWindowd,
    MRNormalize,
    MRNormalized,
    N4BiasFieldCorrectiond,
    intensity_preset,
    otsu_body_mask,
)
from muscle_pipeline.transforms.intensity import PRESETS

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def thigh_mri(shared_data):
    path = shared_data / "qmritools" / "thigh_calf_unlabeled" / "test_up.nii.gz"
    return LoadImage(image_only=True, ensure_channel_first=True)(str(path))


@pytest.fixture(scope="module")
def hip_ct(shared_data):
    folder = shared_data / "totalsegmentator" / "ct_abdomen_pelvis"
    loader = LoadImage(image_only=True, ensure_channel_first=True)
    return loader(str(folder / "example_ct.nii.gz")), loader(str(folder / "example_seg_fast_force_split.nii.gz"))


def test_ct_window_maps_the_muscle_window_to_unit_range():
    hu = MetaTensor(torch.tensor([[-1000.0, -100.0, 75.0, 250.0, 1500.0]]).reshape(1, 5, 1, 1),
                    affine=torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0])))
    out = CTWindow()(hu)
    assert torch.allclose(out.flatten(), torch.tensor([0.0, 0.0, 0.5, 1.0, 1.0]))
    assert torch.equal(out.affine, hu.affine)
    with pytest.raises(ValueError):
        CTWindow((250, -100))


def test_ct_muscle_window_separates_fat_from_muscle_on_real_ct(hip_ct):
    ct, seg = hip_ct
    out = CTWindowd(keys="image")({"image": ct})["image"]
    assert float(out.min()) == 0.0 and float(out.max()) == 1.0
    gluteus = torch.isin(seg[0], torch.tensor([80, 81]))  # gluteus maximus left/right
    muscle_median = float(out[0][gluteus].median())
    # Unenhanced muscle is ~ +40 HU -> (40 + 100) / 350 = 0.4 on the window.
    assert 0.3 < muscle_median < 0.5
    # Fat (body voxels between -190 and -30 HU) stays darker than muscle and is not all clipped.
    fat = (ct[0] > -190) & (ct[0] < -30)
    fat_values = out[0][fat]
    assert float(fat_values.median()) < muscle_median - 0.15
    assert float((fat_values > 0).float().mean()) > 0.2


def test_otsu_body_mask_finds_both_thighs_with_marrow_filled(thigh_mri):
    import cc3d

    mask = otsu_body_mask(thigh_mri[0], thigh_mri.affine)
    assert 0.08 < mask.mean() < 0.3
    # Two legs, nothing else: two blobs per slice, except the top slices where the thighs touch.
    per_slice = [cc3d.connected_components(mask[:, :, k].astype(np.uint8), return_N=True)[1]
                 for k in range(mask.shape[2])]
    assert all(n == 2 for n in per_slice[:26]) and all(n in (1, 2) for n in per_slice[26:])
    _, count = cc3d.connected_components(mask, return_N=True)
    assert count == 1  # one body: the thighs touch at the top
    # The dark femoral marrow inside each thigh is part of the body.
    values = thigh_mri[0].numpy()
    assert values[mask].min() < 0.2 * np.percentile(values[mask], 50)


def test_mr_normalize_gives_zero_mean_unit_std_inside_body(thigh_mri):
    out = MRNormalize()(thigh_mri)
    body = otsu_body_mask(thigh_mri[0], thigh_mri.affine)
    inside = out[0].numpy()[body].astype(np.float64)
    assert abs(inside.mean()) < 1e-3 and abs(inside.std() - 1.0) < 1e-3
    # Clipping: nothing lies beyond the mapped 0.5 / 99.5 percentiles of the body.
    raw = thigh_mri[0].numpy()[body]
    low, high = np.percentile(raw, [0.5, 99.5])
    mapped_high = (high - np.clip(raw, low, high).mean()) / np.clip(raw, low, high).std()
    assert float(out.max()) <= mapped_high + 1e-4
    assert torch.equal(out.affine, thigh_mri.affine) and out.shape == thigh_mri.shape


def test_mr_normalize_is_invariant_to_scanner_scale_and_offset(thigh_mri):
    body = otsu_body_mask(thigh_mri[0], thigh_mri.affine)[None]
    reference = MRNormalize()(thigh_mri, body)
    rescaled = MRNormalize()(thigh_mri * 3.7 + 12.0, body)
    assert torch.allclose(reference, rescaled, atol=1e-4)


def test_mr_normalized_uses_given_mask_and_outside_value(thigh_mri):
    body = np.zeros(thigh_mri.shape, dtype=bool)
    body[:, 60:260, 100:240, :] = True
    data = {"image": thigh_mri, "mask": torch.as_tensor(body)}
    out = MRNormalized(keys="image", mask_key="mask", outside_value=-5.0)(data)["image"]
    assert torch.all(out[~torch.as_tensor(body)] == -5.0)
    inside = out[torch.as_tensor(body)].double()
    assert abs(float(inside.mean())) < 1e-3


def test_presets_by_name_array_and_dict():
    assert set(PRESETS) >= {"ct_muscle", "ct_bone", "mr_zscore", "mr_n4_zscore"}
    assert intensity_preset("ct_muscle").window_hu == (-100.0, 250.0)
    assert intensity_preset("ct_bone", keys=["image"]).window_hu == (-500.0, 1300.0)
    assert isinstance(intensity_preset("mr_zscore"), MRNormalize)
    chained = intensity_preset("mr_n4_zscore", keys="image")
    assert isinstance(chained, Compose) and isinstance(chained.transforms[0], N4BiasFieldCorrectiond)
    with pytest.raises(ValueError, match="unknown intensity preset"):
        intensity_preset("ct_lung")


def test_presets_instantiate_from_a_bundle_config():
    config = ConfigParser({
        "window": {"_target_": "muscle_pipeline.transforms.intensity_preset", "name": "ct_muscle", "keys": ["image"]},
        "mr": {"_target_": "muscle_pipeline.transforms.MRNormalized", "keys": ["image"], "lower": 1.0},
    })
    window = config.get_parsed_content("window")
    assert isinstance(window, CTWindowd)
    image = MetaTensor(torch.tensor([-100.0, 250.0]).reshape(1, 2, 1, 1))
    assert torch.allclose(window({"image": image})["image"].flatten(), torch.tensor([0.0, 1.0]))
    assert config.get_parsed_content("mr").normalizer.lower == 1.0


def test_one_hounsfield_air_rule_for_recognition_regions_and_n4():
    """CT is told from MR by one rule (1st percentile below -500): modality recognition, region
    recognition's HU thresholds and N4's skip_ct ask the same function, so a scan cannot be
    'MR' in report.json while its bones were searched with HU thresholds."""
    from muscle_pipeline.recognition import recognize_modality
    from muscle_pipeline.transforms.intensity import HOUNSFIELD_AIR_HU, has_hounsfield_air, low_percentile

    rng = np.random.default_rng(0)
    body = rng.normal(40.0, 20.0, size=(40, 40, 20)).astype(np.float32)  # muscle-like HU
    ct = body.copy()
    ct[:6] = -1000.0  # 15 % air around the body
    mr = np.abs(body) * 10  # MR magnitudes: never negative
    slightly_negative = body - 60.0  # a shifted MR (or a CT without air): well above -500
    assert has_hounsfield_air(ct) and not has_hounsfield_air(mr) and not has_hounsfield_air(slightly_negative)
    # the threshold decides, not the absolute air value: 2 % of voxels at -600 is CT, 0.5 % is not
    edge = body.copy()
    edge.reshape(-1)[: int(0.02 * edge.size)] = HOUNSFIELD_AIR_HU - 100
    few = body.copy()
    few.reshape(-1)[: int(0.005 * few.size)] = -1000.0
    assert has_hounsfield_air(edge) and not has_hounsfield_air(few)
    # undecidable images are not CT
    nan = ct.copy()
    nan[0, 0, 0] = np.nan
    assert not has_hounsfield_air(nan) and not has_hounsfield_air(np.zeros((0, 3, 3)))
    # recognition uses the same rule and quotes the value it used
    for array, expected in ((ct, "CT"), (mr, "MR"), (edge, "CT"), (few, "MR")):
        modality, how = recognize_modality(MetaTensor(torch.from_numpy(array)))
        assert modality == expected and f"{low_percentile(array):.0f}" in how
    assert recognize_modality(MetaTensor(torch.from_numpy(ct)), dicom_modality="MR") == ("MR", "DICOM Modality tag")


def test_rand_contrast_remap_is_a_smooth_non_monotone_curve_of_the_input(thigh_mri):
    from muscle_pipeline.transforms.intensity import RandContrastRemap

    image = thigh_mri[:, ::4, ::4, ::4].float()
    low, high = float(image.min()), float(image.max())
    remap = RandContrastRemap(prob=1.0, levels=64, kernel_size=16)
    remap.set_random_state(0)
    correlations = []
    for _ in range(12):
        out = remap(image)
        assert isinstance(out, MetaTensor) and out.shape == image.shape and out.dtype == torch.float32
        assert torch.equal(out.affine, image.affine)
        assert low - 1e-3 <= float(out.min()) and float(out.max()) <= high + 1e-3
        # a function of the quantised input: one output per grey level, at most levels + 1 of them
        levels = torch.round((image - low) / (high - low) * 64)
        assert len(torch.unique(out)) <= 65
        for level in torch.unique(levels)[::8]:
            assert len(torch.unique(out[levels == level])) == 1
        # air (the darkest grey levels) stays the darkest whatever the curve: dark in every MR contrast
        assert torch.all(out[levels < 2] == low) and float(out[levels >= 2].min()) >= low
        tissue = (levels >= 2).flatten().numpy()
        correlations.append(float(np.corrcoef(out.flatten().numpy()[tissue], image.flatten().numpy()[tissue])[0, 1]))
    # inside the body contrast is not just rescaled: some draws turn it round (fat-bright becomes
    # fat-dark), others not
    assert min(correlations) < -0.2 and max(correlations) > 0.2, correlations
    # the same seed draws the same curves
    again = RandContrastRemap(prob=1.0)
    again.set_random_state(0)
    assert torch.equal(again(image), RandContrastRemap(prob=1.0).set_random_state(0)(image))
    # prob 0 leaves the image alone
    assert RandContrastRemap(prob=0.0)(image) is image


def test_rand_contrast_remapd_remaps_the_image_keys_only(thigh_mri):
    from muscle_pipeline.transforms.intensity import RandContrastRemapd

    image = thigh_mri[:, ::4, ::4, ::4].float()
    label = (image > image.mean()).float()
    twin = RandContrastRemapd("image", prob=1.0)
    twin.set_random_state(1)
    out = twin({"image": image, "label": label})
    assert out["label"] is label
    assert not torch.equal(out["image"], image) and out["image"].shape == image.shape
    assert RandContrastRemapd("image", prob=0.0)({"image": image})["image"] is image
    with pytest.raises(ValueError):
        RandContrastRemapd("image", levels=8, kernel_size=16)
