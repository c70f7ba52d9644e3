"""Sampling grid of a phantom: orientation code + spacing + shape -> voxel->RAS affine, and the
body-frame coordinates of voxel centres, produced slab by slab so memory stays bounded.

Frames:
  * world: RAS+ mm (what MetaTensor/nibabel affines map voxel indices to);
  * body:  RAS+ mm of the un-rotated anatomy, origin at the field-of-view centre.
    ``world = center + R @ body`` with ``R`` from ``rotation_deg``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from nibabel.orientations import axcodes2ornt


def rotation_matrix(rotation_deg: tuple[float, float, float]) -> np.ndarray:
    """3x3 rotation for extrinsic rotations about world x, then y, then z (degrees):
    ``R = Rz @ Ry @ Rx``."""
    rx, ry, rz = np.deg2rad(np.asarray(rotation_deg, dtype=np.float64))
    cx, sx, cy, sy, cz, sz = np.cos(rx), np.sin(rx), np.cos(ry), np.sin(ry), np.cos(rz), np.sin(rz)
    r_x = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    r_y = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    r_z = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return r_z @ r_y @ r_x


def parse_orientation(orientation: str) -> np.ndarray:
    """Orientation code (e.g. ``"RAS"``, ``"LPS"``, ``"PIR"``; letter i = the direction array
    axis i increases towards) -> nibabel ornt array ``(3, 2)`` of (world axis, ±1)."""
    code = str(orientation).upper()
    if len(code) != 3 or not set(code) <= set("LRAPSI"):
        raise ValueError(f"orientation must be a 3-letter code of L/R, A/P, S/I, got {orientation!r}")
    ornt = axcodes2ornt(tuple(code))
    if np.isnan(ornt).any() or len({int(a) for a in ornt[:, 0]}) != 3:
        raise ValueError(f"orientation {orientation!r} must name each of the L-R, A-P and S-I axes once")
    return ornt


@dataclass(frozen=True)
class Grid:
    """A phantom's voxel grid.

    shape: voxels per array axis; spacing: mm per array axis; ornt: nibabel ornt (3, 2);
    center: world RAS mm of the FOV centre; rotation: 3x3 body->world rotation.
    """

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    ornt: np.ndarray
    center: np.ndarray
    rotation: np.ndarray

    @property
    def direction(self) -> np.ndarray:
        """3x3: column i = world step (mm) of one voxel along array axis i."""
        d = np.zeros((3, 3))
        for i, (axis, flip) in enumerate(self.ornt):
            d[int(axis), i] = flip * self.spacing[i]
        return d

    @property
    def affine(self) -> np.ndarray:
        """4x4 voxel index -> world RAS mm; the FOV centre maps to ``center``."""
        a = np.eye(4)
        a[:3, :3] = self.direction
        a[:3, 3] = self.center - self.direction @ ((np.asarray(self.shape) - 1) / 2.0)
        return a

    def world_axis_of_array_axis(self, i: int) -> int:
        return int(self.ornt[i, 0])

    def body_coords(self, axis: int, start: int, stop: int, compact: bool = False
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Body-frame (x, y, z) mm, float32, of the voxel centres whose index along array
        ``axis`` lies in ``[start, stop)``; arrays have the slab's shape (or, with ``compact``
        and no rotation, shapes that broadcast to it).

        Centred indices ``i - (n-1)/2`` are exact half-integers and one flip is an exact
        negation, so the same physical voxel gets bit-identical coordinates whatever the
        orientation code: phantoms of one seed in two orientations agree voxel for voxel.
        """
        centred = []
        for i, n in enumerate(self.shape):
            idx = np.arange(start, stop) if i == axis else np.arange(n)
            shape = [1, 1, 1]
            shape[i] = len(idx)
            centred.append((idx - (n - 1) / 2.0).reshape(shape))
        # world - center, component by component; each world axis comes from one array axis.
        rel = [None, None, None]
        for i, (waxis, flip) in enumerate(self.ornt):
            rel[int(waxis)] = centred[i] * (flip * self.spacing[i])
        slab_shape = np.broadcast_shapes(*(c.shape for c in centred))
        if np.allclose(self.rotation, np.eye(3), atol=0, rtol=0):
            if compact:
                return tuple(r.astype(np.float32) for r in rel)
            return tuple(np.broadcast_to(r, slab_shape).astype(np.float32) for r in rel)
        rt = self.rotation.T  # body = R^T (world - center)
        out = []
        for row in rt:
            acc = row[0] * rel[0] + row[1] * rel[1] + row[2] * rel[2]
            out.append(np.broadcast_to(acc, slab_shape).astype(np.float32))
        return tuple(out)

    def slabs(self, axis: int, max_voxels: int):
        """Yield ``(start, stop)`` ranges along ``axis`` with at most ``max_voxels`` voxels each."""
        per_index = int(np.prod(self.shape)) // self.shape[axis]
        step = max(1, max_voxels // max(per_index, 1))
        for start in range(0, self.shape[axis], step):
            yield start, min(start + step, self.shape[axis])


def make_grid(shape, spacing, orientation, center, rotation_deg) -> Grid:
    shape = tuple(int(n) for n in shape)
    spacing = tuple(float(s) for s in spacing)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"shape must be three positive integers, got {shape}")
    if len(spacing) != 3 or not all(np.isfinite(spacing)) or min(spacing) <= 0:
        raise ValueError(f"spacing must be three positive finite mm values, got {spacing}")
    return Grid(shape, spacing, parse_orientation(orientation), np.asarray(center, dtype=np.float64).reshape(3),
                rotation_matrix(rotation_deg))
