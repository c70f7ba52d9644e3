"""2.5D inputs: a slice stacked with its neighbours as channels, and slice-wise inference.

Seed 004 feeds each 2D U-Net three channels: the slice and the slices about 4 mm either side
(+-2 slices on the 2 mm grid). :class:`NeighbourSlices` builds those channels for EVERY slice
of a volume at once, as a ``(3, X, Y, Z)`` volume whose channel ``k`` is the input shifted by
``offsets[k]`` voxels along the view's axis (edge slices repeat the border slice). MONAI's
``SliceInferer`` then cuts that volume into 2D slices along the same axis and runs the 2D
network on batches of them, so no hand-written slice loop is needed.

Views on a RAS-oriented grid ``(X, Y, Z)``: sagittal slices are perpendicular to x
(``spatial_dim=0``), coronal to y (1), axial to z (2).
"""
from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import torch
from monai.config import KeysCollection
from monai.inferers import SliceInferer
from monai.transforms import MapTransform, Transform
from monai.utils import convert_to_dst_type, convert_to_tensor

__all__ = ["VIEWS", "NeighbourSlices", "NeighbourSlicesd", "neighbour_offsets", "view_logits"]

VIEWS = {"sagittal": 0, "coronal": 1, "axial": 2}


def neighbour_offsets(neighbour_mm: float | None, spacing_mm: float) -> tuple[int, ...]:
    """Channel offsets in voxels: ``(-k, 0, +k)`` with ``k = round(neighbour_mm / spacing_mm)``;
    ``(0,)`` (a plain 2D input) when ``neighbour_mm`` is None or 0."""
    if not neighbour_mm:
        return (0,)
    k = max(1, int(round(float(neighbour_mm) / float(spacing_mm))))
    return (-k, 0, k)


class NeighbourSlices(Transform):
    """``(1, X, Y, Z)`` -> ``(len(offsets), X, Y, Z)``: channel ``k`` at slice ``i`` along
    ``spatial_dim`` is the input's slice ``clamp(i + offsets[k], 0, n - 1)``.

    Args:
        spatial_dim: 0, 1 or 2, the axis the 2D slices are perpendicular to.
        offsets: slice offsets in voxels, default ``(-2, 0, 2)`` (+-4 mm at 2 mm).
    """

    def __init__(self, spatial_dim: int, offsets: Sequence[int] = (-2, 0, 2)) -> None:
        if spatial_dim not in (0, 1, 2):
            raise ValueError(f"spatial_dim must be 0, 1 or 2, got {spatial_dim}")
        self.spatial_dim = int(spatial_dim)
        self.offsets = tuple(int(o) for o in offsets)

    def __call__(self, img):
        data = convert_to_tensor(img, track_meta=False)
        if data.ndim != 4 or data.shape[0] != 1:
            raise ValueError(f"NeighbourSlices expects (1, X, Y, Z), got {tuple(data.shape)}")
        axis = self.spatial_dim + 1
        n = data.shape[axis]
        index = torch.arange(n, device=data.device)
        # one gather per offset along the view's axis (not a loop over slices); clamping repeats
        # the border slice, the usual "replicate" padding for 2.5D stacks
        channels = [torch.index_select(data, axis, (index + o).clamp(0, n - 1)) for o in self.offsets]
        return convert_to_dst_type(torch.cat(channels, dim=0), img)[0]


class NeighbourSlicesd(MapTransform):
    """Dictionary twin of :class:`NeighbourSlices`."""

    def __init__(self, keys: KeysCollection, spatial_dim: int, offsets: Sequence[int] = (-2, 0, 2),
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.stacker = NeighbourSlices(spatial_dim, offsets)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.stacker(d[key])
        return d


def view_logits(volume: torch.Tensor, network: torch.nn.Module, spatial_dim: int,
                offsets: Sequence[int] = (-2, 0, 2), sw_batch_size: int = 16) -> torch.Tensor:
    """Run a 2D ``network`` over every slice of ``volume`` ``(1, X, Y, Z)`` along ``spatial_dim``.

    The 2.5D channels come from :class:`NeighbourSlices`; MONAI's ``SliceInferer`` (whole
    slices, ``sw_batch_size`` slices per forward pass) stacks the 2D outputs back into a
    volume. Spatial sizes must suit the network (multiples of 4 here). Returns
    ``(out_channels, X, Y, Z)`` logits.
    """
    stacked = NeighbourSlices(spatial_dim, offsets)(volume)
    inferer = SliceInferer(spatial_dim=spatial_dim, roi_size=(-1, -1), sw_batch_size=sw_batch_size,
                           progress=False)
    return inferer(torch.as_tensor(stacked)[None].float(), network)[0]
