"""N4 bias-field correction: a phantom with a known field, the real thigh MRI, meta and dict twin."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import LoadImage

from muscle_pipeline.transforms import N4BiasFieldCorrection, N4BiasFieldCorrectiond
from muscle_pipeline.transforms.bias import low_frequency_nonuniformity, shrink_factors_for_spacing

torch.set_num_threads(2)


def make_biased_phantom(seed: int = 0):
    """Cylinder "muscle" (200) inside a "fat" ring (400), times a smooth multiplicative field.

    Returns (MetaTensor (1, X, Y, Z), muscle mask (X, Y, Z), true field (X, Y, Z)).
    Grid 96 x 96 x 20 at 2 x 2 x 6 mm, centred on the origin.
    """
    shape, spacing = (96, 96, 20), (2.0, 2.0, 6.0)
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = [-(n - 1) * s / 2 for n, s in zip(shape, spacing)]
    index = np.indices(shape).reshape(3, -1).T
    world = (index @ affine[:3, :3].T + affine[:3, 3]).reshape(*shape, 3)
    x, y, z = world[..., 0], world[..., 1], world[..., 2]
    radius = np.hypot(x, y)
    tissue = np.where(radius < 60, 200.0, np.where(radius < 80, 400.0, 0.0))
    # Smooth field: about +-30 % across the body, as a surface-coil profile would give.
    field = np.exp(0.004 * x - 0.003 * y + 0.00004 * (x ** 2 - y ** 2) + 0.002 * z)
    rng = np.random.default_rng(seed)
    noisy = tissue * field + rng.normal(0.0, 4.0, shape) * (tissue > 0)
    image = MetaTensor(torch.as_tensor(noisy[None], dtype=torch.float32), affine=torch.as_tensor(affine),
                       meta={"filename_or_obj": "phantom.nii.gz"})
    muscle = radius < 55  # a margin from the fat boundary so partial volumes do not count
    return image, muscle, field


def coefficient_of_variation(values: np.ndarray) -> float:
    return float(values.std() / values.mean())


def test_shrink_factors_keep_fitting_voxels_roughly_isotropic():
    assert shrink_factors_for_spacing((1.5, 1.5, 6.0), 4, (320, 320, 31)) == [4, 4, 1]
    assert shrink_factors_for_spacing((1.0, 1.0, 1.0), 4, (256, 256, 100)) == [4, 4, 4]
    # Never shrink an axis below 4 voxels.
    assert shrink_factors_for_spacing((1.0, 1.0, 1.0), 4, (256, 256, 8)) == [4, 4, 2]


def test_n4_halves_muscle_cv_on_phantom_and_keeps_meta():
    image, muscle, true_field = make_biased_phantom()
    corrected, field = N4BiasFieldCorrection(return_field=True)(image)

    cv_before = coefficient_of_variation(image[0].numpy()[muscle])
    cv_after = coefficient_of_variation(corrected[0].numpy()[muscle])
    assert cv_before > 0.05  # the phantom really is biased
    assert cv_after <= 0.5 * cv_before, (cv_before, cv_after)

    # The fitted field follows the true one (up to N4's free global scale).
    log_true, log_fit = np.log(true_field[muscle]), np.log(field[0].numpy()[muscle])
    assert np.corrcoef(log_true, log_fit)[0, 1] > 0.9

    assert isinstance(corrected, MetaTensor) and isinstance(field, MetaTensor)
    assert corrected.shape == image.shape and corrected.dtype == torch.float32
    assert torch.equal(corrected.affine, image.affine)
    assert corrected.meta["filename_or_obj"] == "phantom.nii.gz"
    assert np.allclose(corrected.numpy() * field.numpy(), image.numpy(), rtol=1e-4, atol=1e-3)


def test_dict_twin_uses_mask_key_and_writes_field():
    image, muscle, _ = make_biased_phantom(seed=1)
    mask = MetaTensor(torch.as_tensor(muscle[None]), affine=image.affine)
    data = {"image": image, "body": mask}
    out = N4BiasFieldCorrectiond(keys="image", mask_key="body", field_key="bias_field")(data)
    assert set(out) == {"image", "body", "bias_field"}
    assert out["bias_field"].shape == image.shape
    expected = N4BiasFieldCorrection()(image, mask)
    assert torch.allclose(out["image"], expected, rtol=1e-4, atol=1e-3)
    assert coefficient_of_variation(out["image"][0].numpy()[muscle]) < coefficient_of_variation(image[0].numpy()[muscle])


def test_n4_reduces_low_frequency_nonuniformity_on_real_thigh_mri(shared_data):
    path = shared_data / "qmritools" / "thigh_calf_unlabeled" / "test_up.nii.gz"
    image = LoadImage(image_only=True, ensure_channel_first=True)(str(path))
    corrected = N4BiasFieldCorrection()(image)
    assert torch.equal(corrected.affine, image.affine) and corrected.shape == image.shape

    before = low_frequency_nonuniformity(image[0], image.affine)
    after = low_frequency_nonuniformity(corrected[0], image.affine)
    # Measured 0.092 -> 0.05 (spread of per-30 mm-block muscle medians); require a clear drop.
    assert after < 0.75 * before, (before, after)


def test_n4_rejects_non_channel_first_input():
    with pytest.raises(ValueError, match="channel-first"):
        N4BiasFieldCorrection()(np.ones((8, 8, 8), dtype=np.float32))


def test_skip_ct_leaves_the_real_ct_alone_and_still_corrects_mr(shared_data):
    """CT has no coil bias field: with ``skip_ct`` a real CT comes back unchanged (and a flat
    field), while an MR image is corrected exactly as without the option."""
    ct = LoadImage(image_only=True, ensure_channel_first=True)(
        str(shared_data / "totalsegmentator" / "ct_abdomen_pelvis" / "example_ct.nii.gz"))
    same, field = N4BiasFieldCorrection(skip_ct=True, return_field=True)(ct)
    assert torch.equal(same, ct.float()) and torch.equal(same.affine, ct.affine)
    assert torch.all(field == 1)
    # without the option N4 changes the CT (it fits a "field" to the anatomy)
    assert not torch.allclose(N4BiasFieldCorrection()(ct), ct.float())

    image, _, _ = make_biased_phantom(seed=2)
    assert torch.equal(N4BiasFieldCorrection(skip_ct=True)(image), N4BiasFieldCorrection()(image))
    out = N4BiasFieldCorrectiond(keys="image", skip_ct=True)({"image": ct})
    assert torch.equal(out["image"], ct.float())
