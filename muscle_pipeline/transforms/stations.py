"""Join multi-station scans (e.g. whole-leg MRI acquired feet → pelvis) into one volume.

Some exports give every station the same header (QMRITools' demo ``Join_1`` … ``Join_7`` all
have origin (-240, -240, -93)), so stations cannot be placed by their headers. As QMRITools'
``JoinSets`` does, each consecutive pair is stacked by the overlap that fits best: for every
candidate overlap ``n`` the top ``n`` slices of the lower station are compared with the bottom
``n`` slices of the upper one by normalised cross-correlation (NCC) and the best ``n`` wins; the
overlap is blended with a linear ramp.

"Top" and "bottom" come from world z (the affine), never from array order: each station is
first put in superior-ascending order along its array axis closest to world z. Stations are
given from INFERIOR to SUPERIOR (feet first); :func:`join_stations` warns when a pair fits
clearly better the other way round.

The joined image keeps the stations' in-plane grid; slices ascend in world z along the same
array axis, and slice 0 sits where the first (lowest) station's lowest slice is.
"""
from __future__ import annotations

import warnings
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform

from muscle_pipeline.errors import InvalidGeometryError
from muscle_pipeline.transforms.legs import leg_axes


@dataclass
class JoinResult:
    """``image``: joined ``(C, X, Y, Z)`` MetaTensor; ``overlaps[i]``: slices shared by station i
    and i+1; ``correlations[i]``: the NCC at that overlap; ``offsets[i]``: index of station i's
    lowest slice along the joined axis; ``scales[i]``: intensity factor applied to station i;
    ``curves[i]``: NCC for every candidate overlap (index 0 = ``min_overlap``)."""

    image: MetaTensor
    overlaps: list[int]
    correlations: list[float]
    offsets: list[int]
    scales: list[float]
    curves: list[list[float]] = field(default_factory=list, repr=False)


def _superior_ascending(image: MetaTensor) -> tuple[np.ndarray, np.ndarray, int]:
    """Array (C, ..., Z-ish) with the world-z axis ascending, its affine, and that axis index."""
    affine = np.asarray(image.affine, dtype=float)
    axes = leg_axes(affine)
    array = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if array.ndim == 3:
        array = array[None]
    si = axes.si
    if affine[2, si] < 0:  # slices run downwards: reverse them and move the origin to the old end
        array = np.flip(array, axis=si + 1)
        flip = np.eye(4)
        flip[si, si], flip[si, 3] = -1.0, array.shape[si + 1] - 1
        affine = affine @ flip
    return np.ascontiguousarray(array), affine, si


def normalized_cross_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two equally shaped arrays (0 when either is constant)."""
    a = a.astype(np.float64).ravel()
    b = b.astype(np.float64).ravel()
    a = a - a.mean()
    b = b - b.mean()
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denom) if denom > 0 else 0.0


def overlap_curve(lower: np.ndarray, upper: np.ndarray, axis: int, min_overlap: int, max_overlap: int) -> list[float]:
    """NCC between the top ``n`` slices of ``lower`` and the bottom ``n`` of ``upper`` along
    ``axis`` (superior-ascending arrays), for n = min_overlap … max_overlap.

    One matrix of slice-by-slice dot products serves every ``n`` (same numbers as
    :func:`normalized_cross_correlation` on the two blocks).
    """
    top = np.moveaxis(lower, axis, 0)[-max_overlap:].reshape(max_overlap, -1).astype(np.float64)
    bottom = np.moveaxis(upper, axis, 0)[:max_overlap].reshape(max_overlap, -1).astype(np.float64)
    # cross[p, q] = <top slice p, bottom slice q>; elementwise rather than a BLAS matmul, whose
    # spinning threads crawl when torch's OpenMP threads share the same few cores
    cross = np.stack([(bottom * top_slice).sum(axis=1) for top_slice in top])
    t_sum, b_sum = top.sum(axis=1), bottom.sum(axis=1)
    t_sq, b_sq = (top * top).sum(axis=1), (bottom * bottom).sum(axis=1)
    voxels = top.shape[1]
    curve = []
    for n in range(min_overlap, max_overlap + 1):
        t_idx = np.arange(max_overlap - n, max_overlap)  # the top n slices of the lower station
        b_idx = np.arange(n)  # paired in order with the bottom n of the upper one
        count = n * voxels
        sa, sb = t_sum[t_idx].sum(), b_sum[b_idx].sum()
        cov = cross[t_idx, b_idx].sum() - sa * sb / count
        var_a = t_sq[t_idx].sum() - sa * sa / count
        var_b = b_sq[b_idx].sum() - sb * sb / count
        denom = np.sqrt(max(var_a, 0.0) * max(var_b, 0.0))
        curve.append(float(cov / denom) if denom > 0 else 0.0)
    return curve


def _check_order(lower, upper, axis, min_overlap, longest, best, i) -> None:
    reverse = overlap_curve(upper, lower, axis, min_overlap, longest)
    if max(reverse) > best + 0.1:
        warnings.warn(f"station {i} fits better BELOW station {i - 1} (NCC {max(reverse):.2f} vs "
                      f"{best:.2f}): are the stations ordered from inferior to superior?", stacklevel=3)


def join_stations(
    stations: Sequence[MetaTensor],
    min_overlap: int = 1,
    max_overlap: int | None = None,
    normalize: bool = True,
    overlaps: Sequence[int] | None = None,
) -> JoinResult:
    """Join stations given from inferior to superior into one volume (see module docstring).

    ``stations``: MetaTensors ``(C, X, Y, Z)`` (or ``(X, Y, Z)``) sharing the in-plane grid.
    ``max_overlap``: largest overlap tried (default: half the shorter station).
    ``normalize``: scale each station so its mean intensity in the overlap matches the station
    below (MR stations differ in coil sensitivity); factors compound from the first station.
    ``overlaps``: known overlaps (slices, one per pair) instead of searching for them.
    """
    if len(stations) < 2:
        raise ValueError("joining needs at least two stations")
    if min_overlap < 1:
        raise ValueError(f"min_overlap must be at least 1, got {min_overlap}")
    prepared = [_superior_ascending(s) for s in stations]
    first_array, first_affine, si = prepared[0]
    axis = si + 1  # with the channel
    for i, (array, affine, s) in enumerate(prepared[1:], start=1):
        same_plane = np.delete(np.asarray(array.shape), axis) == np.delete(np.asarray(first_array.shape), axis)
        if s != si or not same_plane.all() or not np.allclose(np.delete(affine[:3, :3], si, axis=1),
                                                               np.delete(first_affine[:3, :3], si, axis=1), atol=1e-3):
            source = getattr(stations[i], "meta", {}).get("filename_or_obj") or None
            raise InvalidGeometryError(source, f"station {i} does not share the in-plane grid (shape, spacing, "
                                               "orientation) of the first station; cannot join")

    if overlaps is not None and len(overlaps) != len(prepared) - 1:
        raise ValueError(f"{len(prepared)} stations need {len(prepared) - 1} overlaps, got {len(overlaps)}")
    given = overlaps
    # work slice-first, (Z, C, X, Y)-like and contiguous: slices along the joined axis are cheap
    slabs = [np.ascontiguousarray(np.moveaxis(p[0], axis, 0), dtype=np.float32) for p in prepared]
    overlaps, correlations, curves, scales = [], [], [], [1.0]
    pieces = [slabs[0]]  # the joined volume so far; its last piece ends with the current top
    offsets = [0]
    for i in range(1, len(slabs)):
        lower, upper = slabs[i - 1], slabs[i]
        longest = min(len(lower), len(upper)) // 2 if max_overlap is None else max_overlap
        longest = max(min_overlap, min(longest, len(lower) - 1, len(upper) - 1))
        if given is not None:
            n = int(given[i - 1])
            if not 1 <= n < min(len(lower), len(upper)):
                raise ValueError(f"overlap {n} between stations {i - 1} and {i} must be 1..{min(len(lower), len(upper)) - 1}")
            curve = overlap_curve(lower, upper, 0, n, n)
            correlations.append(float(curve[0]))
        else:
            curve = overlap_curve(lower, upper, 0, min_overlap, longest)
            n = min_overlap + int(np.argmax(curve))
            _check_order(lower, upper, 0, min_overlap, longest, max(curve), i)
            correlations.append(float(curve[n - min_overlap]))
        overlaps.append(n)
        curves.append([float(c) for c in curve])

        previous = pieces.pop()  # already scaled; its top n slices overlap the upper station
        top, bottom = previous[-n:], upper[:n]
        scale = 1.0
        if normalize:
            # mean over the voxels with signal in either station (background would dilute it)
            signal = (top != 0) | (bottom != 0)
            if signal.any() and float(bottom[signal].mean()) != 0.0:
                scale = float(top[signal].mean() / bottom[signal].mean())
        scaled_upper = upper * np.float32(scale)
        scales.append(scale)
        # linear ramp over the overlap: the lower station's weight falls from n/(n+1) to 1/(n+1)
        w_lower = (np.arange(n, 0, -1, dtype=np.float32) / (n + 1)).reshape((n,) + (1,) * (upper.ndim - 1))
        blended = w_lower * top + (1 - w_lower) * scaled_upper[:n]
        pieces += [previous[:-n], blended, scaled_upper[n:]]
        offsets.append(sum(len(piece) for piece in pieces[:-2]))
    joined = np.moveaxis(np.concatenate(pieces, axis=0), 0, axis)

    meta = {k: v for k, v in getattr(stations[0], "meta", {}).items()
            if k not in ("affine", "original_affine", "spatial_shape", "filename_or_obj")}
    meta.update(affine=torch.as_tensor(first_affine, dtype=torch.float64),
                original_affine=first_affine.copy(),
                spatial_shape=np.asarray(joined.shape[1:]),
                station_overlaps=list(overlaps), station_offsets=list(offsets))
    image = MetaTensor(torch.as_tensor(joined), meta=meta)
    return JoinResult(image, overlaps, correlations, offsets, scales, curves)


class JoinStations(Transform):
    """Array transform: a sequence of station MetaTensors (inferior first) → one joined
    ``(C, X, Y, Z)`` MetaTensor (``meta['station_overlaps']`` lists the overlaps in slices)."""

    def __init__(self, min_overlap: int = 1, max_overlap: int | None = None, normalize: bool = True) -> None:
        self.min_overlap = min_overlap
        self.max_overlap = max_overlap
        self.normalize = normalize

    def __call__(self, stations: Sequence[MetaTensor]) -> MetaTensor:
        return join_stations(stations, self.min_overlap, self.max_overlap, self.normalize).image


class JoinStationsd(MapTransform):
    """Dictionary twin: joins ``keys`` (in the given order, inferior first) into ``output_key``."""

    def __init__(self, keys: KeysCollection, output_key: str = "image", min_overlap: int = 1,
                 max_overlap: int | None = None, normalize: bool = True, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.output_key = output_key
        self.joiner = JoinStations(min_overlap, max_overlap, normalize)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        d[self.output_key] = self.joiner([d[key] for key in self.key_iterator(d)])
        return d
