"""Fusion of per-muscle probabilities: the most probable muscle wins, above a background threshold."""
from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, SpatialResample, Transform

from .boxes import Box
from .refine import LocalProbability

__all__ = ["fuse_probabilities", "MaxProbabilityFusion", "MaxProbabilityFusiond", "fuse_local_probabilities"]


def fuse_probabilities(probs, values: Sequence[int], threshold: float = 0.5):
    """``probs`` (M, X, Y, Z) → uint8 label map (X, Y, Z): ``values[argmax]`` where max ≥ threshold, else 0."""
    probs_t = torch.as_tensor(probs)
    best, idx = probs_t.max(0)
    lut = torch.tensor([int(v) for v in values], dtype=torch.uint8)
    labels = lut[idx]
    labels[best < threshold] = 0
    if isinstance(probs, MetaTensor):
        return MetaTensor(labels, affine=probs.affine, meta=dict(probs.meta))
    return labels


class MaxProbabilityFusion(Transform):
    """Array transform: (M, X, Y, Z) probabilities → (X, Y, Z) uint8 labels (``values`` per channel)."""

    def __init__(self, values: Sequence[int], threshold: float = 0.5):
        self.values, self.threshold = list(values), threshold

    def __call__(self, probs):
        return fuse_probabilities(probs, self.values, self.threshold)


class MaxProbabilityFusiond(MapTransform):
    """Dictionary twin of :class:`MaxProbabilityFusion`."""

    def __init__(self, keys: KeysCollection, values: Sequence[int], threshold: float = 0.5, allow_missing_keys=False):
        super().__init__(keys, allow_missing_keys)
        self.fuser = MaxProbabilityFusion(values, threshold)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.fuser(d[key])
        return d


# Resampling one block costs about this many bytes per target voxel: the float32 output plus
# grid_sample's (x, y, z) float32 sampling grid, with room for the intermediate copies.
RESAMPLE_BYTES_PER_VOXEL = 32


def block_voxels_for_budget(memory_budget_mb: float | None) -> int | None:
    """Largest block (target voxels) one resampling may cover within ``memory_budget_mb`` MB of
    working memory (None: no limit)."""
    if memory_budget_mb is None:
        return None
    return max(1 << 12, int(memory_budget_mb * 2**20 / RESAMPLE_BYTES_PER_VOXEL))


def _blocks(box: Box, max_voxels: int | None):
    """Split ``box`` into slabs along its longest axis, each at most ``max_voxels`` voxels."""
    if max_voxels is None or int(np.prod(box.shape)) <= max_voxels:
        yield box
        return
    axis = int(np.argmax(box.shape))
    per_step = int(np.prod(box.shape)) // box.shape[axis]
    step = max(1, max_voxels // max(per_step, 1))
    for a in range(box.start[axis], box.stop[axis], step):
        start, stop = list(box.start), list(box.stop)
        start[axis], stop[axis] = a, min(a + step, box.stop[axis])
        yield Box(tuple(start), tuple(stop))


def _resample_axis_aligned(prob: torch.Tensor, source_affine, target_affine, target_shape) -> torch.Tensor | None:
    """Trilinear resampling (zeros outside ``prob``, voxel centres at integer indices: what
    ``SpatialResample(mode="bilinear", padding_mode="zeros")`` computes) of ``prob`` (X, Y, Z)
    onto a target grid, as three 1D linear interpolations, when each target axis runs along one
    source axis (the grids differ by spacing, origin, flips and axis order, not by a rotation).
    Two taps per output voxel and pass instead of ``grid_sample``'s full sampling grid and eight
    taps: several times faster at the target's fine grid, equal to float rounding. None when
    the grids are oblique to each other."""
    xform = np.linalg.solve(np.asarray(source_affine, float), np.asarray(target_affine, float))  # target -> source index
    linear = xform[:3, :3]
    nonzero = np.abs(linear) > 1e-6 * np.abs(linear).max()
    if not (nonzero.sum(0) == 1).all() or not (nonzero.sum(1) == 1).all():
        return None
    source_axis_of = [int(np.flatnonzero(nonzero[:, t])[0]) for t in range(3)]  # target axis t -> source axis
    out = prob.float()
    for t in sorted(range(3), key=lambda t: target_shape[t] / max(prob.shape[source_axis_of[t]], 1)):
        s = source_axis_of[t]
        u = linear[s, t] * np.arange(target_shape[t], dtype=np.float64) + xform[s, 3]  # source index of each target voxel
        i0 = np.floor(u)
        weight = torch.as_tensor(u - i0, dtype=torch.float32)
        n = out.shape[s]
        # one zero voxel on each side; indices beyond it read a zero too
        padded = torch.nn.functional.pad(out.movedim(s, -1), (1, 1)).movedim(-1, s)
        lo = torch.as_tensor(np.clip(i0 + 1, 0, n + 1).astype(np.int64))
        hi = torch.as_tensor(np.clip(i0 + 2, 0, n + 1).astype(np.int64))
        shape = [1] * out.ndim
        shape[s] = -1
        weight = weight.reshape(shape)
        a = padded.index_select(s, lo)
        b = padded.index_select(s, hi)
        out = a.mul_(1 - weight).add_(b.mul_(weight))
    # axis s of ``out`` now holds target axis t: put the target axes in order
    return out.permute(*source_axis_of).contiguous()


def _reachable_box(item: LocalProbability, threshold_q: int) -> Box | None:
    """The part of ``item.box`` (stage-2 voxels) whose resampled probability can reach the fusion
    threshold, or None.

    A trilinear value is a weighted mean of its 8 neighbouring stage-2 voxels (zero outside the
    box), so it reaches ``threshold_q`` (in 1/255) only next to a voxel that does: the bounding box
    of those voxels, one voxel wider (clipped to the item's box), holds every target voxel that can
    be labelled with this muscle. Elsewhere the muscle's value stays below the threshold, where
    it would only win voxels that end as background anyway; so fusing only there gives the same
    labels, while resampling a fraction of the box at the target's (often sub-millimetre) grid.
    """
    prob = item.prob
    low = (threshold_q - 0.5) / 255.0 - 1e-6  # round(p * 255) >= threshold_q needs at least this
    if low <= 0:
        return item.box
    hot = prob >= low
    start, stop = [], []
    for axis in range(hot.ndim):
        present = torch.nonzero(hot.any(dim=tuple(a for a in range(hot.ndim) if a != axis))).flatten()
        if present.numel() == 0:
            return None
        start.append(max(int(present[0]) - 1, 0) + item.box.start[axis])
        stop.append(min(int(present[-1]) + 2, prob.shape[axis]) + item.box.start[axis])
    return Box(tuple(start), tuple(stop))


def fuse_local_probabilities(items: list[LocalProbability], values: dict[str, int], source_affine,
                             target_affine, target_shape, threshold: float = 0.5,
                             memory_budget_mb: float | None = None) -> torch.Tensor:
    """Max-probability fusion of per-muscle local maps directly on a target grid.

    Each local map (on a sub-box of the stage-2 grid with ``source_affine``) is resampled
    (trilinear, world coordinates) onto the part of the target grid its box covers, block by
    block, and stitched into a running per-voxel maximum kept in uint8 (probability x 255): the
    target grid only ever holds two uint8 arrays, whatever the number of muscles, and no float
    map larger than one block exists. ``memory_budget_mb`` bounds a block's working memory
    (see :func:`block_voxels_for_budget`); None resamples each muscle's box at once.

    Returns (X, Y, Z) uint8 labels on the target grid: the muscle of highest probability where
    that probability is at least ``threshold`` (to 1/255), else 0.
    """
    target_affine = np.asarray(target_affine, float)
    best = torch.zeros(tuple(target_shape), dtype=torch.uint8)
    labels = torch.zeros(tuple(target_shape), dtype=torch.uint8)
    resample = SpatialResample(mode="bilinear", padding_mode="zeros")
    max_voxels = block_voxels_for_budget(memory_budget_mb)
    threshold_q = int(np.ceil(threshold * 255 - 1e-6))
    for item in items:
        hot = _reachable_box(item, threshold_q)
        if hot is None:
            continue  # nowhere near the threshold: this muscle cannot label a voxel
        world = hot.to_world(source_affine)
        sub = world.to_voxels(target_affine, target_shape)
        if min(sub.shape) == 0:
            continue
        value = torch.tensor(values[item.muscle], dtype=torch.uint8)
        same_grid = np.allclose(source_affine, target_affine) and sub.shape == hot.shape and sub.start == hot.start
        src_crop_affine = item.box.affine_of_crop(source_affine)
        src = MetaTensor(item.prob[None].float(), affine=torch.as_tensor(src_crop_affine))
        for block in _blocks(sub, max_voxels):
            if same_grid:
                local = tuple(slice(a - s, b - s) for a, b, s in zip(block.start, block.stop, item.box.start))
                prob = item.prob[local].float()
            else:
                block_affine = block.affine_of_crop(target_affine)
                prob = _resample_axis_aligned(item.prob, src_crop_affine, block_affine, block.shape)
                if prob is None:  # oblique grids: MONAI's general resampling
                    prob = resample(src, dst_affine=torch.as_tensor(block_affine), spatial_size=block.shape)[0].as_tensor()
            quantised = (prob.clamp_(0, 1) * 255).round_().to(torch.uint8)
            del prob
            region = block.slices
            better = quantised > best[region]
            best[region] = torch.where(better, quantised, best[region])
            labels[region] = torch.where(better, value, labels[region])
    labels[best < int(np.ceil(threshold * 255 - 1e-6))] = 0
    return labels
