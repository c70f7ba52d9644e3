"""Clean-up of integer label maps after fusion: largest component, closing, hole filling.

All functions take a label map (X, Y, Z) (numpy, torch or MetaTensor; 2D works too) and return
the same type, dtype and metadata. They never move a voxel from one label to another:

1. ``largest_component``: per label value keep the largest connected component (cc3d, which we
   measured 2–10× faster than scipy and MONAI's ``KeepLargestConnectedComponent`` on 512²×200;
   all labels in one multi-label pass); the other islands become background. The largest
   component always stays, so no label is lost.
2. ``closing_mm``: per label, binary closing with a ball of that radius in mm (an ellipsoid in
   voxels, from ``spacing``) — it bridges thin gaps left between slices or at fascia. Closed
   voxels are added only where the map is background; labels are processed in increasing value,
   so where two labels' closings compete for a background voxel the lower value wins.
3. ``fill_holes``: per label, enclosed background cavities are filled; a cavity that contains any
   voxel of another label is left alone (it is anatomy, e.g. a vessel or bone, not a hole).

Holes are 3D cavities (6-connected background, as ``scipy.ndimage.binary_fill_holes``); a gap
that reaches the array border, or the top/bottom slice, is not a hole.
"""
from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import cc3d
from cc3d import fastcc3d
import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform
from monai.utils import convert_to_dst_type, convert_to_numpy
from scipy import ndimage

DEFAULT_CLOSING_MM = 2.0


def _spacing(labels, spacing, ndim: int) -> tuple[float, ...] | None:
    if spacing is None and isinstance(labels, MetaTensor):
        # column norms of the affine's spatial block (MetaTensor.pixdim assumes a channel axis)
        affine = convert_to_numpy(labels.affine)
        spacing = np.linalg.norm(affine[:ndim, :ndim], axis=0)
    if spacing is None:
        return None
    spacing = np.broadcast_to(np.asarray(spacing, dtype=float), (ndim,))
    if not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise ValueError(f"spacing must be positive and finite, got {tuple(spacing)}")
    return tuple(float(s) for s in spacing)


def ball_mm(radius_mm: float, spacing: Sequence[float]) -> np.ndarray:
    """Boolean structuring element: the voxels whose centres lie within ``radius_mm`` of the
    centre, with the given voxel size (an ellipsoid in voxel units)."""
    half = [int(np.floor(radius_mm / s)) for s in spacing]
    grids = np.meshgrid(*[np.arange(-h, h + 1) * s for h, s in zip(half, spacing)], indexing="ij")
    return sum(g**2 for g in grids) <= radius_mm**2 + 1e-9


def _box(objects_slice: tuple[slice, ...], margin: int | Sequence[int], shape: tuple[int, ...]) -> tuple[slice, ...]:
    margin = np.broadcast_to(margin, (len(shape),))
    return tuple(slice(max(s.start - m, 0), min(s.stop + m, n)) for s, m, n in zip(objects_slice, margin, shape))


def _label_boxes(labels: np.ndarray) -> dict[int, tuple[slice, ...]]:
    """Bounding box of every non-zero value (one ``ndimage.find_objects`` pass, no sort)."""
    if labels.size == 0 or labels.max() == 0:
        return {}
    if labels.min() < 0:
        raise ValueError("label maps must hold non-negative integers")
    boxes = ndimage.find_objects(labels.view(np.uint8) if labels.dtype == bool else labels)
    return {value: box for value, box in enumerate(boxes, start=1) if box is not None}


def _run_box(runs: np.ndarray, shape: tuple[int, ...]) -> tuple[slice, ...]:
    """Bounding box of the voxels covered by runs (R, 2) of C-order flat indices [start, stop).
    A run that stays on one line of an axis covers the indices between its ends on that axis;
    one that wraps onto the next line covers that axis from 0 to its end."""
    first = np.unravel_index(runs[:, 0], shape)
    last = np.unravel_index(runs[:, 1] - 1, shape)
    same_prefix = np.ones(len(runs), dtype=bool)  # first and last voxel agree on the earlier axes
    box = []
    for k, n in enumerate(shape):
        lo = np.where(same_prefix, first[k], 0).min()
        hi = np.where(same_prefix, last[k], n - 1).max()
        box.append(slice(int(lo), int(hi) + 1))
        same_prefix &= first[k] == last[k]
    return tuple(box)


def _largest_components(labels: np.ndarray, connectivity: int) -> tuple[np.ndarray, dict[int, tuple[slice, ...]]]:
    """:func:`keep_largest_component` on a copy of ``labels``, and the bounding box of each kept
    label {value: slices}, in increasing value.

    One multi-label cc3d pass labels every value's components at once (a voxel joins only voxels
    of its own value), numbered in C raster order of their first voxel; cc3d's run-length table
    of the components (``fastcc3d.runs``, what ``cc3d.largest_k`` uses) then gives each one's
    value, size and box at a fraction of a pass over the map, and the islands are erased along
    their runs (``fastcc3d.draw``)."""
    if labels.ndim == 2:  # the 3D names of face / full neighbourhoods, for 2D maps
        connectivity = {6: 4, 18: 8, 26: 8}.get(connectivity, connectivity)
    array = np.ascontiguousarray(labels)
    if array.size == 0 or not array.any():
        return array.copy(), {}
    if array.min() < 0:
        raise ValueError("label maps must hold non-negative integers")
    components = cc3d.connected_components(array, connectivity=connectivity)
    raw_runs = fastcc3d.runs(components)  # {id: [(start, stop), ...]}, C-order flat indices
    del components  # (4 bytes a voxel) before the copy of the map is made: a lower peak
    out = array.copy()
    runs = {int(cid): np.asarray(r, dtype=np.int64).reshape(-1, 2) for cid, r in raw_runs.items()}
    flat = out.reshape(-1)
    # per value: (size, -first voxel) of its largest component so far; ties go to the first found
    best: dict[int, tuple[int, int, int]] = {}
    islands = []
    for cid, r in runs.items():
        value = int(flat[r[0, 0]])
        key = (int((r[:, 1] - r[:, 0]).sum()), -int(r[0, 0]), cid)
        if value not in best:
            best[value] = key
        elif key[:2] > best[value][:2]:
            islands.append(best[value][2])
            best[value] = key
        else:
            islands.append(cid)
    # erase the islands in place through an unsigned view of the same memory (what draw takes)
    view = out.view(np.dtype(f"u{out.dtype.itemsize}")) if out.dtype != bool else out.view(np.uint8)
    for cid in islands:
        fastcc3d.draw(0, raw_runs[cid], view)
    boxes = {value: _run_box(runs[best[value][2]], out.shape) for value in sorted(best)}
    return out, boxes


def keep_largest_component(labels: np.ndarray, connectivity: int = 26) -> np.ndarray:
    """Per label value, keep only its largest connected component; the other islands become
    background. ``labels``: (X, Y, Z) or (X, Y) non-negative integers; returns a C-ordered copy.

    ``connectivity``: 6, 18 or 26 in 3D; 4 or 8 in 2D. Ties go to the component found first in
    C order (Fortran order for a Fortran-ordered map, as cc3d reads it). All labels
    are labelled in one multi-label cc3d pass, then only the smaller islands are erased."""
    labels = np.asarray(labels)
    if labels.flags.f_contiguous and not labels.flags.c_contiguous:
        # cc3d reads a Fortran-ordered map in Fortran order: so do the ties (its transpose is C)
        return np.ascontiguousarray(_largest_components(labels.T, connectivity)[0].T)
    return _largest_components(labels, connectivity)[0]


def _centred_cuboids(structure: np.ndarray) -> list[tuple[int, ...]]:
    """Half-sizes of the maximal centred boxes whose union is ``structure`` (a centred structure
    that is symmetric and orthogonally convex, such as :func:`ball_mm`: with every voxel ``p`` it
    holds the box spanned by ``±p``)."""
    half = np.array([n // 2 for n in structure.shape])
    points = np.unique(np.abs(np.argwhere(structure) - half), axis=0)
    return [tuple(int(v) for v in p) for p in points
            if not (np.all(points >= p, axis=1) & np.any(points > p, axis=1)).any()]


def _union_of_boxes(structure: np.ndarray, cuboids) -> bool:
    half = [n // 2 for n in structure.shape]
    union = np.zeros_like(structure)
    for c in cuboids:
        union[tuple(slice(h - a, h + a + 1) for h, a in zip(half, c))] = True
    return bool(np.array_equal(union, structure))


# --- binary morphology on bit-packed masks ------------------------------------------------------
# A mask (..., Z) is packed along its last (contiguous) axis into little-endian 64-bit words
# (..., ceil(Z / 64)): bit k of word w is voxel 64 w + k. One numpy operation then handles 64
# voxels, so the closing's many shifted ORs/ANDs cost ~1/30 of the same passes on booleans.
# Outside the array is background (0), as in scipy's binary_dilation and binary_erosion.
_WORD = np.dtype("<u8")


def _pack(mask: np.ndarray) -> np.ndarray:
    """bool (..., Z) with Z a multiple of 64 -> (..., Z // 64) words."""
    return np.packbits(mask, axis=-1, bitorder="little").view(_WORD)


def _unpack(words: np.ndarray, count: int) -> np.ndarray:
    """(..., W) words -> bool (..., count), the first ``count`` voxels of each row."""
    # as little-endian bytes whatever the machine (a no-op where it is little-endian)
    little = np.ascontiguousarray(words, dtype=_WORD)
    return np.unpackbits(little.view(np.uint8), axis=-1, count=count, bitorder="little").view(bool)


def _step(words: np.ndarray, axis: int, grow: bool) -> np.ndarray:
    """Dilation (``grow``) or erosion of packed words (C-contiguous) by the 3-voxel line
    {-1, 0, 1} along ``axis``; the last axis is the packed one.

    Along the packed axis the rows are shifted as one flat bit string, so a row's first bit
    takes the previous row's last bit and its last bit the next row's first one: callers keep
    the first and last bit of every row background (:func:`close_labels` pads the rows)."""
    combine = np.bitwise_or if grow else np.bitwise_and
    if axis == words.ndim - 1:
        flat = words.reshape(-1)
        out = flat << np.uint64(1)  # bit k takes bit k - 1
        out[1:] |= flat[:-1] >> np.uint64(63)
        combine(out, flat, out=out)
        above = flat >> np.uint64(1)  # bit k takes bit k + 1
        above[:-1] |= flat[1:] << np.uint64(63)
        combine(out, above, out=out)
        return out.reshape(words.shape)
    n = words.shape[axis]
    if n == 1:
        return words.copy() if grow else np.zeros_like(words)

    def along(index):
        key = [slice(None)] * words.ndim
        key[axis] = index
        return tuple(key)

    later, earlier = along(slice(1, None)), along(slice(None, -1))
    out = np.empty_like(words)
    combine(words[later], words[earlier], out=out[later])  # k with k - 1
    out[along(0)] = words[along(0)] if grow else 0  # outside the array: background
    combine(out[earlier], words[later], out=out[earlier])  # ... and with k + 1
    if not grow:
        out[along(n - 1)] = 0
    return out


def _morph_by_boxes(words: np.ndarray, cuboids, grow: bool) -> np.ndarray:
    """Dilation (``grow``: union over the boxes) or erosion (intersection over the boxes) of
    packed words by the union of centred boxes with these half-sizes (one per axis of the
    unpacked mask). A box is a line per axis, a line of half-size h is h steps of the 3-voxel
    line; boxes sharing their first half-sizes share those steps (the packed axis first)."""
    ndim = words.ndim
    order = [ndim - 1, *range(ndim - 1)]
    # partial[(h_a, h_b, ...)]: the mask after lines of those half-sizes along order[0], order[1], ...
    partial: dict[tuple[int, ...], np.ndarray] = {(): words}
    out = None
    for c in sorted(cuboids, key=lambda c: [c[ax] for ax in order]):
        key: tuple[int, ...] = ()
        for ax in order:
            parent, key = key, key + (c[ax],)
            if key in partial:
                continue
            if c[ax] == 0:
                partial[key] = partial[parent]
                continue
            # go on from the longest line already made along this axis from the same parent
            done = c[ax] - 1
            while done > 0 and parent + (done,) not in partial:
                done -= 1
            current = partial[parent + (done,)] if done else partial[parent]
            for h in range(done + 1, c[ax] + 1):
                current = _step(current, ax, grow)
                partial[parent + (h,)] = current
        result = partial[key]
        if out is None:
            out = result.copy()
        elif grow:
            out |= result
        else:
            out &= result
    return out


def close_labels(labels: np.ndarray, spacing: Sequence[float], radius_mm: float, boxes=None) -> np.ndarray:
    """Per label, binary closing with a ball of ``radius_mm`` (mm; ``spacing`` in mm per axis);
    adds voxels on background only, labels in increasing value (the lower value wins a voxel two
    closings add). ``labels``: (X, Y, Z) or (X, Y) integers.

    The same closing as ``ndimage.binary_closing`` of each label's mask with :func:`ball_mm`,
    padded so that the map's border does not erode it. Each label is closed inside its bounding
    box plus the radius, on its mask bit-packed along the last axis; the ball is a union of a
    few centred boxes, so the dilation is the union of box dilations and the erosion the
    intersection of box erosions, each a few shifted ORs/ANDs of packed words. ``boxes``:
    value -> a box holding that label (its bounding box or larger), when already known."""
    out = labels.copy()
    _close_in_place(out, spacing, radius_mm, boxes)
    return out


def _close_in_place(out: np.ndarray, spacing: Sequence[float], radius_mm: float, boxes=None) -> None:
    """:func:`close_labels` writing into ``out``. Each label's mask is read from ``out`` itself:
    the same mask as in the input, as a closing writes only its own value, on background."""
    structure = ball_mm(radius_mm, spacing)
    if structure.sum() <= 1:
        return  # every voxel is larger than the radius: closing is the identity
    half = [n // 2 for n in structure.shape]
    cuboids = _centred_cuboids(structure)
    if not _union_of_boxes(structure, cuboids):  # not expected for a ball; stay exact anyway
        cuboids = None
    for value, box in (_label_boxes(out) if boxes is None else boxes).items():
        box = _box(box, half, out.shape)
        region = out[box]
        inner = region.shape
        # pad by the radius so that the erosion does not eat a mask touching the crop border;
        # along the packed axis one more voxel each side (every row's first and last bit stay
        # background, see _step) and up to whole words (more zero padding changes nothing)
        offset = [*half[:-1], half[-1] + 1]
        padded = [n + 2 * h for n, h in zip(inner, offset)]
        padded[-1] = -(-padded[-1] // 64) * 64
        mask = np.zeros(padded, dtype=bool)
        core = tuple(slice(h, h + n) for h, n in zip(offset, inner))
        np.equal(region, value, out=mask[core])
        if cuboids is None:
            closed = ndimage.binary_erosion(ndimage.binary_dilation(mask, structure=structure), structure=structure)
            added = closed[core] & ~mask[core]
        else:
            words = _pack(mask)
            dilated = _morph_by_boxes(words, cuboids, grow=True)
            added_words = _morph_by_boxes(dilated, cuboids, grow=False)
            added_words &= ~words
            if not added_words.any():
                continue
            rows = tuple(slice(h, h + n) for h, n in zip(offset[:-1], inner[:-1]))
            added = _unpack(added_words[rows], offset[-1] + inner[-1])[..., offset[-1]:]
        region[added & (region == 0)] = value


def fill_label_holes(labels: np.ndarray, boxes=None) -> np.ndarray:
    """Per label, fill enclosed cavities made only of background (see the module docstring).
    ``labels``: (X, Y, Z) or (X, Y) integers. ``boxes``: value -> a box holding that label (its
    bounding box or larger: the cavities are the same), when already known."""
    out = labels.copy()
    _fill_in_place(out, boxes)
    return out


def _fill_in_place(out: np.ndarray, boxes=None) -> None:
    """:func:`fill_label_holes` writing into ``out`` (each label sees the earlier ones' fills)."""
    background_connectivity = 6 if out.ndim == 3 else 4
    for value, box in (_label_boxes(out) if boxes is None else boxes).items():
        region = out[box]
        # Every component of "not this label" that reaches the box's faces is outside (the
        # space beyond the box is connected); the others are enclosed: cavities. (The same
        # cavities as ndimage.binary_fill_holes, found in one cc3d pass.)
        outside = region != value
        components, n = cc3d.connected_components(outside, connectivity=background_connectivity, return_N=True)
        if n == 0:
            continue
        open_ids = np.zeros(n + 1, dtype=bool)
        open_ids[0] = True  # id 0: the label itself
        for axis in range(region.ndim):
            for index in (0, -1):
                open_ids[np.take(components, index, axis=axis)] = True
        if open_ids[1:].all():
            continue
        cavity = ~open_ids[components]
        # a cavity holding any voxel of another label is anatomy, not a hole: left alone
        fill = ~open_ids
        fill[components[cavity & (region != 0)]] = False
        region[fill[components]] = value


def clean_label_map(
    labels,
    spacing: Sequence[float] | None = None,
    largest_component: bool = True,
    closing_mm: float = DEFAULT_CLOSING_MM,
    fill_holes: bool = True,
    connectivity: int = 26,
):
    """Largest component, closing and hole filling of a label map (X, Y, Z) in one pass.

    ``spacing``: voxel size in mm per axis; taken from a MetaTensor's affine when None, and
    required when ``closing_mm > 0``. Returns the input's type, dtype, device and metadata.
    """
    array = np.asarray(convert_to_numpy(labels))
    if not (np.issubdtype(array.dtype, np.integer) or array.dtype == bool):
        raise ValueError(f"label maps must be integer arrays, got {array.dtype}")
    spacing = _spacing(labels, spacing, array.ndim)
    # the bounding box of every label, from the component pass when there is one: closing grows
    # a label by at most its radius, so these boxes, widened by that radius, still hold it
    if largest_component:
        out, boxes = _largest_components(array, connectivity)
    else:
        out, boxes = array.copy(), _label_boxes(array)
    if closing_mm and closing_mm > 0:
        if spacing is None:
            raise ValueError("closing_mm needs the voxel spacing: pass spacing= or a MetaTensor")
        _close_in_place(out, spacing, closing_mm, boxes=boxes)
        half = [int(np.floor(closing_mm / s)) for s in spacing]
        boxes = {v: _box(b, half, out.shape) for v, b in boxes.items()}
    if fill_holes:
        _fill_in_place(out, boxes=boxes)
    return convert_to_dst_type(out, labels, dtype=labels.dtype)[0]


class CleanLabelMap(Transform):
    """MONAI transform around :func:`clean_label_map` for channel-first label maps (C, X, Y, Z),
    each channel cleaned on its own. Spacing comes from the MetaTensor unless given."""

    backend = [torch.Tensor, np.ndarray]

    def __init__(
        self,
        spacing: Sequence[float] | None = None,
        largest_component: bool = True,
        closing_mm: float = DEFAULT_CLOSING_MM,
        fill_holes: bool = True,
        connectivity: int = 26,
    ):
        self.spacing = spacing
        self.largest_component = largest_component
        self.closing_mm = closing_mm
        self.fill_holes = fill_holes
        self.connectivity = connectivity

    def __call__(self, img):
        array = np.asarray(convert_to_numpy(img))
        spacing = _spacing(img, self.spacing, array.ndim - 1)
        cleaned = np.stack(
            [
                clean_label_map(
                    channel, spacing, self.largest_component, self.closing_mm, self.fill_holes, self.connectivity
                )
                for channel in array
            ]
        )
        return convert_to_dst_type(cleaned, img, dtype=img.dtype)[0]


class CleanLabelMapd(MapTransform):
    """Dictionary twin of :class:`CleanLabelMap`."""

    backend = CleanLabelMap.backend

    def __init__(
        self,
        keys: KeysCollection,
        spacing: Sequence[float] | None = None,
        largest_component: bool = True,
        closing_mm: float = DEFAULT_CLOSING_MM,
        fill_holes: bool = True,
        connectivity: int = 26,
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        self.cleaner = CleanLabelMap(spacing, largest_component, closing_mm, fill_holes, connectivity)

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.cleaner(d[key])
        return d
