"""Synthesis transforms (SynthSeg-style) on a small 3 mm toy thigh label map (fast)."""
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from scipy import ndimage

from muscle_pipeline import labels as L
from muscle_pipeline.transforms.synthesis import (RandFieldOfViewd, RandMuscleSize, SynthesizeImage,
                                                  SynthesizeImaged, synthesis_pipeline)

SP = 3.0
MUSCLES = [L.value_of(n) for n in ("vastus_lateralis_right", "vastus_medialis_right", "adductor_magnus_right",
                                   "semimembranosus_right", "rectus_femoris_right")]
FAT, SKIN, IMF, FEMUR = (L.value_of(n) for n in ("subcutaneous_fat", "skin", "intermuscular_fat", "femur_right"))
QUIET = dict(resolution_prob=0.0, thick_prob=0.0, bias_prob=0.0, noise_prob=0.0, blur_prob=0.0, gamma_prob=0.0,
             texture_std=0.0, fascia_prob=0.0, fatty_prob=0.0)


def toy_labels(shape=(48, 44, 24)) -> MetaTensor:
    """A cylinder thigh: skin, subcutaneous fat, five muscle sectors, a femur, some intermuscular fat."""
    x, y, _ = np.meshgrid(*[np.arange(n) - n / 2 + 0.5 for n in shape], indexing="ij")
    r = np.hypot(x, y) * SP
    angle = np.arctan2(y, x)
    lab = np.zeros(shape, np.int16)
    lab[r < 60] = SKIN
    lab[r < 56] = FAT
    sector = ((angle + np.pi) / (2 * np.pi) * len(MUSCLES)).astype(int) % len(MUSCLES)
    muscle = r < 44
    lab[muscle] = np.array(MUSCLES)[sector[muscle]]
    lab[(r > 30) & (r < 36) & (sector == 2)] = IMF
    lab[r < 14] = FEMUR
    affine = np.diag([SP, SP, SP, 1.0])
    return MetaTensor(torch.from_numpy(lab[None]), affine=torch.as_tensor(affine))


@pytest.fixture(scope="module")
def labels():
    return toy_labels()


def _means(img, lab, values):
    a, l = np.asarray(img)[0], np.asarray(lab)[0]
    return {v: float(a[l == v].mean()) for v in values}


def test_shape_spacing_and_metadata(labels):
    out = SynthesizeImage().set_random_state(0)(labels)
    assert isinstance(out, MetaTensor) and out.shape == labels.shape and out.dtype == torch.float32
    assert np.allclose(np.asarray(out.affine), np.asarray(labels.affine))
    assert np.isfinite(np.asarray(out)).all()


@pytest.mark.parametrize("mode, fat_brighter", [("fat_bright", True), ("fat_dark", False)])
def test_image_changes_exactly_where_labels_change(labels, mode, fat_brighter):
    t = SynthesizeImage(modality="mr", mr_mode=mode, cortex_mm_range=(100.0, 100.0), **QUIET).set_random_state(3)
    img = np.asarray(t(labels))[0]
    lab = np.asarray(labels)[0]
    for v in np.unique(lab):  # piecewise constant: one value per label (femur all cortex here)
        assert np.ptp(img[lab == v]) < 1e-5, v
    values = t.params["values"]
    m = _means(img[None], labels, [FAT, MUSCLES[0]])
    assert (m[FAT] > m[MUSCLES[0]]) == fat_brighter == (values[2] > values[1])
    # the image is constant inside a label, so every intensity edge lies on a label edge
    edges_img = np.abs(np.diff(img, axis=0)) > 1e-6
    edges_lab = np.diff(lab, axis=0) != 0
    assert not (edges_img & ~edges_lab).any()


def test_ct_ranges(labels):
    for seed in range(3):
        img = SynthesizeImage(modality="ct", resolution_prob=0.0, thick_prob=0.0, fatty_prob=0.0,
                              fascia_prob=0.0).set_random_state(seed)(labels)
        m = _means(img, labels, [0, FAT, FEMUR, *MUSCLES])
        assert abs(m[0] + 1000) < 15
        assert -130 < m[FAT] < -70
        assert all(30 <= m[v] <= 70 for v in MUSCLES)
        assert m[FEMUR] > 200


def test_mr_non_negative_and_both_fat_contrasts_reachable(labels):
    seen = set()
    t = SynthesizeImage(modality="mr", resolution_prob=0.3, thick_prob=0.3).set_random_state(7)
    for _ in range(12):
        img = t(labels)
        assert float(img.min()) >= 0
        m = _means(img, labels, [FAT, MUSCLES[0]])
        seen.add(m[FAT] > m[MUSCLES[0]])
    assert seen == {True, False}


@pytest.mark.parametrize("modality", ["mr", "ct"])
def test_muscles_tied_to_one_intensity(labels, modality):
    for seed in range(4):
        t = SynthesizeImage(modality=modality, mr_mode="random", **QUIET).set_random_state(seed)
        m = np.array(list(_means(t(labels), labels, MUSCLES).values()))
        if modality == "mr":
            assert m.max() / m.min() - 1 <= 0.065  # +-3 % each
        else:
            assert np.ptp(m) <= 3.1  # +-3 % of ~50 HU
    with pytest.raises(ValueError):
        SynthesizeImage(muscle_jitter=0.2)


def test_fascia_fatty_infiltration_and_thick_slices(labels):
    lab = np.asarray(labels)[0]
    base = dict(QUIET, modality="mr", mr_mode="fat_bright")
    plain = np.asarray(SynthesizeImage(**base).set_random_state(1)(labels))[0]
    fascia = np.asarray(SynthesizeImage(**dict(base, fascia_prob=1.0)).set_random_state(1)(labels))[0]
    changed = np.abs(fascia - plain) > 1e-6
    mid = np.where(np.isin(lab, MUSCLES), lab, 0)
    touching = (mid > 0) & (ndimage.maximum_filter(mid, 3) != ndimage.minimum_filter(np.where(mid > 0, mid, 999), 3))
    assert changed.any() and not (changed & ~touching).any()  # lines only where two muscles touch
    fatty = np.asarray(SynthesizeImage(**dict(base, fatty_prob=1.0, fatty_range=(0.5, 0.5))).set_random_state(1)(labels))[0]
    m = lab == MUSCLES[0]
    assert fatty[m].mean() > plain[m].mean() + 0.1 and fatty[m].std() > plain[m].std()
    thick = SynthesizeImage(**dict(base, thick_prob=1.0, thick_range=(9.0, 9.0), thick_axis=0,
                                   spacing_range=(1.0, 1.0))).set_random_state(1)
    img = np.asarray(thick(labels))[0]
    grad = lambda a, ax: np.abs(np.diff(a, axis=ax)).mean()  # noqa: E731
    assert grad(img, 0) < 0.8 * grad(plain, 0)  # blurred across the 9 mm axis ...
    assert grad(img, 1) > 0.95 * grad(plain, 1)  # ... and not in-plane


def test_muscle_size_changes_use_fat(labels):
    lab = np.asarray(labels)[0]
    t = RandMuscleSize(prob=1.0, max_mm=6.0, atrophy_prob=1.0).set_random_state(0)
    out = np.asarray(t(labels))[0]
    assert all(d < 0 for d in t.changes.values()) and t.changes
    for v in MUSCLES:
        assert (out == v).sum() <= (lab == v).sum()
    assert set(np.unique(lab[out != lab])) <= set(MUSCLES) and set(np.unique(out[out != lab])) == {IMF}
    g = RandMuscleSize(prob=1.0, max_mm=6.0, atrophy_prob=0.0).set_random_state(0)
    out = np.asarray(g(labels))[0]
    assert set(np.unique(lab[out != lab])) <= {FAT, IMF}  # growth only into fat
    assert (out != lab).any()


def test_dictionary_pipeline_and_field_of_view(labels):
    p = synthesis_pipeline(fov_prob=1.0).set_random_state(5)
    d = p({"label": labels.clone()})
    assert d["image"].shape == d["label"].shape == labels.shape
    assert set(np.unique(np.asarray(d["label"]))) <= set(np.unique(np.asarray(labels))) | {IMF}
    d2 = synthesis_pipeline(fov_prob=1.0).set_random_state(5)({"label": labels.clone()})
    assert torch.equal(torch.as_tensor(d["image"]), torch.as_tensor(d2["image"]))
    fov = RandFieldOfViewd("label", prob=1.0, min_fraction=0.4).set_random_state(2)
    out = fov({"label": labels.clone()})["label"]
    lo, hi = fov.slab
    assert 0 < hi - lo < labels.shape[3]
    z = np.flatnonzero(np.asarray(out)[0].any((0, 1)))
    assert z.min() >= lo and z.max() < hi
    img = SynthesizeImaged("label", "image", modality="ct").set_random_state(0)({"label": out})["image"]
    assert float(np.asarray(img)[0][:, :, :lo].max(initial=-1000)) <= -900  # air outside the field of view


def test_non_limb_tissue_fills_air_only_and_is_background_in_every_target(labels):
    """RandNonLimbTissue: blobs of soft tissue and fat in the air around the leg (more towards the
    superior end: the trunk), every existing label untouched; they are soft tissue / fat in the
    synthetic image (CT HU ranges) and background in the stage-1 groups and stage-2 structures."""
    from muscle_pipeline.cascade.training import group_lut, structure_lut
    from muscle_pipeline.cascade.model import groups_for
    from muscle_pipeline.transforms.synthesis import (CT_RANGES, NON_LIMB_FAT, NON_LIMB_SOFT, SOFT, RandNonLimbTissue,
                                                      RandNonLimbTissued)

    t = RandNonLimbTissue(prob=1.0, fill_range=(0.4, 0.4), blob_mm=15.0)
    t.set_random_state(0)
    out = t(labels)
    before, after = np.asarray(labels[0]), np.asarray(out[0])
    assert out.shape == labels.shape and np.allclose(out.affine, labels.affine)
    assert np.array_equal(after[before != 0], before[before != 0])  # the leg is untouched
    blobs = np.isin(after, [NON_LIMB_SOFT, NON_LIMB_FAT])
    air = before == 0
    assert not (blobs & ~air).any() and 0.3 < blobs.sum() / air.sum() < 0.5
    assert (after == NON_LIMB_SOFT).any() and (after == NON_LIMB_FAT).any()
    half = after.shape[2] // 2
    assert blobs[..., half:].sum() > blobs[..., :half].sum()  # weighted towards the trunk
    # a new draw each call; prob 0 leaves the labels alone
    assert not np.array_equal(np.asarray(t(labels)[0]), after)
    assert RandNonLimbTissue(prob=0.0)(labels) is labels
    # in the image: soft tissue and fat; in the targets: nothing
    img = np.asarray(SynthesizeImage(modality="ct", **QUIET)(out)[0])
    soft, fat = img[after == NON_LIMB_SOFT], img[after == NON_LIMB_FAT]
    assert CT_RANGES[SOFT][0] - 1 <= soft.mean() <= CT_RANGES[SOFT][1] + 1 and fat.mean() < -50
    structures = ["vastus_lateralis", "soleus", "gluteus_maximus"]
    for lut in (structure_lut(structures), group_lut(structures, groups_for(structures, None))):
        assert lut[NON_LIMB_SOFT] == 0 and lut[NON_LIMB_FAT] == 0
    d = RandNonLimbTissued("label", prob=1.0).set_random_state(1)({"label": labels, "other": 1})
    assert d["other"] == 1 and np.isin(np.asarray(d["label"][0]), [NON_LIMB_SOFT, NON_LIMB_FAT]).any()
