"""N4 bias-field correction of MR images (SimpleITK), fitted fast on a shrunk image.

SimpleITK's N4 with its defaults at full resolution takes ~20 min on a 256x256x100 thigh
volume on two cores. Fitting the B-spline field on a x4 shrunk image inside an Otsu body
mask (3 levels x 50 iterations) and evaluating the fitted log field on the full-resolution
grid with ``GetLogBiasFieldAsImage(full_image)`` takes ~5 s with the same correction quality
(measured in ``/work/shared/reference/environment.md`` and ``benchmarks/bench_n4.py``).

The field is smooth and multiplicative: ``corrected = image / exp(log_field)``.
"""
from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms import MapTransform, Transform
from monai.utils import convert_to_dst_type, convert_to_numpy

from muscle_pipeline.transforms.intensity import has_hounsfield_air, otsu_body_mask
from muscle_pipeline.transforms.legs import voxel_spacing

if TYPE_CHECKING:  # imported where N4 runs: importing muscle_pipeline.transforms (the training path's
    # synthesis) must not need SimpleITK, a 52 MB wheel that cannot travel to a lent GPU machine
    import SimpleITK as sitk

__all__ = [
    "N4BiasFieldCorrection",
    "N4BiasFieldCorrectiond",
    "n4_log_bias_field",
    "shrink_factors_for_spacing",
    "to_sitk_image",
    "low_frequency_nonuniformity",
]

_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


def to_sitk_image(volume: np.ndarray, affine: np.ndarray | None = None) -> sitk.Image:
    """A spatial ``(X, Y, Z)`` array with a voxel->RAS mm ``affine`` as a SimpleITK image.

    SimpleITK arrays are ``(Z, Y, X)`` and its geometry is LPS, hence the transpose and the
    sign flip. Shear, if any, is dropped (polar decomposition): ITK needs an orthonormal
    direction, and N4 only needs the spacing to be right.
    """
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(volume, dtype=np.float32).transpose(2, 1, 0)))
    if affine is None:
        return image
    affine = np.asarray(affine, dtype=float)
    spacing = voxel_spacing(affine)
    u, _, vt = np.linalg.svd(affine[:3, :3] / spacing)
    direction = _RAS_TO_LPS @ (u @ vt)
    image.SetSpacing([float(s) for s in spacing])
    image.SetOrigin([float(o) for o in _RAS_TO_LPS @ affine[:3, 3]])
    image.SetDirection([float(v) for v in direction.ravel()])
    return image


def shrink_factors_for_spacing(spacing: Sequence[float], shrink_factor: int, shape: Sequence[int]) -> list[int]:
    """Per-axis shrink factors giving roughly isotropic fitting voxels.

    The finest axis is shrunk by ``shrink_factor``; coarser axes less, so 1.5x1.5x6 mm with
    factor 4 gives (4, 4, 1) (shrinking 6 mm slices 4x would leave 7 slices of 24 mm).
    No axis is shrunk below 4 voxels.
    """
    spacing = np.asarray(spacing, dtype=float)
    factors = []
    for step, size in zip(spacing, shape):
        factor = max(1, int(round(shrink_factor * spacing.min() / step)))
        factors.append(max(1, min(factor, int(size) // 4)))
    return factors


def n4_log_bias_field(volume: np.ndarray, affine: np.ndarray | None = None, mask: np.ndarray | None = None,
                      shrink_factor: int = 4, num_fitting_levels: int = 3, iterations_per_level: int = 50,
                      convergence_threshold: float = 0.001, num_control_points: int = 4,
                      num_threads: int | None = 2) -> np.ndarray:
    """Log bias field of one spatial volume ``(X, Y, Z)`` -> float32 ``(X, Y, Z)``.

    N4 is fitted on the volume shrunk by ``shrink_factors_for_spacing`` inside ``mask``
    (Otsu body mask when None; non-positive voxels are always left out because N4 works on
    log intensities), then the fitted B-spline is evaluated on the full-resolution grid.
    ``shrink_factor=1`` with ``num_fitting_levels=4`` and ``iterations_per_level=50`` are
    SimpleITK's defaults.
    """
    volume = np.asarray(volume, dtype=np.float32)
    if volume.ndim != 3:
        raise ValueError(f"N4 expects a spatial (X, Y, Z) volume, got shape {volume.shape}")
    body = otsu_body_mask(volume, affine) if mask is None else np.asarray(mask).astype(bool)
    if body.shape != volume.shape:
        raise ValueError(f"N4 mask shape {body.shape} does not match image {volume.shape}")
    body &= volume > 0
    if not body.any():
        raise ValueError("N4: the fitting mask holds no positive voxel")

    import SimpleITK as sitk

    full_image = to_sitk_image(volume, affine)
    mask_image = sitk.Cast(to_sitk_image(body.astype(np.float32), affine), sitk.sitkUInt8)
    # sitk.Image.GetSize() is (X, Y, Z) even though the numpy view is (Z, Y, X).
    factors = shrink_factors_for_spacing(full_image.GetSpacing(), shrink_factor, full_image.GetSize())
    shrunk_image = sitk.Shrink(full_image, factors)
    shrunk_mask = sitk.Shrink(mask_image, factors)

    corrector = sitk.N4BiasFieldCorrectionImageFilter()
    corrector.SetMaximumNumberOfIterations([int(iterations_per_level)] * int(num_fitting_levels))
    corrector.SetConvergenceThreshold(float(convergence_threshold))
    corrector.SetNumberOfControlPoints([int(num_control_points)] * 3)
    if num_threads is not None:
        corrector.SetNumberOfThreads(int(num_threads))
    corrector.Execute(shrunk_image, shrunk_mask)
    log_field = corrector.GetLogBiasFieldAsImage(full_image)
    return sitk.GetArrayFromImage(log_field).transpose(2, 1, 0).astype(np.float32)


class N4BiasFieldCorrection(Transform):
    """N4 bias-field correction of a channel-first MR image ``(C, X, Y, Z)``.

    Each channel is corrected on its own: ``image / exp(log_field)``, the field fitted fast
    on a shrunk image (see :func:`n4_log_bias_field`; defaults x4 shrink, Otsu body mask,
    3 levels x 50 iterations). Output float32 with the input's affine and meta. With
    ``return_field=True`` it returns ``(corrected, field)``, the multiplicative field on the
    same grid. The N4 correction changes intensities only, so there is nothing to invert.
    ``skip_ct``: return a CT image (Hounsfield air, :func:`has_hounsfield_air`) unchanged (as
    float32): CT has no receive-coil bias field, and N4 would fit one to anatomy (a bundle
    trained on MR and CT applies the same rule in training and inference).
    """

    def __init__(self, shrink_factor: int = 4, num_fitting_levels: int = 3, iterations_per_level: int = 50,
                 convergence_threshold: float = 0.001, num_control_points: int = 4,
                 return_field: bool = False, num_threads: int | None = 2, skip_ct: bool = False) -> None:
        if shrink_factor < 1 or num_fitting_levels < 1 or iterations_per_level < 1:
            raise ValueError("shrink_factor, num_fitting_levels and iterations_per_level must be >= 1")
        self.shrink_factor = int(shrink_factor)
        self.num_fitting_levels = int(num_fitting_levels)
        self.iterations_per_level = int(iterations_per_level)
        self.convergence_threshold = float(convergence_threshold)
        self.num_control_points = int(num_control_points)
        self.return_field = return_field
        self.num_threads = num_threads
        self.skip_ct = skip_ct

    def __call__(self, img: NdarrayOrTensor, mask: NdarrayOrTensor | None = None):
        data = convert_to_numpy(img).astype(np.float32, copy=False)
        if data.ndim != 4:
            raise ValueError(f"N4BiasFieldCorrection expects channel-first (C, X, Y, Z), got shape {data.shape}")
        if self.skip_ct and has_hounsfield_air(data):
            unchanged = convert_to_dst_type(data, img, dtype=torch.float32)[0]
            if self.return_field:
                return unchanged, convert_to_dst_type(np.ones_like(data), img, dtype=torch.float32)[0]
            return unchanged
        affine = getattr(img, "affine", None)
        affine = None if affine is None else convert_to_numpy(affine)
        body = None
        if mask is not None:
            body = convert_to_numpy(mask).astype(bool)
            if body.ndim == 4:
                body = body[0]
        field = np.empty_like(data)
        for channel in range(data.shape[0]):
            log_field = n4_log_bias_field(
                data[channel], affine, body, self.shrink_factor, self.num_fitting_levels,
                self.iterations_per_level, self.convergence_threshold, self.num_control_points, self.num_threads,
            )
            field[channel] = np.exp(log_field)
        corrected = convert_to_dst_type(data / field, img, dtype=torch.float32)[0]
        if self.return_field:
            return corrected, convert_to_dst_type(field, img, dtype=torch.float32)[0]
        return corrected


class N4BiasFieldCorrectiond(MapTransform):
    """Dictionary twin of :class:`N4BiasFieldCorrection`.

    ``mask_key`` names a fitting mask (else Otsu's body mask); with ``field_key`` the
    multiplicative field of the first corrected key is stored under that key.
    """

    def __init__(self, keys: KeysCollection, shrink_factor: int = 4, num_fitting_levels: int = 3,
                 iterations_per_level: int = 50, convergence_threshold: float = 0.001,
                 num_control_points: int = 4, mask_key: str | None = None, field_key: str | None = None,
                 num_threads: int | None = 2, skip_ct: bool = False, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.corrector = N4BiasFieldCorrection(shrink_factor, num_fitting_levels, iterations_per_level,
                                               convergence_threshold, num_control_points, return_field=True,
                                               num_threads=num_threads, skip_ct=skip_ct)
        self.mask_key = mask_key
        self.field_key = field_key

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        mask = d[self.mask_key] if self.mask_key is not None else None
        field_written = False
        for key in self.key_iterator(d):
            d[key], field = self.corrector(d[key], mask)
            if self.field_key is not None and not field_written:
                d[self.field_key] = field
                field_written = True
        return d


def low_frequency_nonuniformity(volume: NdarrayOrTensor, affine: NdarrayOrTensor | None = None,
                                mask: np.ndarray | None = None, block_mm: float = 30.0,
                                min_voxels_per_block: int = 50, erosion_voxels: int = 2) -> float:
    """Spread of the dominant tissue's local median intensity inside the body (a QC number).

    The body (``mask``, else Otsu's) is eroded by ``erosion_voxels`` in-plane to drop the
    skin's partial volumes; the voxels of the body's most frequent intensity class (3-class
    multi-Otsu, i.e. muscle in a thigh) are grouped into cubes of about ``block_mm``; the
    result is the coefficient of variation (std / mean) of the cubes' medians. A bias field
    spreads the medians; a flat image gives a value near 0. Input a spatial ``(X, Y, Z)``
    array.
    """
    from scipy import ndimage
    from skimage.filters import threshold_multiotsu

    values = convert_to_numpy(volume).astype(np.float32, copy=False)
    affine_np = None if affine is None else convert_to_numpy(affine)
    body = otsu_body_mask(values, affine_np) if mask is None else np.asarray(mask).astype(bool)
    if erosion_voxels > 0:
        structure = np.zeros((3, 3, 3), dtype=bool)
        structure[:, :, 1] = ndimage.generate_binary_structure(2, 1)
        body = ndimage.binary_erosion(body, structure, iterations=erosion_voxels)
    inside = values[body]
    thresholds = threshold_multiotsu(inside, classes=3)
    classes = np.digitize(inside, thresholds)
    dominant = np.bincount(classes, minlength=3).argmax()
    tissue = np.zeros_like(body)
    tissue[body] = classes == dominant

    spacing = np.ones(3) if affine_np is None else voxel_spacing(affine_np)
    block = np.maximum(1, np.round(block_mm / spacing)).astype(int)
    medians = []
    for i in range(0, values.shape[0], block[0]):
        for j in range(0, values.shape[1], block[1]):
            for k in range(0, values.shape[2], block[2]):
                region = (slice(i, i + block[0]), slice(j, j + block[1]), slice(k, k + block[2]))
                selected = values[region][tissue[region]]
                if selected.size >= min_voxels_per_block:
                    medians.append(float(np.median(selected)))
    if len(medians) < 2:
        raise ValueError("too few body blocks to measure non-uniformity")
    medians = np.asarray(medians)
    return float(medians.std() / medians.mean())
