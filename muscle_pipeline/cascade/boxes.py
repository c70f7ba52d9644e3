"""Bounding boxes for the cascade: from probability maps, learned priors, enlargement, jitter.

Two box types:

* :class:`Box` — voxel indices ``[start, stop)`` on one grid (array axes).
* :class:`WorldBox` — the same region in RAS world millimetres (``lo``/``hi`` corners). Boxes
  travel between the stage-1 grid, the stage-2 grid and the input grid as ``WorldBox``; any
  affine (flipped, permuted, oblique) converts through its 8 corners.

A voxel ``i`` covers the continuous index range ``[i - 0.5, i + 0.5]``.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import cc3d
import numpy as np
import torch

__all__ = [
    "Box",
    "WorldBox",
    "box_from_mask",
    "box_from_probability",
    "enlarge_box",
    "jitter_boxes",
    "BoxPriors",
]


@dataclass(frozen=True)
class Box:
    """Voxel box ``[start, stop)`` per array axis."""

    start: tuple[int, int, int]
    stop: tuple[int, int, int]

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(b - a) for a, b in zip(self.start, self.stop))

    @property
    def slices(self) -> tuple[slice, slice, slice]:
        return tuple(slice(int(a), int(b)) for a, b in zip(self.start, self.stop))

    def clip(self, shape) -> "Box":
        start = tuple(int(min(max(a, 0), s)) for a, s in zip(self.start, shape))
        stop = tuple(int(min(max(b, a), s)) for a, b, s in zip(start, self.stop, shape))
        return Box(start, stop)

    def union(self, other: "Box") -> "Box":
        return Box(tuple(min(a, b) for a, b in zip(self.start, other.start)),
                   tuple(max(a, b) for a, b in zip(self.stop, other.stop)))

    def contains(self, other: "Box") -> bool:
        return all(a <= b for a, b in zip(self.start, other.start)) and all(
            a >= b for a, b in zip(self.stop, other.stop))

    def to_world(self, affine) -> "WorldBox":
        """World-mm box covering these voxels (their outer faces) under ``affine`` (4×4, voxel → RAS mm)."""
        lo = np.asarray(self.start, float) - 0.5
        hi = np.asarray(self.stop, float) - 0.5
        corners = np.array(list(itertools.product(*[(lo[i], hi[i]) for i in range(3)])))
        world = _apply(np.asarray(affine, float), corners)
        return WorldBox(world.min(0), world.max(0))

    def affine_of_crop(self, affine) -> np.ndarray:
        """Affine of the sub-array ``array[box.slices]`` of an array with ``affine``."""
        a = np.array(affine, dtype=float, copy=True)
        a[:3, 3] = a[:3, :3] @ np.asarray(self.start, float) + a[:3, 3]
        return a


@dataclass(frozen=True)
class WorldBox:
    """Axis-aligned box in RAS world millimetres (``lo <= hi``)."""

    lo: np.ndarray
    hi: np.ndarray

    @property
    def size(self) -> np.ndarray:
        return np.asarray(self.hi) - np.asarray(self.lo)

    @property
    def center(self) -> np.ndarray:
        return (np.asarray(self.hi) + np.asarray(self.lo)) / 2

    def pad(self, margin_mm: float) -> "WorldBox":
        return WorldBox(np.asarray(self.lo) - margin_mm, np.asarray(self.hi) + margin_mm)

    def to_voxels(self, affine, shape) -> Box:
        """Voxels of a grid (``affine``, ``shape``) whose centres lie inside this box, clipped."""
        corners = np.array(list(itertools.product(*[(self.lo[i], self.hi[i]) for i in range(3)])))
        idx = _apply(np.linalg.inv(np.asarray(affine, float)), corners)
        eps = 1e-4
        start = np.ceil(idx.min(0) - eps).astype(int)
        stop = np.floor(idx.max(0) + eps).astype(int) + 1
        return Box(tuple(start), tuple(stop)).clip(shape)

    @staticmethod
    def from_center_size(center, size) -> "WorldBox":
        center, size = np.asarray(center, float), np.asarray(size, float)
        return WorldBox(center - size / 2, center + size / 2)


def _apply(affine: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ affine[:3, :3].T + affine[:3, 3]


def box_from_mask(mask) -> Box | None:
    """Tight box of the non-zero voxels of a 3D mask, or ``None`` when it is empty."""
    mask = np.asarray(mask.cpu() if isinstance(mask, torch.Tensor) else mask) != 0
    if not mask.any():
        return None
    idx = np.argwhere(mask)
    return Box(tuple(int(v) for v in idx.min(0)), tuple(int(v) + 1 for v in idx.max(0)))


def box_from_probability(prob, threshold: float = 0.5, largest_component: bool = True) -> Box | None:
    """Box of ``prob > threshold`` (3D array), restricted to its largest 26-connected component.

    The largest component keeps a stray false-positive blob far away from stretching the box.
    Returns ``None`` when no voxel passes the threshold (the structure vanished).
    """
    prob = np.asarray(prob.detach().cpu() if isinstance(prob, torch.Tensor) else prob)
    mask = prob > threshold
    if not mask.any():
        return None
    if largest_component:
        mask = cc3d.largest_k(mask.astype(np.uint8), k=1, connectivity=26) > 0
    return box_from_mask(mask)


def enlarge_box(box: Box, shape, rng: np.random.Generator, ratio_range=(1.0, 1.8)) -> Box:
    """Move each of the 6 box faces outwards independently, clipped to the grid ``shape``.

    A face moves by ``(r - 1) / 2`` of the box size along its axis with ``r ~ U(ratio_range)``,
    so an axis grows by a factor between ``ratio_range[0]`` and ``ratio_range[1]`` (Ni et al.
    2019: 1.0–1.8). Faces only move outwards, so whatever the box held stays inside.
    """
    size = np.asarray(box.shape, float)
    r_lo = rng.uniform(*ratio_range, size=3)
    r_hi = rng.uniform(*ratio_range, size=3)
    start = np.floor(np.asarray(box.start) - (r_lo - 1) / 2 * size).astype(int)
    stop = np.ceil(np.asarray(box.stop) + (r_hi - 1) / 2 * size).astype(int)
    return Box(tuple(start), tuple(stop)).clip(shape)


def jitter_boxes(box: Box, shape, n: int, rng: np.random.Generator, ratio_range=(1.0, 1.8)) -> list[Box]:
    """``n`` independently enlarged copies of ``box`` (test-time box jitter of Ni et al.)."""
    return [enlarge_box(box, shape, rng, ratio_range) for _ in range(n)]


class BoxPriors:
    """Where each muscle sits, learned from training boxes (world mm).

    * ``relative[m] = (lo, hi)``: the muscle's box within its stage-1 group's box, as fractions
      of the group box size (0 = group's lower face, 1 = upper face), averaged over training cases.
      Stage 1 predicts a group's box; ``muscle_box_from_group`` maps it to the muscle's box.
    * ``size[m]``: mean box size (mm); ``offset[m][n]``: mean centre of ``m`` minus centre of
      ``n`` (mm). Used by the neighbour fallback.

    Neighbour fallback (``from_neighbours``): a muscle without a box (its group vanished at low
    resolution) gets the box of size ``size[m]`` centred at the mean of
    ``centre(n) + offset[m][n]`` over its ``k`` nearest muscles ``n`` that do have a box
    (nearest by the mean training centre distance ``|offset[m][n]|``).
    """

    def __init__(self, groups: dict[str, list[str]], relative: dict, size: dict, offset: dict, k: int = 3):
        self.groups = {g: list(ms) for g, ms in groups.items()}
        self.relative = {m: (np.asarray(lo, float), np.asarray(hi, float)) for m, (lo, hi) in relative.items()}
        self.size = {m: np.asarray(s, float) for m, s in size.items()}
        self.offset = {m: {n: np.asarray(o, float) for n, o in d.items()} for m, d in offset.items()}
        self.k = k

    @property
    def muscles(self) -> list[str]:
        return [m for ms in self.groups.values() for m in ms]

    def group_of(self, muscle: str) -> str:
        for g, ms in self.groups.items():
            if muscle in ms:
                return g
        raise KeyError(muscle)

    @classmethod
    def fit(cls, cases: list[dict[str, WorldBox]], groups: dict[str, list[str]], k: int = 3) -> "BoxPriors":
        """Learn priors from training cases, each a mapping muscle → its true world box."""
        relative, size, offset = {}, {}, {}
        for g, muscles in groups.items():
            for m in muscles:
                rel_lo, rel_hi, sizes = [], [], []
                for case in cases:
                    if m not in case:
                        continue
                    gb = _group_box(case, muscles)
                    gsize = np.maximum(gb.size, 1e-6)
                    rel_lo.append((case[m].lo - gb.lo) / gsize)
                    rel_hi.append((case[m].hi - gb.lo) / gsize)
                    sizes.append(case[m].size)
                if not sizes:
                    raise ValueError(f"no training box for {m!r}")
                relative[m] = (np.mean(rel_lo, 0), np.mean(rel_hi, 0))
                size[m] = np.mean(sizes, 0)
        all_muscles = [m for ms in groups.values() for m in ms]
        for m in all_muscles:
            offset[m] = {}
            for n in all_muscles:
                if n == m:
                    continue
                d = [c[m].center - c[n].center for c in cases if m in c and n in c]
                if d:
                    offset[m][n] = np.mean(d, 0)
        return cls(groups, relative, size, offset, k)

    def muscle_box_from_group(self, muscle: str, group_box: WorldBox) -> WorldBox:
        lo_rel, hi_rel = self.relative[muscle]
        return WorldBox(group_box.lo + lo_rel * group_box.size, group_box.lo + hi_rel * group_box.size)

    def from_neighbours(self, muscle: str, known: dict[str, WorldBox]) -> WorldBox | None:
        candidates = [n for n in self.offset.get(muscle, {}) if n in known]
        if not candidates:
            return None
        candidates.sort(key=lambda n: float(np.linalg.norm(self.offset[muscle][n])))
        centres = [known[n].center + self.offset[muscle][n] for n in candidates[: self.k]]
        return WorldBox.from_center_size(np.mean(centres, 0), self.size[muscle])

    def to_dict(self) -> dict:
        return {
            "groups": self.groups,
            "k": self.k,
            "relative": {m: [lo.tolist(), hi.tolist()] for m, (lo, hi) in self.relative.items()},
            "size_mm": {m: s.tolist() for m, s in self.size.items()},
            "offset_mm": {m: {n: o.tolist() for n, o in d.items()} for m, d in self.offset.items()},
        }

    @classmethod
    def from_dict(cls, d: dict) -> "BoxPriors":
        return cls(d["groups"], d["relative"], d["size_mm"], d["offset_mm"], d.get("k", 3))


def _group_box(case: dict[str, WorldBox], muscles: list[str]) -> WorldBox:
    boxes = [case[m] for m in muscles if m in case]
    return WorldBox(np.min([b.lo for b in boxes], 0), np.max([b.hi for b in boxes], 0))
