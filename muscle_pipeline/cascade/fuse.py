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


def fuse_local_probabilities(items: list[LocalProbability], values: dict[str, int], source_affine,
                             target_affine, target_shape, threshold: float = 0.5) -> torch.Tensor:
    """Max-probability fusion of per-muscle local maps directly on a target grid.

    Each local map (on a sub-box of the stage-2 grid with ``source_affine``) is resampled
    (trilinear, world coordinates) onto the part of the target grid its box covers, and a running
    per-voxel maximum keeps memory at two target-sized arrays whatever the number of muscles.

    Returns (X, Y, Z) uint8 labels on the target grid.
    """
    target_affine = np.asarray(target_affine, float)
    best = torch.zeros(tuple(target_shape))
    labels = torch.zeros(tuple(target_shape), dtype=torch.uint8)
    resample = SpatialResample(mode="bilinear", padding_mode="zeros")
    for item in items:
        world = item.box.to_world(source_affine)
        sub = world.to_voxels(target_affine, target_shape)
        if min(sub.shape) == 0:
            continue
        src = MetaTensor(item.prob[None].float(), affine=torch.as_tensor(item.box.affine_of_crop(source_affine)))
        if np.allclose(source_affine, target_affine) and sub.shape == item.box.shape and sub.start == item.box.start:
            prob = item.prob.float()
        else:
            prob = resample(src, dst_affine=torch.as_tensor(sub.affine_of_crop(target_affine)),
                            spatial_size=sub.shape)[0].as_tensor()
        region = sub.slices
        better = prob > best[region]
        best[region] = torch.where(better, prob, best[region])
        labels[region] = torch.where(better, torch.tensor(values[item.muscle], dtype=torch.uint8), labels[region])
    labels[best < threshold] = 0
    return labels
