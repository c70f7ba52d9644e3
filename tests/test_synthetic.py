"""Synthetic phantoms: grid/affine, anatomy (every muscle on both sides, the sides differing as
the recorded per-side draws say, in its compartment, left at smaller world x), determinism,
orientation invariance, contrast (MR bias, CT HU), touching legs, muscle subsets, NIfTI round
trip, slab-size independence."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.transforms import Orientation
from nibabel.orientations import aff2axcodes

from muscle_pipeline import labels as ontology
from tools.phantoms import available_muscles, make_phantom, save_phantom

SMALL = (96, 64, 40)


@pytest.fixture(scope="module")
def phantoms():
    cache = {}

    def get(region, modality="mr", **kw):
        kw = {"shape": SMALL, "seed": 0, **kw}  # make_phantom's default seed: one cache entry
        key = (region, modality, tuple(sorted(kw.items())))
        if key not in cache:
            cache[key] = make_phantom(region, modality, **kw)
        return cache[key]

    return get


def world_centroids(ph) -> dict[str, np.ndarray]:
    """World RAS centroid (mm) of every label in the map."""
    lab = np.asarray(ph.labels)
    ijk = np.indices(lab.shape).reshape(3, -1)
    flat = lab.reshape(-1)
    counts = np.bincount(flat, minlength=256)
    sums = np.stack([np.bincount(flat, weights=ijk[a], minlength=256) for a in range(3)])
    out = {}
    for v in np.flatnonzero(counts):
        if v:
            c = sums[:, v] / counts[v]
            out[ontology.name_of(int(v))] = ph.affine[:3, :3] @ c + ph.affine[:3, 3]
    return out


def body_frame(ph, point):
    """World point -> un-rotated body frame (mm about the FOV centre) using the phantom's info."""
    r = np.asarray(ph.info["rotation_matrix"])
    return r.T @ (np.asarray(point) - np.asarray(ph.info["center_mm"]))


# ------------------------------------------------------------------------------- grid / affine
@pytest.mark.parametrize("orientation", ["RAS", "LPS", "PIR"])
def test_image_and_labels_share_grid(orientation):
    shape = (40, 30, 20)
    ph = make_phantom("calf", "ct", shape=shape, spacing=(2.0, 3.0, 4.0), orientation=orientation, seed=1)
    assert tuple(ph.image.shape) == shape and tuple(ph.labels.shape) == shape
    assert ph.image.dtype == torch.float32 and ph.labels.dtype == torch.uint8
    np.testing.assert_array_equal(np.asarray(ph.image.affine), np.asarray(ph.labels.affine))
    np.testing.assert_allclose(np.asarray(ph.image.affine), ph.affine)
    assert "".join(aff2axcodes(ph.affine)) == orientation
    np.testing.assert_allclose(np.linalg.norm(ph.affine[:3, :3], axis=0), (2.0, 3.0, 4.0))
    # the FOV centre sits at the requested world centre (default origin)
    centre_voxel = (np.asarray(shape) - 1) / 2
    np.testing.assert_allclose(ph.affine[:3, :3] @ centre_voxel + ph.affine[:3, 3], 0, atol=1e-9)
    # every value is an ontology label
    for v in np.unique(np.asarray(ph.labels)):
        if v:
            ontology.name_of(int(v))


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="orientation"):
        make_phantom("thigh", shape=(8, 8, 8), orientation="RAX")
    with pytest.raises(ValueError, match="orientation"):
        make_phantom("thigh", shape=(8, 8, 8), orientation="RRS")
    with pytest.raises(ValueError, match="region"):
        make_phantom("arm", shape=(8, 8, 8))
    with pytest.raises(ValueError, match="modality"):
        make_phantom("thigh", "pet", shape=(8, 8, 8))
    with pytest.raises(ValueError, match="not modelled"):
        make_phantom("thigh", shape=(8, 8, 8), muscles=["soleus"])
    with pytest.raises(ValueError, match="spacing"):
        make_phantom("thigh", shape=(8, 8, 8), spacing=(1, 0, 1))


# ------------------------------------------------------------------------------------- anatomy
def drawn_side_ratio(ph, muscle: str) -> float:
    """Right/left volume ratio of ``muscle`` that the per-side draws recorded in
    ``info["legs"][side]["muscle_variation"]`` predict on their own: cross-section area (size
    squared) times the length of its z range inside the field of view. What it leaves out is
    the packing: muscles compete for the space inside the fascia, so a muscle also gains or
    loses with its neighbours' draws. Un-rotated RAS grids only (z range vs FOV along axis 2)."""
    info = ph.info
    assert info["orientation"] == "RAS" and np.allclose(info["rotation_matrix"], np.eye(3))
    half = info["shape"][2] * info["spacing"][2] / 2
    fov = (info["z_mid"] - half, info["z_mid"] + half)  # region z

    def area_times_length(side):
        drawn = info["legs"][side]["muscle_variation"][muscle]
        z0, z1 = (f if z is None else z for z, f in zip(drawn["z_range_mm"], fov))
        return drawn["size"] ** 2 * max(min(z1, fov[1]) - max(z0, fov[0]), 1.0)

    return area_times_length("right") / area_times_length("left")


# |log(measured right/left / drawn_side_ratio)| of one muscle. Measured on SMALL phantoms of
# seeds 0-5, all three regions (306 muscles): median 0.09, 95th percentile 0.28, max 0.55
# (thin superficial muscles, sartorius and tensor fasciae latae, whose share of the packed
# compartment depends most on their neighbours); 0.65 leaves a margin. One muscle's ratio is
# too noisy to tell a right factor from a wrong one: test_side_differences_follow_the_draws
# does that over all 306.
SIDE_RATIO_LOG_TOL = 0.65


@pytest.mark.parametrize("region", ["thigh", "calf", "hip"])
def test_every_muscle_on_both_sides_with_plausible_volume(phantoms, region):
    from muscle_pipeline.quantify import implausible_volumes, measure_volumes

    ph = phantoms(region)
    counts = ph.info["label_voxels"]
    volumes = {v.name: v for v in measure_volumes(np.asarray(ph.labels), np.asarray(ph.affine))}
    # plausible: inside the atlas-derived range of the segment job's own check (a muscle cut by
    # the field of view, e.g. the gluteus maximus of a thigh phantom, only below its upper bound)
    assert implausible_volumes(list(volumes.values())) == []
    ratios = []
    for muscle in available_muscles(region):
        right, left = volumes[f"{muscle}_right"].volume_ml, volumes[f"{muscle}_left"].volume_ml
        assert right > 0 and left > 0, muscle
        # each side draws its own size, place and z range per muscle: the two sides differ
        # about as much as the recorded draws say, and are not copies of each other
        expected = drawn_side_ratio(ph, muscle)
        assert abs(np.log(right / left / expected)) < SIDE_RATIO_LOG_TOL, (muscle, right / left, expected)
        ratios.append(right / left)
    assert max(abs(np.log(ratios))) > 0.05, ratios
    assert set(ph.info["muscles"]) == set(available_muscles(region))
    # tissues and bones are labelled too
    for name in ("skin", "subcutaneous_fat"):
        assert counts[name] > 0
    bones = {"thigh": ["femur"], "calf": ["tibia", "fibula"], "hip": ["femur", "hip_bone"]}[region]
    for bone in bones:
        assert counts[f"{bone}_right"] > 0 and counts[f"{bone}_left"] > 0


def test_side_differences_follow_the_draws(phantoms):
    """Over many muscles, the measured right/left volume ratios follow the recorded per-side
    draws. Seeds 0-5 of the three regions (306 muscles), log measured vs log drawn_side_ratio:
    correlation 0.62 (per seed 0.39-0.76, per region 0.61-0.64), slope 0.68 (per seed
    0.59-0.72, per region 0.60-0.76; below 1 because a muscle that grows takes space from its
    neighbours). Broken generators, same seeds: the left draws recorded as the right's
    -0.62 / -0.68 (correlation / slope); size drawn and recorded but not applied 0.25 / 0.24
    (the z ranges still count); an unrelated size recorded 0.27 / 0.26; size applied to one
    semi-axis only (area going with size, not its square) 0.44 / 0.45. Bounds: 0.5 for both,
    0.12 and 0.18 under the measured values; slope under 0.9."""
    measured, expected = [], []
    for region in ("thigh", "calf", "hip"):
        for seed in range(6):
            ph = phantoms(region, seed=seed)
            counts = ph.info["label_voxels"]  # same voxel size on both sides
            for muscle in available_muscles(region):
                measured.append(counts[f"{muscle}_right"] / counts[f"{muscle}_left"])
                expected.append(drawn_side_ratio(ph, muscle))
    m, e = np.log(measured), np.log(expected)
    corr = float(np.corrcoef(m, e)[0, 1])
    slope = float(m @ e / (e @ e))
    assert corr > 0.5, corr
    assert 0.5 < slope < 0.9, slope


def test_relative_sizes_are_anatomical(phantoms):
    thigh = phantoms("thigh").info["label_voxels"]
    assert thigh["vastus_lateralis_right"] > 2 * thigh["sartorius_right"]
    assert thigh["adductor_magnus_right"] > thigh["adductor_brevis_right"]
    calf = phantoms("calf").info["label_voxels"]
    assert calf["soleus_right"] > calf["flexor_digitorum_longus_right"]
    assert calf["tibia_right"] > calf["fibula_right"]
    hip = phantoms("hip").info["label_voxels"]
    assert hip["gluteus_maximus_right"] > hip["gluteus_minimus_right"]


def _assert_left_at_smaller_x(ph):
    cents = world_centroids(ph)
    body = {k: body_frame(ph, c) for k, c in cents.items()}
    for name, c in body.items():
        side = ontology.label(name).side
        if side is None:
            continue
        mirror = ontology.name_of(ontology.mirror_value(ontology.value_of(name)))
        if mirror in body:
            # the subject's left is at smaller body (RAS) x than the right
            assert (c[0] < body[mirror][0]) == (side == "left"), name
            assert (c[0] < 0) == (side == "left"), name


def _compartment_checks(ph, region):
    """Relations in the body frame (x right, y anterior, z superior), per side."""
    body = {k: body_frame(ph, c) for k, c in world_centroids(ph).items()}
    for side, lateral in (("right", 1.0), ("left", -1.0)):
        c = {k[: -len(side) - 1]: v for k, v in body.items() if k.endswith("_" + side)}
        ant = lambda a, b: c[a][1] > c[b][1]  # noqa: E731
        lat = lambda a, b: lateral * (c[a][0] - c[b][0]) > 0  # noqa: E731
        if region == "thigh":
            assert ant("rectus_femoris", "femur") and ant("rectus_femoris", "vastus_intermedius")
            assert ant("vastus_intermedius", "femur")
            for hamstring in ("biceps_femoris_long_head", "semitendinosus", "semimembranosus"):
                assert ant("femur", hamstring), hamstring
            assert lat("vastus_lateralis", "femur") and lat("femur", "vastus_medialis")
            for medial in ("adductor_longus", "adductor_brevis", "adductor_magnus", "gracilis", "sartorius"):
                assert lat("femur", medial), medial
            assert lat("biceps_femoris_long_head", "semitendinosus")
            assert lat("biceps_femoris_short_head", "semimembranosus")
        elif region == "calf":
            assert ant("tibialis_anterior", "soleus") and ant("tibialis_anterior", "tibialis_posterior")
            assert ant("soleus", "gastrocnemius_medial_head") and ant("soleus", "gastrocnemius_lateral_head")
            assert lat("fibula", "tibia") and ant("tibia", "fibula")
            assert lat("gastrocnemius_lateral_head", "gastrocnemius_medial_head")
            assert lat("fibulari", "tibia") and lat("fibulari", "tibialis_anterior")
            assert ant("tibialis_posterior", "soleus") and ant("flexor_hallucis_longus", "soleus")
            assert ant("phalangeal_extensors", "flexor_hallucis_longus")
        else:
            assert ant("femur", "gluteus_maximus") and ant("iliacus", "gluteus_maximus")
            assert ant("psoas_major", "gluteus_maximus") and ant("tensor_fasciae_latae", "gluteus_maximus")
            assert lat("gluteus_medius", "iliacus") and c["gluteus_medius"][2] > c["femur"][2]
            assert c["gluteus_minimus"][2] > c["femur"][2]
            for rotator in ("piriformis", "quadratus_femoris", "external_rotators"):
                assert ant("femur", rotator), rotator
            assert lat("femur", "psoas_major") and lat("femur", "obturator_internus")
            assert lat("tensor_fasciae_latae", "sartorius")
            assert lat("femur", "hip_bone")


@pytest.mark.parametrize("region", ["thigh", "calf", "hip"])
def test_muscles_in_their_compartments_and_left_at_smaller_x(phantoms, region):
    ph = phantoms(region)
    _compartment_checks(ph, region)
    _assert_left_at_smaller_x(ph)
    cents = world_centroids(ph)
    # in world RAS x directly (no rotation here): every left label left of every right label
    left_x = max(c[0] for k, c in cents.items() if k.endswith("_left"))
    right_x = min(c[0] for k, c in cents.items() if k.endswith("_right"))
    assert left_x < 0 < right_x


def test_rotated_phantom_keeps_anatomy_in_body_frame():
    ph = make_phantom("thigh", shape=(96, 64, 48), rotation_deg=(8.0, -12.0, 20.0), seed=4)
    _compartment_checks(ph, "thigh")
    _assert_left_at_smaller_x(ph)


def test_muscles_vary_along_z(phantoms):
    """Some muscles exist only in part of the volume, and cross-sections change along z."""
    ph = phantoms("thigh")
    lab = np.asarray(ph.labels)
    slices_with = lambda name: np.flatnonzero((lab == ontology.value_of(name)).any(axis=(0, 1)))  # noqa: E731
    nz = lab.shape[2]
    short_head = slices_with("biceps_femoris_short_head_right")
    longus = slices_with("adductor_longus_right")
    assert 0 < len(short_head) < nz and short_head.max() < nz // 2 + 5  # distal half only
    assert 0 < len(longus) < nz and longus.min() > nz // 3  # proximal part only
    area = (lab == ontology.value_of("vastus_medialis_right")).sum(axis=(0, 1))
    assert area[nz // 5] > 1.5 * area[4 * nz // 5]  # vastus medialis bulkiest distally


def test_no_overlap_every_voxel_one_label_and_muscles_inside_skin(phantoms):
    ph = phantoms("calf")
    lab = np.asarray(ph.labels)
    assert lab.dtype == np.uint8 and lab.ndim == 3
    muscle_values = [l.value for l in ontology.all_labels() if l.kind == "muscle"]
    muscle = np.isin(lab, muscle_values)
    # muscles never touch air: background next to a muscle voxel would mean it pokes out
    background = lab == 0
    neighbour_background = np.zeros_like(background)
    for axis in (0, 1):
        neighbour_background |= np.roll(background, 1, axis) | np.roll(background, -1, axis)
    assert not (muscle & neighbour_background).any()


def test_femur_axis_in_info_matches_the_femur_labels():
    ph = make_phantom("thigh", shape=(96, 64, 48), rotation_deg=(0.0, 10.0, 0.0), seed=2)
    lab = np.asarray(ph.labels)
    for side in ("right", "left"):
        ijk = np.argwhere(lab == ontology.value_of(f"femur_{side}")).T
        pts = (ph.affine[:3, :3] @ ijk + ph.affine[:3, 3:4]).T
        pts = pts - pts.mean(axis=0)
        direction = np.linalg.svd(pts, full_matrices=False)[2][0]
        axis = np.asarray(ph.info["legs"][side]["femur_axis"])
        assert abs(np.linalg.norm(axis) - 1) < 1e-9
        angle = np.degrees(np.arccos(min(1.0, abs(direction @ axis))))
        assert angle < 3.0, (side, angle)
        assert axis[2] > 0.9  # points superior
    # the femora converge towards the knees: the right axis leans right going up, the left leans left
    rot = np.asarray(ph.info["rotation_matrix"])
    right = rot.T @ np.asarray(ph.info["legs"]["right"]["femur_axis"])
    left = rot.T @ np.asarray(ph.info["legs"]["left"]["femur_axis"])
    assert right[0] > 0 > left[0]


# ------------------------------------------------------------------------------- determinism
def test_same_seed_same_arrays_different_seed_different():
    a = make_phantom("hip", "mr", shape=(48, 40, 24), seed=5)
    b = make_phantom("hip", "mr", shape=(48, 40, 24), seed=5)
    c = make_phantom("hip", "mr", shape=(48, 40, 24), seed=6)
    np.testing.assert_array_equal(np.asarray(a.image), np.asarray(b.image))
    np.testing.assert_array_equal(np.asarray(a.labels), np.asarray(b.labels))
    assert not np.array_equal(np.asarray(a.labels), np.asarray(c.labels))
    assert not np.array_equal(np.asarray(a.image), np.asarray(c.image))


@pytest.mark.parametrize("rotation", [(0.0, 0.0, 0.0), (5.0, 0.0, 0.0)])
def test_slab_size_does_not_change_the_result(rotation):
    # un-rotated single-slice slabs take a scalar-parameter fast path; results must not change
    kw = dict(shape=(50, 40, 30), seed=3, rotation_deg=rotation)
    a = make_phantom("calf", "mr", **kw)
    b = make_phantom("calf", "mr", max_slab_voxels=1000, **kw)
    np.testing.assert_array_equal(np.asarray(a.labels), np.asarray(b.labels))
    np.testing.assert_array_equal(np.asarray(a.image), np.asarray(b.image))


# -------------------------------------------------------------------------------- orientation
@pytest.mark.parametrize("orientation", ["LPS", "PIR"])
@pytest.mark.parametrize("rotation", [(0.0, 0.0, 0.0), (0.0, 7.0, -15.0)])
def test_other_orientation_is_the_same_physical_object(orientation, rotation):
    """Tolerance: none. The same seed sampled on an RAS grid and on a permuted/flipped grid of
    the same voxel centres gives identical label maps (and, without noise, identical images)
    once MONAI's Orientation brings the second back to RAS."""
    shape_ras, spacing_ras = (60, 44, 30), (4.0, 3.5, 9.0)
    perm = ["LRPAIS".index(c) // 2 for c in orientation]  # world axis of each array axis
    shape = tuple(shape_ras[w] for w in perm)
    spacing = tuple(spacing_ras[w] for w in perm)
    kw = dict(seed=8, noise=0.0, bias=0.3, rotation_deg=rotation)
    ras = make_phantom("thigh", "mr", shape=shape_ras, spacing=spacing_ras, orientation="RAS", **kw)
    other = make_phantom("thigh", "mr", shape=shape, spacing=spacing, orientation=orientation, **kw)
    assert "".join(aff2axcodes(other.affine)) == orientation
    to_ras = Orientation(axcodes="RAS", labels=None)
    labels = to_ras(other.labels[None])[0]
    image = to_ras(other.image[None])[0]
    np.testing.assert_allclose(np.asarray(labels.affine), ras.affine, atol=1e-9)
    np.testing.assert_array_equal(np.asarray(labels), np.asarray(ras.labels))
    np.testing.assert_array_equal(np.asarray(image), np.asarray(ras.image))
    ca, cb = world_centroids(ras), world_centroids(other)
    assert ca.keys() == cb.keys()
    for name in ca:
        np.testing.assert_allclose(ca[name], cb[name], atol=1e-6)
    for side in ("right", "left"):
        np.testing.assert_allclose(ras.info["legs"][side]["femur_axis"], other.info["legs"][side]["femur_axis"])


# ---------------------------------------------------------------------------------- contrast
def test_mr_bias_field_is_smooth_and_switchable():
    kw = dict(shape=(96, 64, 48), seed=11, noise=0.0)
    flat = make_phantom("thigh", "mr", bias=0.0, **kw)
    biased = make_phantom("thigh", "mr", bias=0.3, **kw)
    value = ontology.value_of("vastus_lateralis_right")
    mask = np.asarray(flat.labels) == value
    np.testing.assert_array_equal(mask, np.asarray(biased.labels) == value)
    plain = np.asarray(flat.image)[mask]
    assert np.ptp(plain) == 0  # one muscle, no bias, no noise: one intensity
    vals = np.asarray(biased.image)[mask]
    assert np.ptp(vals) / vals.mean() > 0.1  # visibly modulated
    # smooth: a quadratic in world coordinates explains the log-intensity almost entirely
    ijk = np.argwhere(mask).astype(float)
    xyz = ijk @ biased.affine[:3, :3].T + biased.affine[:3, 3]
    xyz = (xyz - xyz.mean(0)) / xyz.std(0)
    x, y, z = xyz.T
    design = np.stack([np.ones_like(x), x, y, z, x * x, y * y, z * z, x * y, x * z, y * z], axis=1)
    target = np.log(vals)
    fit = design @ np.linalg.lstsq(design, target, rcond=None)[0]
    r2 = 1 - np.sum((target - fit) ** 2) / np.sum((target - target.mean()) ** 2)
    assert r2 > 0.95
    # MR ordering: fat bright, muscle mid-grey, cortical bone dark
    img = np.asarray(flat.image)
    lab = np.asarray(flat.labels)
    fat = np.median(img[lab == ontology.value_of("subcutaneous_fat")])
    muscle = np.median(img[mask])
    femur = img[lab == ontology.value_of("femur_right")]
    assert fat > 2 * muscle and np.percentile(femur, 5) < 0.3 * muscle and np.percentile(femur, 95) > muscle


def test_mr_noise_is_rician():
    ph = make_phantom("calf", "mr", shape=(64, 48, 24), seed=2, noise=0.05, bias=0.0)
    img = np.asarray(ph.image)
    assert (img >= 0).all()
    air = img[np.asarray(ph.labels) == 0]
    # background of magnitude images: Rayleigh-distributed, mean = sigma * sqrt(pi / 2)
    air = air[air < 0.3]
    assert abs(air.mean() - 0.05 * np.sqrt(np.pi / 2)) < 0.01


def test_ct_values_in_hounsfield_ranges():
    ph = make_phantom("thigh", "ct", shape=(96, 64, 32), seed=3, noise=0.03)
    img, lab = np.asarray(ph.image), np.asarray(ph.labels)
    med = lambda name: np.median(img[lab == ontology.value_of(name)])  # noqa: E731
    assert -120 < med("subcutaneous_fat") < -80
    for muscle in ("vastus_lateralis_right", "adductor_magnus_left", "sartorius_right"):
        assert 35 < med(muscle) < 65, muscle
    femur = img[lab == ontology.value_of("femur_right")]
    assert 700 < np.percentile(femur, 97) < 1500  # cortex
    assert 150 < np.percentile(femur, 10) < 450  # marrow
    tv = ph.info["tissue_values"]
    assert 700 <= tv["cortex"] <= 1500 and 200 <= tv["marrow"] <= 400
    air = img[(lab == 0)]
    assert abs(np.median(air) + 1000) < 5
    assert ph.info["units"] == "HU"


def test_per_muscle_intensities_differ_slightly():
    ph = make_phantom("calf", "mr", shape=(64, 48, 24), seed=9, noise=0.0, bias=0.0)
    img, lab = np.asarray(ph.image), np.asarray(ph.labels)
    values = [img[lab == ontology.value_of(f"{m}_right")][0] for m in available_muscles("calf")]
    spread = np.std(values) / np.mean(values)
    assert 0.005 < spread < 0.1


# ---------------------------------------------------------------------------------- options
def test_touching_legs_leave_no_gap_in_some_slice():
    kw = dict(shape=(128, 64, 24), seed=0)
    touching = make_phantom("thigh", legs_touching=True, **kw)
    apart = make_phantom("thigh", legs_touching=False, **kw)

    def gap_free_slices(ph):
        lab = np.asarray(ph.labels)
        count = 0
        for k in range(lab.shape[2]):
            body = lab[:, :, k] > 0
            # the mid-sagittal column (body x = 0 lies between the two middle columns)
            mid = lab.shape[0] // 2
            between = body[mid - 1 : mid + 1, :]
            if between.any(axis=0).any():
                count += 1
        return count

    assert gap_free_slices(touching) >= 1
    assert gap_free_slices(apart) == 0
    # the legs keep their own side labels where they touch
    _assert_left_at_smaller_x(touching)
    assert touching.info["subject"]["gap_mm"] < 0 < apart.info["subject"]["gap_mm"]


def test_muscle_subset_labels_only_requested():
    ph = make_phantom("thigh", shape=(96, 64, 32), seed=1, muscles=["rectus_femoris", "sartorius_left"],
                      noise=0.0, bias=0.0)
    full = make_phantom("thigh", shape=(96, 64, 32), seed=1, noise=0.0, bias=0.0)
    names = {ontology.name_of(int(v)) for v in np.unique(np.asarray(ph.labels)) if v}
    muscles = {n for n in names if ontology.label(n).kind == "muscle"}
    assert muscles == {"rectus_femoris_right", "rectus_femoris_left", "sartorius_left"}
    assert {"femur_right", "femur_left", "skin", "subcutaneous_fat"} <= names
    # the same anatomy: unrequested muscles keep muscle intensity, only their label is 0
    np.testing.assert_array_equal(np.asarray(ph.image), np.asarray(full.image))
    vl = np.asarray(full.labels) == ontology.value_of("vastus_lateralis_right")
    assert (np.asarray(ph.labels)[vl] == 0).all()
    assert ph.info["muscles"] == ["rectus_femoris", "sartorius"]


def test_save_phantom_round_trip(tmp_path):
    import nibabel as nib
    from monai.transforms import LoadImage

    ph = make_phantom("calf", "ct", shape=(40, 32, 16), orientation="LPS", seed=4)
    image_path, label_path = save_phantom(ph, tmp_path)
    assert image_path.exists() and label_path.exists() and image_path != label_path
    img, lab = nib.load(str(image_path)), nib.load(str(label_path))
    np.testing.assert_allclose(img.affine, ph.affine, atol=1e-5)
    np.testing.assert_allclose(lab.affine, ph.affine, atol=1e-5)
    assert "".join(aff2axcodes(lab.affine)) == "LPS"
    np.testing.assert_array_equal(np.asarray(lab.dataobj), np.asarray(ph.labels))
    np.testing.assert_array_equal(img.get_fdata(dtype=np.float32), np.asarray(ph.image))
    assert lab.get_data_dtype() == np.uint8
    loaded = LoadImage(image_only=True)(str(label_path))
    np.testing.assert_allclose(np.asarray(loaded.affine), ph.affine, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(loaded), np.asarray(ph.labels))


def test_memory_overhead_does_not_grow_with_the_volume():
    """Slab-wise generation: peak numpy allocations minus the outputs (float32 image + uint8
    labels + uint8 class map) stay about the same when the volume grows 8-fold."""
    import tracemalloc

    overhead = []
    for shape in ((64, 48, 32), (128, 96, 64)):
        tracemalloc.start()
        ph = make_phantom("calf", "mr", shape=shape, seed=0, max_slab_voxels=1 << 15)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        overhead.append(peak - 6 * int(np.prod(shape)))
        assert ph.info["label_voxels"]["soleus_left"] > 0
    assert overhead[1] < overhead[0] + 8 * 2**20, [o / 2**20 for o in overhead]
