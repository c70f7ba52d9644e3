"""Shape primitives of the phantoms, evaluated vectorised on point clouds.

Every primitive returns an approximate signed distance in mm (positive inside, negative
outside, ``-inf`` where the structure does not exist). Cross-sectional primitives ("tubes") are
keyframed along z: their parameters are tabulated once per phantom on fine z bins (PCHIP through
the keyframes, so shapes change smoothly along the limb) and looked up per point.

Coordinates are those of one side's frame: ``u`` lateral (mm from the midline, or from the leg
centre where a region adds it), ``v`` anterior, ``z`` superior, all float32 arrays of one shape.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy.interpolate import PchipInterpolator

F32 = np.float32


@dataclass(frozen=True)
class ZBins:
    """Fine bins along z on which keyframed parameters are tabulated (clamped outside)."""

    z0: float
    dz: float
    n: int

    @property
    def centers(self) -> np.ndarray:
        return _bin_centers(self.z0, self.dz, self.n)

    def index(self, z: np.ndarray) -> np.ndarray:
        i = np.floor((z - F32(self.z0)) * F32(1.0 / self.dz)).astype(np.int32)
        return np.clip(i, 0, self.n - 1, out=i)


@lru_cache(maxsize=16)
def _bin_centers(z0: float, dz: float, n: int) -> np.ndarray:
    c = z0 + dz * (np.arange(n) + 0.5)
    c.setflags(write=False)
    return c


def keyframed(zb: ZBins, knots_z, *values) -> np.ndarray:
    """Parameters tabulated on ``zb``: PCHIP through ``(knots_z, values)`` (one curve per
    ``values`` argument, all in one interpolator), constant beyond the end knots. Returns one
    float32 array per ``values`` (a single array if one was given)."""
    zk = np.atleast_1d(np.asarray(knots_z, dtype=np.float64))
    vk = np.stack([np.broadcast_to(np.asarray(v, dtype=np.float64), zk.shape) for v in values], axis=1)
    if len(zk) == 1 or np.all(vk == vk[:1]):
        out = np.repeat(vk[:1], zb.n, axis=0)
    else:
        order = np.argsort(zk)
        zc = np.clip(zb.centers, zk.min(), zk.max())
        out = PchipInterpolator(zk[order], vk[order], axis=0)(zc)
    out = out.astype(F32)
    return out[:, 0].copy() if len(values) == 1 else tuple(out[:, i].copy() for i in range(len(values)))


def presence(zb: ZBins, z_start: float, z_end: float, ramp: float) -> np.ndarray:
    """Size factor in [0, 1] along z: 0 outside [z_start, z_end], smooth ramps of ``ramp`` mm
    inside each end (muscles taper into their tendons)."""
    z = zb.centers

    def smooth(x):
        x = np.clip(x, 0.0, 1.0)
        return x * x * (3 - 2 * x)

    return (smooth((z - z_start) / ramp) * smooth((z_end - z) / ramp)).astype(F32)


def ellipse_sd(du, dv, a, b, cos_phi, sin_phi):
    """Approximate signed distance (mm, >0 inside) to an ellipse with semi-axes a (along the
    direction phi from +u) and b; first-order ``(1 - e) / |grad e|``, exact on the boundary."""
    p = cos_phi * du + sin_phi * dv
    q = cos_phi * dv - sin_phi * du
    inv_a = F32(1.0) / a
    inv_b = F32(1.0) / b
    pa = p * inv_a
    qb = q * inv_b
    e = np.sqrt(pa * pa + qb * qb)
    g = np.sqrt((pa * inv_a) ** 2 + (qb * inv_b) ** 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        sd = (F32(1.0) - e) * e / g
    # at the very centre the ratio is 0/0: the depth there is the smaller semi-axis
    return np.where(g > 0, sd, np.minimum(a, b))


class Tube:
    """A keyframed elliptical cross-section: centre (u, v), semi-axes (a, b), angle phi (deg),
    present between ``z_range`` with tapered ends (the semi-axes shrink to 0).

    ``expand`` (mm): how far beyond its nominal ellipse the structure may claim free space when
    it competes with neighbours (Voronoi-like packing inside the fascia).
    """

    def __init__(self, zb: ZBins, z, u, v, a, b, phi=0.0, z_range=(-np.inf, np.inf), ramp=20.0,
                 expand=10.0, scale=1.0):
        s = presence(zb, z_range[0], z_range[1], ramp) if np.isfinite(z_range).any() else np.ones(zb.n, F32)
        self.cu, self.cv, a, b, phi = keyframed(zb, z, u, v, a, b, phi)
        self.a = a * s * F32(scale)
        self.b = b * s * F32(scale)
        phi = np.deg2rad(phi)
        self.cos, self.sin = np.cos(phi).astype(F32), np.sin(phi).astype(F32)
        self.expand = np.minimum(F32(expand), F32(0.6) * np.sqrt(self.a * self.b)).astype(F32)
        self.present = self.a > 0.5
        zc = zb.centers[self.present]
        self.z_extent = (zc.min() - zb.dz, zc.max() + zb.dz) if len(zc) else (np.inf, -np.inf)
        # claimed points satisfy sd > -expand; since e / |grad e| >= min(a, b), they lie inside
        # the ellipse scaled by 1 + expand / min(a, b): its bounding box is safe for culling
        grow = 1 + self.expand / np.maximum(np.minimum(self.a, self.b), F32(1e-3))
        ga, gb = self.a * grow, self.b * grow
        half_u = np.sqrt((ga * self.cos) ** 2 + (gb * self.sin) ** 2) + F32(1e-3)
        half_v = np.sqrt((ga * self.sin) ** 2 + (gb * self.cos) ** 2) + F32(1e-3)
        self._set_box(self.cu - half_u, self.cu + half_u, self.cv - half_v, self.cv + half_v)

    def _set_box(self, umin, umax, vmin, vmax):
        """Per-bin bounding box (mm) of where the shape can claim points."""
        absent = ~self.present
        self._box = [np.where(absent, np.inf, umin), np.where(absent, -np.inf, umax),
                     np.where(absent, np.inf, vmin), np.where(absent, -np.inf, vmax)]

    def box(self, zi_lo: int, zi_hi: int):
        """Bounding box (umin, umax, vmin, vmax) over bins zi_lo..zi_hi."""
        sl = slice(zi_lo, zi_hi + 1)
        return (self._box[0][sl].min(), self._box[1][sl].max(), self._box[2][sl].min(), self._box[3][sl].max())

    def sd(self, u, v, zi):
        a, b = self.a[zi], self.b[zi]
        sd = ellipse_sd(u - self.cu[zi], v - self.cv[zi], np.maximum(a, F32(1e-3)), np.maximum(b, F32(1e-3)),
                        self.cos[zi], self.sin[zi])
        return np.where(self.present[zi], sd, F32(-np.inf))

    def claim(self, u, v, zi):
        """Signed distance where the structure may claim the point, else -inf."""
        sd = self.sd(u, v, zi)
        return np.where(sd > -self.expand[zi], sd, F32(-np.inf))


class TriTube(Tube):
    """A keyframed rounded triangle (e.g. the tibial shaft): radius ``r * (1 + k cos 3(theta -
    theta0))`` around the centre; ``theta0`` (deg) points at one apex."""

    def __init__(self, zb: ZBins, z, u, v, r, k=0.0, theta0=90.0, z_range=(-np.inf, np.inf), ramp=20.0, scale=1.0):
        super().__init__(zb, z, u, v, r, r, theta0, z_range, ramp, expand=0.0, scale=scale)
        self.k = keyframed(zb, z, k)
        reach = self.a * (1 + np.abs(self.k))
        self._set_box(self.cu - reach, self.cu + reach, self.cv - reach, self.cv + reach)

    def sd(self, u, v, zi):
        du, dv = u - self.cu[zi], v - self.cv[zi]
        rho = np.sqrt(du * du + dv * dv)
        with np.errstate(divide="ignore", invalid="ignore"):
            c = np.where(rho > 0, (du * self.cos[zi] + dv * self.sin[zi]) / rho, F32(1.0))
        cos3 = F32(4.0) * c * c * c - F32(3.0) * c
        sd = self.a[zi] * (F32(1.0) + self.k[zi] * cos3) - rho
        return np.where(self.present[zi], sd, F32(-np.inf))


class Plate:
    """A keyframed curved plate in cross-section (e.g. the iliac wing): a band of thickness ``t``
    (mm) along the circular arc from P1 = (u1, v1) to P2 = (u2, v2) that bulges ``bulge`` mm
    towards the right of the direction P1 -> P2 (rounded ends). Exact distance to the arc."""

    def __init__(self, zb: ZBins, z, u1, v1, u2, v2, bulge, t, z_range=(-np.inf, np.inf), ramp=10.0):
        u1, v1, u2, v2, bulge, t = keyframed(zb, z, u1, v1, u2, v2, bulge, t)
        p1 = np.stack([u1, v1]).astype(np.float64)
        p2 = np.stack([u2, v2]).astype(np.float64)
        h = np.maximum(bulge.astype(np.float64), 1e-3)
        self.t = t * (presence(zb, z_range[0], z_range[1], ramp)
                                        if np.isfinite(z_range).any() else F32(1))
        chord = p2 - p1
        c = np.linalg.norm(chord, axis=0)
        left = np.stack([-chord[1], chord[0]]) / c  # unit normal to the left of P1 -> P2
        radius = (c * c / 4 + h * h) / (2 * h)
        center = (p1 + p2) / 2 + left * (radius - h)  # the arc bulges to the right
        self.cu, self.cv = center.astype(F32)
        self.r = radius.astype(F32)
        self.a1u, self.a1v = (p1 - center).astype(F32)  # arc end vectors from the centre
        self.a2u, self.a2v = (p2 - center).astype(F32)
        self.p1u, self.p1v = p1.astype(F32)
        self.p2u, self.p2v = p2.astype(F32)
        self.present = self.t > 0.5
        zc = zb.centers[self.present]
        self.z_extent = (zc.min() - zb.dz, zc.max() + zb.dz) if len(zc) else (np.inf, -np.inf)
        reach = h.astype(F32) + self.t
        absent = ~self.present
        self._box = [np.where(absent, np.inf, np.minimum(self.p1u, self.p2u) - reach),
                     np.where(absent, -np.inf, np.maximum(self.p1u, self.p2u) + reach),
                     np.where(absent, np.inf, np.minimum(self.p1v, self.p2v) - reach),
                     np.where(absent, -np.inf, np.maximum(self.p1v, self.p2v) + reach)]

    box = Tube.box

    def sd(self, u, v, zi):
        du, dv = u - self.cu[zi], v - self.cv[zi]
        a1u, a1v, a2u, a2v = self.a1u[zi], self.a1v[zi], self.a2u[zi], self.a2v[zi]
        # inside the arc's wedge: the point lies between the end vectors (minor arc)
        turn = np.sign(a1u * a2v - a1v * a2u)
        in_wedge = (np.sign(a1u * dv - a1v * du) == turn) & (np.sign(du * a2v - dv * a2u) == turn)
        to_arc = np.abs(np.sqrt(du * du + dv * dv) - self.r[zi])
        to_ends = np.minimum(np.hypot(u - self.p1u[zi], v - self.p1v[zi]), np.hypot(u - self.p2u[zi], v - self.p2v[zi]))
        sd = self.t[zi] / 2 - np.where(in_wedge, to_arc, to_ends)
        return np.where(self.present[zi], sd, F32(-np.inf))


# ---------------------------------------------------------------- 3D primitives (hip bones)
class Solid:
    """Base of 3D primitives; ``z_extent`` lets callers skip slabs that cannot contain them."""

    z_extent = (-np.inf, np.inf)
    _bounds = (-np.inf, np.inf, -np.inf, np.inf)

    def box(self, zi_lo=None, zi_hi=None):
        return self._bounds

    def sd(self, u, v, z, zi=None):  # noqa: D401 - interface
        raise NotImplementedError


class Capsule(Solid):
    """Segment p0-p1 (mm, side frame) with radius varying linearly r0 -> r1 (a sphere if p0 == p1)."""

    def __init__(self, p0, p1, r0, r1=None):
        self.p0 = np.asarray(p0, dtype=np.float64)
        self.p1 = np.asarray(p1, dtype=np.float64)
        self.r0, self.r1 = float(r0), float(r0 if r1 is None else r1)
        rmax = max(self.r0, self.r1)
        self.z_extent = (min(self.p0[2], self.p1[2]) - rmax, max(self.p0[2], self.p1[2]) + rmax)
        lo, hi = np.minimum(self.p0, self.p1) - rmax, np.maximum(self.p0, self.p1) + rmax
        self._bounds = (lo[0], hi[0], lo[1], hi[1])

    def sd(self, u, v, z, zi=None):
        d = self.p1 - self.p0
        dd = float(d @ d)
        pu, pv, pz = u - F32(self.p0[0]), v - F32(self.p0[1]), z - F32(self.p0[2])
        if dd == 0:
            h = np.zeros_like(pu)
        else:
            h = np.clip((pu * F32(d[0]) + pv * F32(d[1]) + pz * F32(d[2])) * F32(1.0 / dd), 0, 1)
        qu, qv, qz = pu - h * F32(d[0]), pv - h * F32(d[1]), pz - h * F32(d[2])
        r = F32(self.r0) + h * F32(self.r1 - self.r0)
        return r - np.sqrt(qu * qu + qv * qv + qz * qz)


class Ellipsoid(Solid):
    """Axis-aligned ellipsoid (first-order signed distance)."""

    def __init__(self, center, radii):
        self.c = np.asarray(center, dtype=np.float64)
        self.r = np.asarray(radii, dtype=np.float64)
        self.z_extent = (self.c[2] - self.r[2], self.c[2] + self.r[2])
        self._bounds = (self.c[0] - self.r[0], self.c[0] + self.r[0], self.c[1] - self.r[1], self.c[1] + self.r[1])

    def sd(self, u, v, z, zi=None):
        x = [(u - F32(self.c[0])) / F32(self.r[0]), (v - F32(self.c[1])) / F32(self.r[1]),
             (z - F32(self.c[2])) / F32(self.r[2])]
        e = np.sqrt(x[0] ** 2 + x[1] ** 2 + x[2] ** 2)
        g = np.sqrt((x[0] / F32(self.r[0])) ** 2 + (x[1] / F32(self.r[1])) ** 2 + (x[2] / F32(self.r[2])) ** 2)
        with np.errstate(divide="ignore", invalid="ignore"):
            sd = (1 - e) * e / g
        return np.where(g > 0, sd, F32(self.r.min()))


class CupShell(Solid):
    """Spherical shell (r_in..r_out around ``center``) with the cap facing ``open_dir`` removed
    where the unit direction's dot product with it exceeds ``open_cos`` (the acetabulum)."""

    def __init__(self, center, r_in, r_out, open_dir, open_cos):
        self.c = np.asarray(center, dtype=np.float64)
        self.r_in, self.r_out = float(r_in), float(r_out)
        n = np.asarray(open_dir, dtype=np.float64)
        self.n = n / np.linalg.norm(n)
        self.open_cos = float(open_cos)
        self.z_extent = (self.c[2] - r_out, self.c[2] + r_out)
        self._bounds = (self.c[0] - r_out, self.c[0] + r_out, self.c[1] - r_out, self.c[1] + r_out)

    def sd(self, u, v, z, zi=None):
        du, dv, dz = u - F32(self.c[0]), v - F32(self.c[1]), z - F32(self.c[2])
        rho = np.sqrt(du * du + dv * dv + dz * dz)
        half = F32((self.r_out - self.r_in) / 2)
        sd = half - np.abs(rho - F32((self.r_out + self.r_in) / 2))
        with np.errstate(divide="ignore", invalid="ignore"):
            cosang = (du * F32(self.n[0]) + dv * F32(self.n[1]) + dz * F32(self.n[2])) / rho
        return np.where(cosang < F32(self.open_cos), sd, F32(-np.inf))
