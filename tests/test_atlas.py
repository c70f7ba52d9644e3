"""Atlas ingestion and completion on the real Visible Human label maps, at 3 mm (seconds)."""
import numpy as np
import pytest
from scipy import ndimage

from muscle_pipeline import labels as L
from muscle_pipeline.atlas import complete_subject, read_leg, to_ni35
from muscle_pipeline.atlas.ingest import check_sides, ontology_lut

SPACING = 3.0


@pytest.fixture(scope="module")
def completed(shared_data, tmp_path_factory):
    root = shared_data / "visible_human_lower_limb"
    cache = tmp_path_factory.mktemp("atlas_cache")
    return {s: complete_subject(s, spacing=SPACING, cache_dir=cache, root=root) for s in ("VHF", "VHM")}


def _v(name):
    return L.value_of(name)


def _world_x(leg, mask):
    return leg.world(np.argwhere(mask).astype(float))[:, 0]


def test_sides_come_from_world_x(shared_data):
    root = shared_data / "visible_human_lower_limb"
    for subject in ("VHF", "VHM"):
        left, right = (read_leg(subject, s, 6.0, root) for s in ("left", "right"))
        xl, xr = check_sides(left, right)
        assert xl < xr
        with pytest.raises(ValueError):
            check_sides(right, left)
    assert ontology_lut("left")[20] == _v("vastus_lateralis_left") and ontology_lut("right")[20] == _v("vastus_lateralis_right")


@pytest.mark.parametrize("subject", ["VHF", "VHM"])
def test_left_leg_labels_at_smaller_world_x_with_left_values(completed, subject):
    c = completed[subject]
    left, right = c.legs["left"], c.legs["right"]
    lm = (left.labels >= 101) & (left.labels <= 135)
    rm = (right.labels >= 1) & (right.labels <= 35)
    assert not ((left.labels >= 1) & (left.labels <= 45)).any()  # no right muscle values on the left leg
    assert not ((right.labels >= 101) & (right.labels <= 145)).any()
    assert np.median(_world_x(left, lm)) < np.median(_world_x(right, rm))
    scene = c.scene
    sl, sr = (scene.labels >= 101) & (scene.labels <= 135), (scene.labels >= 1) & (scene.labels <= 35)
    assert np.median(_world_x(scene, sl)) < np.median(_world_x(scene, sr))


@pytest.mark.parametrize("subject", ["VHF", "VHM"])
def test_femur_present_and_inside_the_thigh_muscles(completed, subject):
    for side, leg in completed[subject].legs.items():
        femur = leg.labels == _v(f"femur_{side}")
        volume_ml = femur.sum() * SPACING ** 3 / 1000
        assert 100 < volume_ml < 800, volume_ml
        thigh = np.isin(leg.labels, [_v(f"{m}_{side}") for m in ("vastus_lateralis", "vastus_intermedius",
                        "vastus_medialis", "adductor_magnus", "adductor_longus", "rectus_femoris",
                        "biceps_femoris_short_head", "sartorius", "gracilis", "semimembranosus")])
        fz = np.flatnonzero(femur.any((0, 1)))
        shaft = np.zeros(femur.shape[2], bool)
        shaft[int(fz[0] + 0.2 * (fz[-1] - fz[0])): int(fz[0] + 0.75 * (fz[-1] - fz[0]))] = True
        zs = np.flatnonzero(thigh.any((0, 1)) & shaft)
        inside = total = 0
        for z in zs:  # enclosed = inside the thigh muscles' filled envelope (4 voxel closing) in that slice
            env = ndimage.binary_fill_holes(ndimage.binary_closing(np.pad(thigh[:, :, z], 6), iterations=4))[6:-6, 6:-6]
            inside += (femur[:, :, z] & env).sum()
            total += femur[:, :, z].sum()
        assert inside / total > 0.7, (side, inside / total)


def test_missing_muscles_and_bones_rebuilt(completed):
    assert (completed["VHF"].legs["right"].labels == _v("biceps_femoris_long_head_right")).sum() > 1000 / SPACING ** 2
    man = completed["VHM"].legs
    for name in ("rectus_femoris_right", "sartorius_right", "tibia_right", "tibia_left", "hip_bone_right"):
        side = name.rsplit("_", 1)[1]
        assert (man[side].labels == _v(name)).sum() * SPACING ** 3 > 20_000, name  # > 20 mL
    # the mirrored rectus femoris lies anterior, like the left one
    for side in ("left", "right"):
        leg = man[side]
        rf = leg.world(np.argwhere(leg.labels == _v(f"rectus_femoris_{side}")).astype(float)).mean(0)
        ham = leg.world(np.argwhere(leg.labels == _v(f"semimembranosus_{side}")).astype(float)).mean(0)
        assert rf[1] > ham[1] + 30
    assert completed["VHM"].info["mirrored_muscles"]["right"] == [18, 19]


def test_tissue_classes_and_ni35_target(completed):
    leg = completed["VHM"].legs["left"]
    lab = leg.labels
    for tissue in ("skin", "subcutaneous_fat", "intermuscular_fat"):
        assert (lab == _v(tissue)).sum() > 1000, tissue
    # skin is the outermost layer: every body voxel touching air is skin
    body = lab > 0
    edge = body & ~ndimage.binary_erosion(body)
    assert (lab[edge] == _v("skin")).mean() > 0.95
    target = to_ni35(lab)
    assert set(np.unique(target)) <= {0} | {v + 100 for v in range(1, 36)} | {150, 151, 152, 153, 154, 55}
    assert (target == _v("external_rotators_left")).any() and (target == _v("fibulari_left")).any()


def test_cache_round_trip(completed, shared_data, tmp_path):
    root = shared_data / "visible_human_lower_limb"
    a = complete_subject("VHF", spacing=6.0, cache_dir=tmp_path, root=root)
    b = complete_subject("VHF", spacing=6.0, cache_dir=tmp_path, root=root)
    assert len(list(tmp_path.glob("*.nii.gz"))) == 3
    assert np.array_equal(a.scene.labels, b.scene.labels) and np.allclose(a.scene.affine, b.scene.affine)
