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
    for item in items:
        world = item.box.to_world(source_affine)
        sub = world.to_voxels(target_affine, target_shape)
        if min(sub.shape) == 0:
            continue
        value = torch.tensor(values[item.muscle], dtype=torch.uint8)
        same_grid = np.allclose(source_affine, target_affine) and sub.shape == item.box.shape and sub.start == item.box.start
        src = MetaTensor(item.prob[None].float(), affine=torch.as_tensor(item.box.affine_of_crop(source_affine)))
        for block in _blocks(sub, max_voxels):
            if same_grid:
                local = tuple(slice(a - s, b - s) for a, b, s in zip(block.start, block.stop, sub.start))
                prob = item.prob[local].float()
            else:
                prob = resample(src, dst_affine=torch.as_tensor(block.affine_of_crop(target_affine)),
                                spatial_size=block.shape)[0].as_tensor()
            quantised = (prob.clamp_(0, 1) * 255).round_().to(torch.uint8)
            del prob
            region = block.slices
            better = quantised > best[region]
            best[region] = torch.where(better, quantised, best[region])
            labels[region] = torch.where(better, value, labels[region])
    labels[best < int(np.ceil(threshold * 255 - 1e-6))] = 0
    return labels
