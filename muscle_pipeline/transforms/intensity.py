"""Intensity presets: CT Hounsfield windows and MR percentile clipping + z-score inside the body.

All transforms take channel-first arrays or MetaTensors ``(C, X, Y, Z)`` and keep the
MetaTensor's affine and meta. None of them moves voxels, so none needs inverting.

Named presets (usable from a bundle config)::

    {"_target_": "muscle_pipeline.transforms.intensity_preset", "name": "ct_muscle", "keys": ["image"]}
"""
from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms import (
    Compose,
    IntensityRemap,
    MapTransform,
    RandomizableTransform,
    ScaleIntensityRange,
    ScaleIntensityRanged,
    Transform,
)
from monai.utils import convert_to_dst_type, convert_to_numpy, convert_to_tensor

__all__ = [
    "CT_MUSCLE_WINDOW_HU",
    "CT_BONE_WINDOW_HU",
    "CT_SOFT_TISSUE_WINDOW_HU",
    "otsu_body_mask",
    "HOUNSFIELD_AIR_HU",
    "has_hounsfield_air",
    "low_percentile",
    "CTWindow",
    "CTWindowd",
    "MRNormalize",
    "MRNormalized",
    "RandContrastRemap",
    "RandContrastRemapd",
    "PRESETS",
    "intensity_preset",
]

# Muscle window, -100 ... 250 HU (level 75, width 350). Why these bounds:
#  * fat is -190 ... -30 HU and muscle +35 ... +55 HU (unenhanced), so -100 keeps fat just
#    above black and distinguishable from muscle, and intramuscular fat infiltration stays
#    visible as partial-volume greys instead of being clipped away;
#  * +250 keeps enhanced vessels, tendons and trabecular bone on the scale while saturating
#    cortical bone (> ~400 HU), which the muscle networks only need as a dark/bright boundary.
# A lower bound of +100 (a typo seen in an earlier draft: "100 to 250") would clip muscle
# itself (~40 HU) to zero and erase the fat/muscle contrast.
CT_MUSCLE_WINDOW_HU = (-100.0, 250.0)
# Radiological bone window, level 400 / width 1800 HU.
CT_BONE_WINDOW_HU = (-500.0, 1300.0)
# Radiological soft-tissue window, level 40 / width 400 HU.
CT_SOFT_TISSUE_WINDOW_HU = (-160.0, 240.0)


# Air is about -1000 HU in CT; MR intensities are never this negative. The one rule that tells CT
# from MR by intensities alone: recognition (the modality in report.json), region recognition (HU
# bone thresholds) and N4 (skipped on CT) all ask :func:`has_hounsfield_air`, so they cannot disagree.
HOUNSFIELD_AIR_HU = -500.0


def low_percentile(image: NdarrayOrTensor, max_samples: int = 2_000_000) -> float:
    """1st percentile of an image's intensities (any shape), from at most ``max_samples`` evenly
    strided voxels (~30 ms for a 512x512x400 CT); NaN for an empty image or a sampled NaN."""
    array = convert_to_numpy(image).reshape(-1)
    if not array.size:
        return float("nan")
    return float(np.percentile(array[:: max(1, array.size // max_samples)], 1))


def has_hounsfield_air(image: NdarrayOrTensor, max_samples: int = 2_000_000) -> bool:
    """Whether an image's intensities are CT Hounsfield units: its 1st percentile
    (:func:`low_percentile`) is below :data:`HOUNSFIELD_AIR_HU` (-500)."""
    return low_percentile(image, max_samples) < HOUNSFIELD_AIR_HU


def _slice_axis(affine: np.ndarray | None) -> int:
    """Array axis (0..2) whose world direction is closest to superior-inferior (axial slices)."""
    if affine is None:
        return 2
    direction = np.asarray(affine, dtype=float)[:3, :3]
    direction = direction / np.linalg.norm(direction, axis=0, keepdims=True)
    return int(np.argmax(np.abs(direction[2])))


def otsu_body_mask(image: NdarrayOrTensor, affine: NdarrayOrTensor | None = None,
                   min_component_fraction: float = 0.1) -> np.ndarray:
    """Body (foreground) mask of one spatial volume ``(X, Y, Z)`` -> bool ``(X, Y, Z)``.

    Kept under its old name for its callers (N4, MRNormalize, femur search); it is
    :func:`muscle_pipeline.transforms.legs.body_mask`: Otsu on *log* intensities (plain
    Otsu splits muscle from fat on MR and kept only 2.2 % of the voxels of a Dixon fat
    image), in-plane closing, holes filled in axial planes (found from ``affine``; dark
    marrow or fat is body too), and components smaller than ``min_component_fraction`` of
    the largest dropped in 3D and per slice (noise, coil, table, arms), keeping both legs.
    ``affine`` None: identity (1 mm voxels, axis 2 axial).
    """
    # Imported here: legs.py is the body-mask owner and imports nothing from this module,
    # but keeping the import local leaves intensity.py importable on its own.
    from muscle_pipeline.transforms.legs import body_mask

    values = convert_to_numpy(image).astype(np.float32, copy=False)
    if values.ndim != 3:
        raise ValueError(f"otsu_body_mask expects a spatial (X, Y, Z) volume, got shape {values.shape}")
    if float(values.max()) <= float(values.min()):
        return np.zeros(values.shape, dtype=bool)
    affine_np = np.eye(4) if affine is None else convert_to_numpy(affine).astype(np.float64)
    return body_mask(values, affine_np, min_component_fraction=min_component_fraction)


class CTWindow(ScaleIntensityRange):
    """Clip a CT to a Hounsfield window and scale it to ``[b_min, b_max]`` (default 0..1).

    A thin, named wrapper of MONAI's ``ScaleIntensityRange(clip=True)`` whose default window
    is the muscle window -100 ... 250 HU (see ``CT_MUSCLE_WINDOW_HU`` for why).
    Input ``(C, X, Y, Z)`` in HU; output float32 of the same shape and meta.
    """

    def __init__(self, window_hu: tuple[float, float] = CT_MUSCLE_WINDOW_HU,
                 b_min: float = 0.0, b_max: float = 1.0) -> None:
        low, high = (float(v) for v in window_hu)
        if not high > low:
            raise ValueError(f"CT window must have low < high, got {window_hu}")
        super().__init__(a_min=low, a_max=high, b_min=b_min, b_max=b_max, clip=True)
        self.window_hu = (low, high)


class CTWindowd(ScaleIntensityRanged):
    """Dictionary twin of :class:`CTWindow`."""

    def __init__(self, keys: KeysCollection, window_hu: tuple[float, float] = CT_MUSCLE_WINDOW_HU,
                 b_min: float = 0.0, b_max: float = 1.0, allow_missing_keys: bool = False) -> None:
        low, high = (float(v) for v in window_hu)
        if not high > low:
            raise ValueError(f"CT window must have low < high, got {window_hu}")
        super().__init__(keys, a_min=low, a_max=high, b_min=b_min, b_max=b_max, clip=True,
                         allow_missing_keys=allow_missing_keys)
        self.window_hu = (low, high)


class MRNormalize(Transform):
    """MR intensity normalisation inside the body: percentile clipping, then z-score.

    For each channel of ``(C, X, Y, Z)``: the ``lower``/``upper`` percentiles of the voxels
    inside the body mask bound the intensities (bright vessels, fat-suppression failures and
    coil hot spots stop dominating the scale), then the voxels are shifted and scaled so
    that the body has mean 0 and standard deviation 1. Outside voxels get the same affine
    map (so air sits at a fixed negative value), unless ``outside_value`` is given.
    The body mask is Otsu's (``otsu_body_mask``) unless one is passed to ``__call__``.
    Output float32 with the input's meta.
    """

    def __init__(self, lower: float = 0.5, upper: float = 99.5, outside_value: float | None = None) -> None:
        if not 0.0 <= lower < upper <= 100.0:
            raise ValueError(f"percentiles must satisfy 0 <= lower < upper <= 100, got {lower}, {upper}")
        self.lower = float(lower)
        self.upper = float(upper)
        self.outside_value = outside_value

    def __call__(self, img: NdarrayOrTensor, mask: NdarrayOrTensor | None = None) -> NdarrayOrTensor:
        data = convert_to_tensor(img, track_meta=False, dtype=torch.float32)
        affine = getattr(img, "affine", None)
        if mask is not None:
            body = convert_to_numpy(mask).astype(bool)
            if body.ndim == data.ndim:  # channel-first mask (1, X, Y, Z)
                body = body[0]
            if body.shape != tuple(data.shape[1:]):
                raise ValueError(f"body mask shape {body.shape} does not match image {tuple(data.shape[1:])}")
        out = torch.empty_like(data)
        for channel in range(data.shape[0]):
            values = data[channel]
            body_c = otsu_body_mask(values, affine) if mask is None else body
            inside = values.detach().cpu().numpy()[body_c]
            if inside.size < 2:
                raise ValueError("MRNormalize: the body mask is empty; cannot normalise")
            # numpy, not torch.quantile: the latter refuses tensors above 16 M elements.
            low, high = np.percentile(inside, [self.lower, self.upper])
            clipped = values.clamp(float(low), float(high))
            inside_clipped = np.clip(inside, low, high).astype(np.float64)
            mean, std = inside_clipped.mean(), inside_clipped.std()
            normalised = (clipped - float(mean)) / max(float(std), 1e-8)
            if self.outside_value is not None:
                normalised[~torch.as_tensor(body_c, device=values.device)] = float(self.outside_value)
            out[channel] = normalised
        return convert_to_dst_type(out, img, dtype=torch.float32)[0]


class MRNormalized(MapTransform):
    """Dictionary twin of :class:`MRNormalize`; ``mask_key`` names a body mask (else Otsu)."""

    def __init__(self, keys: KeysCollection, lower: float = 0.5, upper: float = 99.5,
                 outside_value: float | None = None, mask_key: str | None = None,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.normalizer = MRNormalize(lower, upper, outside_value)
        self.mask_key = mask_key

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        mask = d[self.mask_key] if self.mask_key is not None else None
        for key in self.key_iterator(d):
            d[key] = self.normalizer(d[key], mask)
        return d


class RandContrastRemap(RandomizableTransform):
    """A random, non-monotone intensity curve: which tissue is bright stops being a cue.

    MONAI's :class:`~monai.transforms.IntensityRemap` (Sawyer et al., "Intensity augmentation for
    domain transfer of whole breast segmentation in MRI", IEEE TMI 2020) draws a smoothed random
    curve over the image's distinct values. A float MR image has as many distinct values as voxels,
    which makes that curve noise; so each channel of ``(C, X, Y, Z)`` is first quantised to
    ``levels`` grey levels between its minimum and maximum, remapped with a curve smoothed over
    ``kernel_size`` levels (about ``levels / kernel_size`` independent bumps: fat-bright, fat-dark
    and everything between), and put back on the channel's own intensity range. Edges where two
    tissues differ survive unless the curve happens to give both the same value. The lowest
    ``dark_levels`` grey levels (air, in a magnitude MR image) keep the channel's minimum: air is
    dark in every MR contrast, and curves that lit it up taught calf_mri muscle outside the skin.
    Float32 out, the input's meta kept; no voxel moves.
    """

    def __init__(self, prob: float = 0.5, levels: int = 64, kernel_size: int = 16, dark_levels: int = 2) -> None:
        RandomizableTransform.__init__(self, prob)
        if levels < 2 or not 1 <= kernel_size <= levels or not 0 <= dark_levels < levels:
            raise ValueError("need levels >= 2, 1 <= kernel_size <= levels and 0 <= dark_levels < levels, "
                             f"got {levels}, {kernel_size}, {dark_levels}")
        self.levels = int(levels)
        self.kernel_size = int(kernel_size)
        self.dark_levels = int(dark_levels)

    def __call__(self, img: NdarrayOrTensor, randomize: bool = True) -> NdarrayOrTensor:
        if randomize:
            self.randomize(None)
        if not self._do_transform:
            return img
        data = convert_to_tensor(img, track_meta=False, dtype=torch.float32)
        out = torch.empty_like(data)
        remap = IntensityRemap(self.kernel_size, slope=0.0)  # the slope term is negligible on 0..levels
        remap.set_random_state(state=self.R)
        for channel in range(data.shape[0]):
            values = data[channel]
            low, high = float(values.min()), float(values.max())
            if high <= low:
                out[channel] = values
                continue
            quantised = torch.round((values - low) / (high - low) * self.levels)
            curve = remap(quantised).to(torch.float32)  # values on 0..levels
            remapped = low + curve / self.levels * (high - low)
            out[channel] = torch.where(quantised < self.dark_levels, torch.tensor(low), remapped)
        return convert_to_dst_type(out, img, dtype=torch.float32)[0]


class RandContrastRemapd(MapTransform, RandomizableTransform):
    """Dictionary twin of :class:`RandContrastRemap`: one draw decides for all ``keys``, each gets
    its own curve."""

    def __init__(self, keys: KeysCollection, prob: float = 0.5, levels: int = 64, kernel_size: int = 16,
                 dark_levels: int = 2, allow_missing_keys: bool = False) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.remap = RandContrastRemap(prob=1.0, levels=levels, kernel_size=kernel_size, dark_levels=dark_levels)

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None):
        super().set_random_state(seed, state)
        self.remap.set_random_state(seed, state)
        return self

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        for key in self.key_iterator(d):
            d[key] = self.remap(d[key])
        return d


def _n4_then_zscore(keys: KeysCollection | None):
    from muscle_pipeline.transforms.bias import N4BiasFieldCorrection, N4BiasFieldCorrectiond

    if keys is None:
        return Compose([N4BiasFieldCorrection(), MRNormalize()])
    return Compose([N4BiasFieldCorrectiond(keys), MRNormalized(keys)])


# name -> factory(keys) returning the array transform (keys None) or its dictionary twin.
PRESETS = {
    "ct_muscle": lambda keys: CTWindow(CT_MUSCLE_WINDOW_HU) if keys is None else CTWindowd(keys, CT_MUSCLE_WINDOW_HU),
    "ct_bone": lambda keys: CTWindow(CT_BONE_WINDOW_HU) if keys is None else CTWindowd(keys, CT_BONE_WINDOW_HU),
    "ct_soft_tissue": lambda keys: (CTWindow(CT_SOFT_TISSUE_WINDOW_HU) if keys is None
                                    else CTWindowd(keys, CT_SOFT_TISSUE_WINDOW_HU)),
    "mr_zscore": lambda keys: MRNormalize() if keys is None else MRNormalized(keys),
    "mr_n4_zscore": _n4_then_zscore,
}


def intensity_preset(name: str, keys: KeysCollection | None = None) -> Transform:
    """The intensity transform called ``name`` (one of ``PRESETS``).

    Without ``keys`` it returns the array transform; with ``keys`` its dictionary twin.
    ``ct_muscle`` (-100..250 HU), ``ct_bone`` (-500..1300 HU), ``ct_soft_tissue``
    (-160..240 HU) map to 0..1; ``mr_zscore`` is :class:`MRNormalize`; ``mr_n4_zscore`` is
    N4 bias correction followed by :class:`MRNormalize`.
    """
    try:
        factory = PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown intensity preset {name!r}; choose one of {sorted(PRESETS)}") from None
    return factory(keys)
