"""Rebuild what the atlas lacks (coarse, plausible shapes; see docs/atlas.md).

All functions work on one leg's raw atlas values (``ingest.Leg``, axis-aligned RAS grid, any
isotropic spacing) and return boolean masks (X, Y, Z) that claim only unlabelled voxels:

* ``rebuild_femur``: head = sphere fitted to the femoral-head cartilage, condyles = convex hull of
  the distal-femur cartilage, shaft = per axial slice the hole that the thigh muscles enclose
  (tracked upwards from the knee; a disc where no hole is enclosed), neck/trochanter = a capsule
  from the head centre to the top of the shaft and a disc column around the shaft top.
* ``rebuild_hip_bone``: voxels within a few mm of both the inner (iliacus, obturator internus,
  piriformis) and the outer hip muscles (gluteus medius/minimus, obturator externus, gemelli,
  quadratus femoris, pectineus, adductors), plus an acetabular shell around the femoral head.
* ``transfer_structures``: masks of one leg brought into another by a similarity transform fitted
  to landmark centroids (the man's tibia from the woman's leg of the same side; missing muscles
  from the contralateral leg of the same subject, mirrored).
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, Delaunay

from muscle_pipeline.atlas.ingest import (ACETABULUM_CARTILAGE, ATLAS_FIBULA, FEMUR_DISTAL_CARTILAGE,
                                          FEMUR_HEAD_CARTILAGE, Leg)

THIGH_MUSCLES = tuple(range(13, 27))  # pectineus .. semimembranosus (atlas values)
HIP_INNER = (5, 7, 10)  # iliacus, piriformis, obturator internus
HIP_OUTER = (2, 3, 8, 9, 11, 12, 13, 14, 15, 16)  # gluteus med/min, gemelli, obt. ext., QF, pectineus, adductors


def _world_grid_points(leg: Leg, mask: np.ndarray) -> np.ndarray:
    return leg.world(np.argwhere(mask).astype(float))


def fit_sphere(points: np.ndarray) -> tuple[np.ndarray, float]:
    """Least-squares sphere through ``points`` (N, 3) mm: centre (3,), radius mm."""
    a = np.c_[2 * points, np.ones(len(points))]
    b = (points ** 2).sum(1)
    sol = np.linalg.lstsq(a, b, rcond=None)[0]
    centre = sol[:3]
    return centre, float(np.sqrt(sol[3] + centre @ centre))


def _ball(leg: Leg, centre: np.ndarray, radius: float) -> np.ndarray:
    axes = [leg.affine[i, i] * np.arange(n) + leg.affine[i, 3] for i, n in enumerate(leg.labels.shape)]
    d2 = sum(((a - c) ** 2).reshape([-1 if j == i else 1 for j in range(3)]) for i, (a, c) in enumerate(zip(axes, centre)))
    return d2 <= radius ** 2


def _capsule(leg: Leg, p0: np.ndarray, p1: np.ndarray, radius: float) -> np.ndarray:
    """Voxels within ``radius`` mm of the segment p0-p1 (world mm), evaluated in its bounding box."""
    sp = leg.spacing
    lo = np.floor((np.minimum(p0, p1) - radius - leg.affine[:3, 3]) / sp).astype(int).clip(0)
    hi = np.ceil((np.maximum(p0, p1) + radius - leg.affine[:3, 3]) / sp).astype(int) + 1
    hi = np.minimum(hi, leg.labels.shape)
    out = np.zeros(leg.labels.shape, bool)
    if (hi <= lo).any():
        return out
    idx = np.stack(np.meshgrid(*[np.arange(l, h) for l, h in zip(lo, hi)], indexing="ij"), -1).reshape(-1, 3)
    w = leg.world(idx.astype(float))
    d = p1 - p0
    t = np.clip(((w - p0) @ d) / max(d @ d, 1e-9), 0, 1)
    near = np.linalg.norm(w - (p0 + t[:, None] * d), axis=1) <= radius
    out[tuple(idx[near].T)] = True
    return out


def _disk(shape2d, centre_idx, radius_vox) -> np.ndarray:
    i, j = np.ogrid[: shape2d[0], : shape2d[1]]
    return (i - centre_idx[0]) ** 2 + (j - centre_idx[1]) ** 2 <= radius_vox ** 2


def _hull_mask(leg: Leg, mask: np.ndarray) -> np.ndarray:
    """Convex hull of ``mask`` (in its bounding box)."""
    pts = np.argwhere(mask)
    if len(pts) < 5:
        return mask.copy()
    hull = Delaunay(pts[ConvexHull(pts).vertices])
    lo, hi = pts.min(0), pts.max(0) + 1
    idx = np.stack(np.meshgrid(*[np.arange(l, h) for l, h in zip(lo, hi)], indexing="ij"), -1).reshape(-1, 3)
    out = np.zeros(mask.shape, bool)
    out[tuple(idx[hull.find_simplex(idx) >= 0].T)] = True
    return out


def femoral_head(leg: Leg) -> tuple[np.ndarray, float]:
    """Centre (world mm) and radius (mm) of the femoral head from its cartilage."""
    return fit_sphere(_world_grid_points(leg, leg.labels == FEMUR_HEAD_CARTILAGE))


def rebuild_femur(leg: Leg, enclose_mm: float = 10.0, min_area_mm2: float = 250.0, max_area_mm2: float = 1600.0,
                  stats: dict | None = None) -> np.ndarray:
    """Boolean femur mask (X, Y, Z) on the leg's grid; see the module docstring."""
    lab, sp = leg.labels, float(leg.spacing[0])
    free = lab == 0
    soft = lab < 100  # free or muscle (no bone, cartilage or ligament)
    centre, radius = femoral_head(leg)
    head = _ball(leg, centre, radius - 1.5) & free
    distal = lab == FEMUR_DISTAL_CARTILAGE
    condyles = _hull_mask(leg, distal) & free
    z_idx = np.argwhere(distal)[:, 2]
    z0 = int(np.percentile(z_idx, 90))  # top of the condyle block
    z_head = int(round((centre[2] - leg.affine[2, 3]) / sp))
    z_top = z_head - int(round(2.0 * radius / sp))  # shaft tracked up to ~2 head radii below its centre
    shaft = np.zeros(lab.shape, bool)
    c = c_knee = np.argwhere(condyles[:, :, z0] | distal[:, :, z0]).mean(0)
    muscles = np.isin(lab, THIGH_MUSCLES)
    n_close = max(1, int(round(enclose_mm / sp)))
    close = ndimage.generate_binary_structure(2, 2 if n_close > 2 else 1)
    pad = n_close + 1
    cand = []  # (z, i, j, depth): up to 3 deepest free points per slice inside the muscle envelope
    for z in range(z0, z_top + 1):
        m = ndimage.binary_closing(np.pad(muscles[:, :, z], pad), close, iterations=n_close)[pad:-pad, pad:-pad]
        room = ndimage.binary_fill_holes(m) & ~muscles[:, :, z] & free[:, :, z]
        if not room.any():
            continue
        depth = ndimage.distance_transform_edt(room) * sp
        peaks = (depth == ndimage.maximum_filter(depth, size=5)) & (depth >= 6.0)
        ij = np.argwhere(peaks)
        for i, j in ij[np.argsort(-depth[peaks])][:3]:
            cand.append((z, i, j, depth[i, j]))
    # RANSAC line through the candidates that passes within 15 mm of the knee centre: the shaft axis
    zs = np.arange(z0, z_top + 1)
    pts = np.array(cand, float).reshape(-1, 4)
    rng = np.random.default_rng(0)
    best_in, fit = np.zeros(len(pts), bool), None
    for _ in range(300 if len(pts) >= 2 else 0):
        p, q = pts[rng.choice(len(pts), 2, replace=False)]
        if abs(q[0] - p[0]) < 5:
            continue
        slope = (q[1:3] - p[1:3]) / (q[0] - p[0])
        if np.linalg.norm(p[1:3] + slope * (z0 - p[0]) - c_knee) * sp > 15.0:
            continue
        off = np.linalg.norm(pts[:, 1:3] - (p[1:3] + slope * (pts[:, :1] - p[0])), axis=1) * sp
        inl = off <= 6.0
        if inl.sum() > best_in.sum():
            best_in = inl
    found = pts[best_in]
    if len(np.unique(found[:, 0])) >= 5:
        fit = [np.polyfit(np.r_[[z0] * 3, found[:, 0]], np.r_[[c_knee[k - 1]] * 3, found[:, k]], 1) for k in (1, 2)]
    else:  # no axis found: a vertical line above the knee
        fit = [np.array([0.0, c_knee[0]]), np.array([0.0, c_knee[1]])]
    radii = found[:, 3]
    line = np.stack([np.polyval(f, zs) for f in fit], 1)
    r_mm = float(np.clip(np.median(radii) if len(radii) else 12.0, 10.0, 16.0))
    for z, cz in zip(zs, line):
        # muscles win over the outer ring; a core of 0.6 r overrides muscle voxels where the
        # surfaces (smoothed without the femur) left no room, so the shaft stays continuous
        shaft[:, :, z] = (_disk(lab.shape[:2], cz, r_mm / sp) & free[:, :, z]) | (
            _disk(lab.shape[:2], cz, 0.6 * r_mm / sp) & soft[:, :, z])
    c, r_vox = line[-1], r_mm / sp
    if stats is not None:
        stats.update(slices=len(zs), axis_points=len(found), shaft_radius_mm=r_mm)
    # neck + trochanter: capsule to the shaft top, a wider disc column up to the head centre level
    top = leg.world(np.array([[c[0], c[1], z_top]], float))[0]
    neck = (_capsule(leg, centre, top, 0.65 * radius) & free) | (_capsule(leg, centre, top, 0.4 * radius) & soft)
    troch = np.zeros(lab.shape, bool)
    for z in range(z_top, min(z_head, lab.shape[2] - 1) + 1):
        troch[:, :, z] = _disk(lab.shape[:2], c, 1.3 * r_vox) & free[:, :, z]
    femur = head | condyles | shaft | neck | troch
    if stats is not None:
        stats["parts"] = {"head": head, "condyles": condyles, "shaft": shaft, "neck": neck, "trochanter": troch}
        stats["candidates"], stats["axis"] = pts, found
    femur = femur | (ndimage.binary_closing(femur, iterations=1) & free)
    comps, n = ndimage.label(femur)
    if n > 1:
        femur = comps == (np.argmax(np.bincount(comps.ravel())[1:]) + 1)
    return femur


def rebuild_hip_bone(leg: Leg, femur: np.ndarray, reach_mm: float = 10.0, acetabulum_mm: float = 10.0) -> np.ndarray:
    """Coarse hip-bone mask (X, Y, Z): between inner and outer hip muscles + acetabular shell."""
    lab, sp = leg.labels, leg.spacing
    free = (lab == 0) & ~femur
    d_in = ndimage.distance_transform_edt(~np.isin(lab, HIP_INNER), sampling=sp)
    d_out = ndimage.distance_transform_edt(~np.isin(lab, HIP_OUTER), sampling=sp)
    plate = free & (d_in <= reach_mm) & (d_out <= reach_mm)
    centre, radius = femoral_head(leg)
    shell = _ball(leg, centre, radius + acetabulum_mm) & ~_ball(leg, centre, radius + 0.5)
    acet = lab == ACETABULUM_CARTILAGE
    if acet.sum() > 10:
        near = ndimage.distance_transform_edt(~acet, sampling=sp) <= acetabulum_mm
    else:  # no acetabular cartilage (the man's right leg): the medial-superior half of the shell
        xs = leg.world(np.argwhere(shell).astype(float))
        medial = np.sign(-muscle_side_sign(leg))
        keep = ((xs - centre) @ np.array([medial, 0.0, 1.0]) / np.sqrt(2)) > 0.2 * radius
        near = np.zeros(lab.shape, bool)
        near[tuple(np.argwhere(shell)[keep].T)] = True
    hip = plate | (shell & near & free)
    hip = ndimage.binary_closing(hip, iterations=1) & free
    comps, n = ndimage.label(hip)
    if n > 1:  # keep components with at least 5 % of the largest
        sizes = np.bincount(comps.ravel())[1:]
        hip = np.isin(comps, np.flatnonzero(sizes >= 0.05 * sizes.max()) + 1)
    return hip


def muscle_side_sign(leg: Leg) -> float:
    """+1 for a right leg (lateral = +x in RAS), -1 for a left leg."""
    return 1.0 if leg.side == "right" else -1.0


def _centroids(leg: Leg, values) -> dict[int, np.ndarray]:
    present = [v for v in values if (leg.labels == v).any()]
    if not present:
        return {}
    com = ndimage.center_of_mass(np.ones_like(leg.labels, dtype=np.uint8), leg.labels, present)
    return {v: leg.world(np.array([c], float))[0] for v, c in zip(present, com)}


def similarity_fit(src: np.ndarray, dst: np.ndarray, scale: bool = True) -> np.ndarray:
    """4x4 world transform ``dst ≈ T @ src`` (Umeyama); src, dst (N, 3) mm."""
    ms, md = src.mean(0), dst.mean(0)
    a, b = src - ms, dst - md
    u, s, vt = np.linalg.svd(b.T @ a / len(src))
    d = np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt))])
    rot = u @ d @ vt
    k = (s * np.diag(d)).sum() / (a ** 2).sum(1).mean() if scale else 1.0
    t = np.eye(4)
    t[:3, :3] = k * rot
    t[:3, 3] = md - k * rot @ ms
    return t


def transfer_structures(target: Leg, source: Leg, values, landmarks, mirror: bool, scale: bool = False,
                        extra_landmarks: tuple[np.ndarray, np.ndarray] | None = None) -> dict[int, np.ndarray]:
    """Masks of ``values`` from ``source`` resampled onto ``target``'s grid (nearest).

    The world transform target <- source is a similarity (or rigid, ``scale=False``) fit of the
    centroids of the ``landmarks`` values present in both legs, after mirroring the source in x
    (``mirror=True``; the mirror plane is absorbed by the fit, i.e. it estimates the midsagittal
    plane of the pair). Each mask claims only the target's unlabelled voxels."""
    cs, ct = _centroids(source, landmarks), _centroids(target, landmarks)
    shared = [v for v in cs if v in ct]
    m = np.diag([-1.0 if mirror else 1.0, 1.0, 1.0, 1.0])
    src = np.array([(m[:3, :3] @ cs[v]) for v in shared])
    dst = np.array([ct[v] for v in shared])
    if extra_landmarks is not None:
        src = np.r_[src, extra_landmarks[0] @ m[:3, :3].T]
        dst = np.r_[dst, extra_landmarks[1]]
    if len(src) < 3:
        raise ValueError(f"only {len(src)} shared landmarks between {source.subject} {source.side} and "
                         f"{target.subject} {target.side}")
    world = similarity_fit(src, dst, scale) @ m  # target world <- source world
    pull = np.linalg.inv(source.affine) @ np.linalg.inv(world) @ target.affine
    free = target.labels == 0
    out = {}
    for v in values:
        moved = ndimage.affine_transform((source.labels == v).astype(np.uint8), pull, output_shape=target.labels.shape,
                                         order=0)
        out[v] = moved.astype(bool) & free
    return out


def fibula_ends(leg: Leg) -> np.ndarray:
    """World centroids (2, 3) of the fibula's top and bottom fifth: landmarks for the tibia."""
    idx = np.argwhere(leg.labels == ATLAS_FIBULA)
    z = idx[:, 2]
    lo, hi = np.percentile(z, [20, 80])
    return np.array([leg.world(idx[z <= lo].astype(float)).mean(0), leg.world(idx[z >= hi].astype(float)).mean(0)])
