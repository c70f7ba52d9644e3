"""``make_phantom``: sample the procedural anatomy on a requested grid, with MR or CT contrast."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from muscle_pipeline import labels as ontology
from .anatomy import REGIONS, Registry, SideAnatomy, modelled_muscles
from .contrast import BiasField, add_noise, entry_intensities
from .grid import Grid, make_grid, parse_orientation

MODALITIES = ("mr", "ct")
# leg gap (mm between the skin of the two legs at mid-region) drawn per phantom
_GAP_MM = {"thigh": (15.0, 40.0), "calf": (30.0, 70.0)}
_TOUCHING_GAP_MM = -8.0  # legs pressed together: outlines overlap, flattened at the midline


@dataclass
class Phantom:
    """A synthetic case.

    image:  MetaTensor (X, Y, Z) float32 — MR arbitrary units (fat ~ 1) or CT HU;
    labels: MetaTensor (X, Y, Z) uint8 ontology values (right = base, left = base + 100);
    info:   dict — region, modality, seed, grid, per-leg side / bone axes (world RAS), label
            voxel counts, tissue intensities. JSON-serialisable.
    Both tensors carry the same ``affine`` (voxel index -> RAS+ mm).
    """

    image: object
    labels: object
    info: dict = field(default_factory=dict)

    @property
    def affine(self) -> np.ndarray:
        return np.asarray(self.info["affine"], dtype=np.float64)


def available_muscles(region: str) -> tuple[str, ...]:
    """Side-less ontology names of the muscles that ``make_phantom(region=...)`` labels."""
    _check_region(region)
    return modelled_muscles(region)


def _check_region(region):
    if region not in REGIONS:
        raise ValueError(f"region must be one of {sorted(REGIONS)}, got {region!r}")


def _labelled_set(region: str, muscles) -> set[str]:
    modelled = set(modelled_muscles(region))
    if muscles is None:
        return modelled
    wanted = set()
    for name in muscles:
        base = name
        for suffix in ("_right", "_left"):
            if name.endswith(suffix):
                base = name[: -len(suffix)]
        if base not in modelled:
            raise ValueError(f"muscle {name!r} is not modelled in the {region} phantom; "
                             f"available: {sorted(modelled)}")
        wanted.add(name)
    return wanted


def _subject(spec, region: str, rng: np.random.Generator, legs_touching: bool) -> dict:
    """Subject-level random parameters shared by both sides."""
    subject = {
        "scale": float(np.clip(rng.normal(1.0, 0.05), 0.88, 1.12)),
        "fat": float(rng.uniform(0.6, 1.5)),
        "skin_mm": float(rng.uniform(1.2, 2.2)),
    }
    for side in ("right", "left"):
        subject[f"tilt_{side}"] = (spec.tilt_deg[0] + rng.normal(0.0, 1.0), spec.tilt_deg[1] + rng.normal(0.0, 1.0))
    if spec.leg_center is not None:
        # medial skin edge of the nominal leg at mid-region, from the outline keyframes
        o = spec.outlines[0]
        z_mid = (spec.z_lo + spec.z_hi) / 2
        edge = float(np.interp(z_mid, o.z, np.broadcast_to(o.u, len(o.z))) - np.interp(z_mid, o.z, o.a))
        gap = _TOUCHING_GAP_MM if legs_touching else float(rng.uniform(*_GAP_MM[region]))
        subject["leg_u"] = -edge * subject["scale"] + gap / 2
        subject["gap_mm"] = gap
    return subject


def _default_spacing(spec, shape, ornt) -> tuple[float, float, float]:
    """Spacing so the FOV covers the region: isotropic in the axial plane, z to the region length."""
    extent = {0: spec.fov_xy[0], 1: spec.fov_xy[1], 2: spec.z_hi - spec.z_lo}
    n_world = {int(ornt[i, 0]): shape[i] for i in range(3)}
    in_plane = max(extent[0] / n_world[0], extent[1] / n_world[1])
    per_world = {0: in_plane, 1: in_plane, 2: extent[2] / n_world[2]}
    return tuple(float(per_world[int(ornt[i, 0])]) for i in range(3))


def make_phantom(region: str = "thigh", modality: str = "mr", shape=(128, 128, 64), spacing=None,
                 orientation: str = "RAS", rotation_deg=(0.0, 0.0, 0.0), seed: int = 0, muscles=None,
                 bias: float = 0.3, noise: float = 0.03, legs_touching: bool = False,
                 center_mm=(0.0, 0.0, 0.0), septum_mm: float = 1.0, max_slab_voxels: int = 1 << 18) -> Phantom:
    """Make a bilateral thigh, calf or hip phantom -> ``Phantom(image, labels, info)``.

    region: "thigh" (knee to lesser trochanter), "calf" (ankle to tibial plateau) or "hip"
    (proximal thigh to iliac crest, one trunk). modality: "mr" (T1-like) or "ct" (HU).
    shape, spacing: per array axis (voxels, mm); ``spacing=None`` fits the region's field of
    view (about 420x220x360 mm thigh, 290x160x320 calf, 380x270x272 hip along world x, y, z),
    isotropic in the axial plane.
    orientation: any 3-letter code (array axis i points towards letter i, e.g. "LPS", "PIR").
    rotation_deg: rotation of the whole anatomy about the FOV centre (extrinsic about world x,
    then y, then z), e.g. to tilt the femoral axis; the bone axes in ``info`` follow it.
    center_mm: world position of the FOV centre (the anatomy's midline passes through it).
    muscles: side-less ("soleus") or sided ("soleus_left") names to label; default all of
    ``available_muscles(region)``. Unrequested muscles stay in the image with their own muscle
    intensity (the image is the same as without ``muscles``) but get label 0; bones and
    tissues are always labelled.
    bias: MR bias-field strength (log-intensity amplitude, 0 = none; ignored for CT).
    noise: noise SD — MR: fraction of the fat intensity, Rician; CT: x 500 HU, Gaussian.
    legs_touching: legs pressed together (no background between them in some slices).
    septum_mm: width of the intermuscular fat septa (label ``intermuscular_fat``).
    max_slab_voxels: voxels generated at once (memory bound; results do not depend on it).

    The anatomy lives in world mm: one seed gives the same physical object on any grid, and the
    subject's left leg (labels base + 100) lies at smaller world (RAS) x.

    info keys: region, modality, seed, shape, spacing, orientation, affine, rotation_deg,
    rotation_matrix, center_mm, midline, legs (per side: side, label_offset, femur_axis /
    tibia_axis unit vectors pointing superior + a point on them, femoral_head_center_mm for
    the hip, muscle_variation: every modelled side-less muscle name -> what was drawn for it
    on this side: ``size`` the in-plane scale of its cross-section (0.9-1.1, the area goes with
    its square), ``shift_mm`` of its centre (u lateral, v anterior), ``z_range_mm`` where it
    starts and ends in region z, None = unbounded), subject (random subject parameters),
    label_voxels (name -> count), muscles (labelled side-less names), tissue_values, units,
    bias, noise, legs_touching, septum_mm, muscles_requested, z_mid (region z at the FOV
    centre).
    """
    _check_region(region)
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
    spec = REGIONS[region]()
    labelled = _labelled_set(region, muscles)

    seq = np.random.SeedSequence(int(seed))
    s_subject, s_right, s_left, s_contrast, s_bias, s_real, s_imag = seq.spawn(7)
    subject = _subject(spec, region, np.random.default_rng(s_subject), legs_touching)
    if region == "hip" and legs_touching:
        # widen the proximal thighs medially (lateral skin unchanged) until they meet
        thighs = spec.outlines[1]
        thighs.u = list(np.asarray(thighs.u, float) - 15.0)
        thighs.a = list(np.asarray(thighs.a, float) + 15.0)
    registry = Registry()
    sides = {"right": SideAnatomy(spec, "right", registry, np.random.default_rng(s_right), subject, labelled),
             "left": SideAnatomy(spec, "left", registry, np.random.default_rng(s_left), subject, labelled)}

    ornt = parse_orientation(orientation)
    if spacing is None:
        spacing = _default_spacing(spec, tuple(int(n) for n in shape), ornt)
    grid = make_grid(shape, spacing, orientation, center_mm, rotation_deg)
    z_mid = (spec.z_lo + spec.z_hi) / 2  # region z at the FOV centre

    # pass 1: class map, in slabs along the array axis closest to the limb axis so that each
    # slab spans a short stretch of z and structures outside it are skipped
    body_z_in_world = np.abs(grid.rotation[:, 2])
    z_axis = int(np.argmax([body_z_in_world[int(ornt[i, 0])] for i in range(3)]))
    classes = np.empty(grid.shape, np.uint8)
    class_counts = np.zeros(256, np.int64)
    for start, stop in grid.slabs(z_axis, max_slab_voxels):
        x, y, z = grid.body_coords(z_axis, start, stop)
        slab = np.empty(x.shape, np.uint8)
        flat = slab.reshape(-1)
        x, y, z = x.reshape(-1), y.reshape(-1), z.reshape(-1) + np.float32(z_mid)
        right = x >= 0
        for side, mask, sign in (("right", right, 1.0), ("left", ~right, -1.0)):
            idx = np.flatnonzero(mask)
            flat[idx] = sides[side].classify(np.float32(sign) * x[idx], y[idx], z[idx], septum_mm)
        index = [slice(None)] * 3
        index[z_axis] = slice(start, stop)
        classes[tuple(index)] = slab
        class_counts += np.bincount(flat, minlength=256)

    label_lut = registry.lut("label", np.uint8)
    labels = label_lut[classes]

    # pass 2: intensities, bias and noise in C-order slabs along axis 0 (noise independent of
    # the slab size)
    intensity_lut, tissue_values = entry_intensities(registry, modality, np.random.default_rng(s_contrast))
    half_extent = (spec.fov_xy[0] / 2, spec.fov_xy[1] / 2, (spec.z_hi - spec.z_lo) / 2)
    bias_field = BiasField(bias, half_extent, np.random.default_rng(s_bias)) if modality == "mr" and bias else None
    rng_real, rng_imag = np.random.default_rng(s_real), np.random.default_rng(s_imag)
    image = np.empty(grid.shape, np.float32)
    for start, stop in grid.slabs(0, max_slab_voxels):
        slab = intensity_lut[classes[start:stop]]
        if bias_field is not None:
            slab *= bias_field(*grid.body_coords(0, start, stop, compact=True))
        image[start:stop] = add_noise(slab, modality, noise, rng_real, rng_imag)

    label_counts = np.bincount(label_lut, weights=class_counts[: len(label_lut)], minlength=256).astype(np.int64)
    info = _info(region, modality, seed, grid, spec, sides, subject, label_counts, registry, tissue_values,
                 dict(rotation_deg=[float(r) for r in rotation_deg], bias=bias, noise=noise, legs_touching=legs_touching, septum_mm=septum_mm,
                      muscles_requested=None if muscles is None else sorted(labelled), z_mid=z_mid))
    return Phantom(_meta(image, grid.affine), _meta(labels, grid.affine), info)


def _meta(array: np.ndarray, affine: np.ndarray):
    import torch
    from monai.data import MetaTensor

    # original_channel_dim=nan: a 3D volume with no channel, as io.read_image declares; without
    # it MONAI 1.6 caches spatial_ndim=2 and later crops of x[None] skip the last axis' shift.
    return MetaTensor(torch.from_numpy(array), affine=torch.as_tensor(affine, dtype=torch.float64),
                      meta={"original_channel_dim": float("nan")})


def _axis_world(grid: Grid, side: str, direction_side_frame) -> list[float]:
    """Unit direction in world RAS from a side-frame direction (u lateral, v anterior, z up)."""
    du, dv, dz = direction_side_frame
    sign = 1.0 if side == "right" else -1.0
    d = grid.rotation @ np.array([sign * du, dv, dz], dtype=np.float64)
    d /= np.linalg.norm(d)
    return [float(c) for c in d]


def _point_world(grid: Grid, side: str, point_side_frame, z_mid: float) -> list[float]:
    u, v, z = point_side_frame
    sign = 1.0 if side == "right" else -1.0
    p = grid.center + grid.rotation @ np.array([sign * u, v, z - z_mid])
    return [float(c) for c in p]


def _bone_axis(anat: SideAnatomy, spec, bone_name: str):
    """Direction (side frame) and a mid-region point of a long bone's shaft axis."""
    bone = next(b for b in anat.bones if b.name == bone_name)
    prim = bone.parts[0][0] if bone_name != "femur" or spec.name != "hip" else bone.parts[-1][0]
    if hasattr(prim, "cu"):  # keyframed tube: fit a line through the tabulated centres
        zc = anat.zb.centers
        span = spec.z_hi - spec.z_lo
        sel = (zc >= spec.z_lo + 0.2 * span) & (zc <= spec.z_lo + 0.85 * span) & prim.present
        u = anat.center_u[sel] + anat.scale * prim.cu[sel]
        v = anat.center_v[sel] + anat.scale * prim.cv[sel]
        su, iu = np.polyfit(zc[sel], u, 1)
        sv, iv = np.polyfit(zc[sel], v, 1)
        z_mid = (spec.z_lo + spec.z_hi) / 2
        return (su, sv, 1.0), (su * z_mid + iu, sv * z_mid + iv, z_mid)
    p0, p1 = prim.p0 * [anat.scale, anat.scale, 1.0], prim.p1 * [anat.scale, anat.scale, 1.0]
    d = p0 - p1 if p0[2] > p1[2] else p1 - p0
    return tuple(d / d[2]), tuple(p0)


def _info(region, modality, seed, grid, spec, sides, subject, counts, registry, tissue_values, extra) -> dict:
    label_voxels = {ontology.name_of(v): int(c) for v, c in enumerate(counts) if c and v}
    legs = {}
    for side, anat in sides.items():
        leg = {"side": side, "label_offset": 0 if side == "right" else ontology.LEFT_OFFSET,
               "body_x_sign": 1 if side == "right" else -1}
        for bone_name in ("femur", "tibia"):
            if any(b.name == bone_name for b in spec.bones):
                direction, point = _bone_axis(anat, spec, bone_name)
                leg[f"{bone_name}_axis"] = _axis_world(grid, side, direction)
                leg[f"{bone_name}_axis_point_mm"] = _point_world(grid, side, point, extra["z_mid"])
        if region == "hip":
            from .anatomy import HEAD

            head = (HEAD[0] * anat.scale, HEAD[1] * anat.scale, HEAD[2])
            leg["femoral_head_center_mm"] = _point_world(grid, side, head, extra["z_mid"])
        if spec.leg_center is not None:
            leg["tilt_deg"] = [float(t) for t in subject[f"tilt_{side}"]]
        leg["muscle_variation"] = {name: dict(v) for name, v in anat.variation.items()}
        legs[side] = leg
    midline_normal = grid.rotation @ np.array([1.0, 0.0, 0.0])  # points to the subject's right
    return {
        "region": region,
        "modality": modality,
        "seed": int(seed),
        "shape": list(grid.shape),
        "spacing": list(grid.spacing),
        "orientation": "".join(
            ("LR", "PA", "IS")[int(a)][int(f > 0)] for a, f in grid.ornt),
        "rotation_matrix": grid.rotation.tolist(),
        "center_mm": grid.center.tolist(),
        "affine": grid.affine.tolist(),
        "midline": {"point_mm": grid.center.tolist(), "normal_to_right": midline_normal.tolist()},
        "legs": legs,
        "subject": {k: (list(v) if isinstance(v, tuple) else v) for k, v in subject.items()},
        "label_voxels": label_voxels,
        "muscles": sorted({e.structure for e in registry.entries if e.tissue == "muscle" and e.label}),
        "tissue_values": tissue_values,
        "units": "HU" if modality == "ct" else "arbitrary (subcutaneous fat ~ 1)",
        **extra,
    }


def save_phantom(phantom: Phantom, folder, case_id: str | None = None) -> tuple[Path, Path]:
    """Write ``folder/images/<case>.nii.gz`` (float32) and ``folder/labels/<case>.nii.gz``
    (uint8) with the phantom's affine (sform and qform), plus ``folder/labels/<case>.json``
    (the info dict). ``case`` defaults to ``<region>_<modality>_seed<seed>``."""
    import nibabel as nib

    info = phantom.info
    case = case_id or f"{info['region']}_{info['modality']}_seed{info['seed']}"
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "labels").mkdir(parents=True, exist_ok=True)
    image_path = folder / "images" / f"{case}.nii.gz"
    label_path = folder / "labels" / f"{case}.nii.gz"
    affine = phantom.affine
    for array, dtype, path in ((phantom.image, np.float32, image_path), (phantom.labels, np.uint8, label_path)):
        img = nib.Nifti1Image(np.asarray(array).astype(dtype, copy=False), affine)
        img.set_sform(affine, code=1)  # scanner-anatomical
        img.set_qform(affine, code=1)
        img.header.set_xyzt_units("mm")
        nib.save(img, str(path))
    (folder / "labels" / f"{case}.json").write_text(json.dumps(info, indent=1))
    return image_path, label_path
