"""MONAI transforms and pipelines for gym photos.

Layout: MONAI's PIL reader puts the x axis first, so a loaded photo is ``(C, W, H)`` channel
first and a mask ``(1, W, H)``; every pipeline here (files, video frames, app uploads) uses that
layout so that a model sees photos the same way in training and inference. Intensities are
scaled from 0..255 to [0, 1]; photos are resized to ``image_size`` squared (bilinear with
anti-aliasing), masks with nearest neighbour. ``Resized`` is invertible, so ``Invertd`` brings
predictions back to each photo's own size.

Augmentation follows Seed 000 (Roboflow's settings): horizontal and vertical flips, shear up to
±15 degrees on both axes, grayscale on 25 % of photos, Gaussian blur up to 1.2 px, and
salt-and-pepper noise on up to 0.22 % of pixels. Geometric ones move photo and mask together.
"""
from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    EnsureChannelFirstd,
    EnsureTyped,
    LoadImaged,
    MapTransform,
    RandAffined,
    RandCropByLabelClassesd,
    RandFlipd,
    RandGaussianSmoothd,
    RandomizableTransform,
    Resized,
    ScaleIntensityRanged,
    Transform,
)
from monai.utils import convert_to_dst_type

from muscle_pipeline.errors import InputError

# ITU-R BT.601 luma weights (what PIL's convert("L") uses).
_LUMA = (0.299, 0.587, 0.114)


def _source_name(img) -> str | None:
    meta = getattr(img, "meta", None)
    return None if not meta else meta.get("filename_or_obj")


class EnsureRGB(Transform):
    """Make a channel-first photo ``(C, W, H)`` three-channel RGB.

    Grayscale (C=1) is repeated to three channels, grayscale+alpha (C=2) keeps its gray
    channel, RGBA (C=4) drops alpha. Anything else is an ``InputError``.
    """

    def __call__(self, img):
        channels = img.shape[0]
        if channels == 3:
            return img
        if channels in (1, 2):
            return img[:1].repeat(3, *([1] * (img.ndim - 1))) if isinstance(img, torch.Tensor) else np.repeat(img[:1], 3, 0)
        if channels == 4:
            return img[:3]
        raise InputError(_source_name(img), f"photo has {channels} channels; expected gray, RGB or RGBA")


class EnsureRGBd(MapTransform):
    """Dictionary twin of :class:`EnsureRGB`."""

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.to_rgb = EnsureRGB()

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.to_rgb(d[key])
        return d


class MaskToClassIndex(Transform):
    """Map raw mask values to class indices with a 256-entry look-up table.

    Input ``(C, W, H)`` with C=1, or C=3/4 holding the same value in every colour channel (masks
    saved as RGB). Output ``(1, W, H)`` int64. A value the table does not know (-1) or a colour
    mask is an ``InputError`` naming the mask file.
    """

    def __init__(self, lut: Sequence[int] | np.ndarray):
        self.lut = torch.as_tensor(np.asarray(lut, dtype=np.int64))
        if self.lut.shape != (256,):
            raise ValueError("lut must have 256 entries (one per 8-bit mask value)")

    def __call__(self, mask):
        values = torch.as_tensor(mask)
        if values.shape[0] > 1:
            colour = values[:3]
            if not bool((colour == colour[:1]).all()):
                raise InputError(_source_name(mask), "mask is a colour image; expected one class value per pixel "
                                                     "(grayscale or palette PNG)")
            values = values[:1]
        raw = values.round().long()
        if raw.min() < 0 or raw.max() > 255:
            raise InputError(_source_name(mask), f"mask values span {int(raw.min())}..{int(raw.max())}; expected 0..255")
        classes = self.lut[raw]
        if bool((classes < 0).any()):
            unknown = sorted(set(raw[classes < 0].unique().tolist()))
            raise InputError(_source_name(mask), f"mask values {unknown} are not in the class table "
                                                 "(_classes.csv, or 0..3 without one)")
        out, *_ = convert_to_dst_type(classes, dst=mask if isinstance(mask, torch.Tensor) else values, dtype=torch.int64)
        return out


class MaskToClassIndexd(MapTransform):
    """Dictionary twin of :class:`MaskToClassIndex`."""

    def __init__(self, keys: KeysCollection, lut: Sequence[int] | np.ndarray, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.to_index = MaskToClassIndex(lut)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.to_index(d[key])
        return d


class RandGrayscale(RandomizableTransform):
    """With probability ``prob``, replace an RGB photo ``(3, W, H)`` by its luma in all three channels."""

    def __init__(self, prob: float = 0.25):
        RandomizableTransform.__init__(self, prob)

    def __call__(self, img, randomize: bool = True):
        if randomize:
            self.randomize(None)
        if not self._do_transform:
            return img
        weights = torch.as_tensor(_LUMA, dtype=img.dtype, device=img.device).view(3, *([1] * (img.ndim - 1)))
        gray = (img[:3] * weights).sum(0, keepdim=True)
        return gray.repeat(3, *([1] * (img.ndim - 1)))


class RandGrayscaled(RandomizableTransform, MapTransform):
    """Dictionary twin of :class:`RandGrayscale` (photo keys only)."""

    def __init__(self, keys: KeysCollection, prob: float = 0.25, allow_missing_keys: bool = False):
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.grayscale = RandGrayscale(prob=1.0)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        self.randomize(None)
        if self._do_transform:
            for key in self.key_iterator(d):
                d[key] = self.grayscale(d[key], randomize=True)
        return d


class RandSaltPepperNoise(RandomizableTransform):
    """With probability ``prob``, set a random fraction (0..``max_fraction``) of pixels to ``low`` or
    ``high`` in every channel. Input ``(C, W, H)`` scaled to [low, high]."""

    def __init__(self, prob: float = 0.5, max_fraction: float = 0.0022, low: float = 0.0, high: float = 1.0):
        RandomizableTransform.__init__(self, prob)
        self.max_fraction, self.low, self.high = max_fraction, low, high
        self._fraction = 0.0

    def randomize(self, data=None) -> None:
        super().randomize(None)
        self._fraction = self.R.uniform(0.0, self.max_fraction)

    def __call__(self, img, randomize: bool = True):
        if randomize:
            self.randomize()
        if not self._do_transform or self._fraction <= 0:
            return img
        spatial = tuple(img.shape[1:])
        hit = self.R.random_sample(spatial) < self._fraction
        salt = self.R.random_sample(spatial) < 0.5
        out = img.clone() if isinstance(img, torch.Tensor) else img.copy()
        hit_t = torch.as_tensor(hit, device=out.device)
        salt_t = torch.as_tensor(salt, device=out.device)
        out[:, hit_t & salt_t] = self.high
        out[:, hit_t & ~salt_t] = self.low
        return out


class RandSaltPepperNoised(RandomizableTransform, MapTransform):
    """Dictionary twin of :class:`RandSaltPepperNoise` (photo keys only)."""

    def __init__(self, keys: KeysCollection, prob: float = 0.5, max_fraction: float = 0.0022, low: float = 0.0,
                 high: float = 1.0, allow_missing_keys: bool = False):
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.noise = RandSaltPepperNoise(prob=1.0, max_fraction=max_fraction, low=low, high=high)

    def set_random_state(self, seed=None, state=None):
        super().set_random_state(seed, state)
        self.noise.set_random_state(seed, state)
        return self

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        self.randomize(None)
        if self._do_transform:
            for key in self.key_iterator(d):
                d[key] = self.noise(d[key], randomize=True)
        return d


def preprocessing_transforms(image_size: int = 256, label_lut=None, with_label: bool = True,
                             load: bool = True) -> list:
    """Deterministic steps: load, channel first, RGB, [0, 1], resize to ``image_size`` squared.

    ``load=False`` starts from a channel-first ``(3, W, H)`` tensor (video frames, app uploads).
    """
    keys = ["image", "label"] if with_label else ["image"]
    steps: list = []
    if load:
        steps += [LoadImaged(keys=keys, reader="PILReader", image_only=True), EnsureChannelFirstd(keys=keys)]
    steps.append(EnsureRGBd(keys="image"))
    if with_label:
        from muscle_pipeline.photo.data import identity_lut

        steps.append(MaskToClassIndexd(keys="label", lut=identity_lut() if label_lut is None else label_lut))
    steps += [
        ScaleIntensityRanged(keys="image", a_min=0.0, a_max=255.0, b_min=0.0, b_max=1.0, clip=True),
        Resized(keys="image", spatial_size=(image_size, image_size), mode="bilinear", anti_aliasing=True),
    ]
    if with_label:
        steps.append(Resized(keys="label", spatial_size=(image_size, image_size), mode="nearest"))
        steps.append(EnsureTyped(keys="label", dtype=torch.int64))
    return steps


def augmentation_transforms(image_size: int = 256, flip_prob: float = 0.5, shear_degrees: float = 15.0,
                            shear_prob: float = 0.5, grayscale_prob: float = 0.25, blur_max_sigma: float = 1.2,
                            blur_prob: float = 0.5, noise_max_fraction: float = 0.0022,
                            noise_prob: float = 0.5) -> list:
    """Seed 000's augmentations as MONAI dictionary transforms (geometry on photo and mask together)."""
    shear = math.tan(math.radians(shear_degrees))  # MONAI takes shear factors, not angles
    keys = ["image", "label"]
    return [
        RandFlipd(keys=keys, prob=flip_prob, spatial_axis=0),
        RandFlipd(keys=keys, prob=flip_prob, spatial_axis=1),
        RandAffined(keys=keys, prob=shear_prob, shear_range=(shear, shear), mode=("bilinear", "nearest"),
                    padding_mode="zeros", spatial_size=(image_size, image_size), cache_grid=True),
        RandGrayscaled(keys="image", prob=grayscale_prob),
        RandGaussianSmoothd(keys="image", sigma_x=(0.25, blur_max_sigma), sigma_y=(0.25, blur_max_sigma), prob=blur_prob),
        RandSaltPepperNoised(keys="image", prob=noise_prob, max_fraction=noise_max_fraction),
        EnsureTyped(keys="label", dtype=torch.int64),
    ]


def train_transforms(image_size: int = 256, label_lut=None, crop_size: int | None = None,
                     crop_ratios: Sequence[float] = (1.0, 1.0, 1.0, 1.0), **augmentation) -> Compose:
    """Preprocessing followed by augmentation, for training data lists.

    ``crop_size`` (None: whole photos, as the seed trained) trains on ``crop_size`` squared
    patches of the resized photo, centred on a pixel of a class drawn with ``crop_ratios``
    (background, biceps, triceps, calf; classes absent from a photo are skipped). Muscles
    cover about 1 % of a photo; class-balanced patches show them far more often per second of
    CPU. The network is fully convolutional, so it still runs on whole photos.
    """
    steps = preprocessing_transforms(image_size, label_lut)
    spatial = image_size
    if crop_size:
        spatial = int(crop_size)
        steps.append(RandCropByLabelClassesd(keys=["image", "label"], label_key="label", spatial_size=(spatial, spatial),
                                             ratios=list(crop_ratios), num_classes=len(crop_ratios), num_samples=1,
                                             warn=False))
    return Compose(steps + augmentation_transforms(spatial, **augmentation))


def eval_transforms(image_size: int = 256, label_lut=None) -> Compose:
    """Preprocessing of photo and mask, for validation and test data lists."""
    return Compose(preprocessing_transforms(image_size, label_lut))


def inference_transforms(image_size: int = 256, load: bool = True) -> Compose:
    """Preprocessing of a photo alone (``Invertd`` on this Compose undoes the resize)."""
    return Compose(preprocessing_transforms(image_size, with_label=False, load=load))


def input_error_in(exc: BaseException) -> InputError | None:
    """The ``InputError`` behind an exception, if any: MONAI's ``Compose`` wraps what a transform
    raises in ``RuntimeError("applying transform ...")``, one level per nested Compose."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, InputError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def photo_to_tensor(rgb: np.ndarray) -> MetaTensor:
    """An ``(H, W[, C])`` uint8 array (PIL/imageio/Gradio order) -> ``(3, W, H)`` float MetaTensor,
    the layout ``LoadImaged`` gives for a file."""
    arr = np.asarray(rgb)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3:
        raise InputError(None, f"photo array has shape {arr.shape}; expected (H, W) or (H, W, C)")
    return MetaTensor(torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 1, 0))).float())


__all__ = [
    "EnsureRGB", "EnsureRGBd", "MaskToClassIndex", "MaskToClassIndexd", "RandGrayscale", "RandGrayscaled",
    "RandSaltPepperNoise", "RandSaltPepperNoised", "preprocessing_transforms", "augmentation_transforms",
    "train_transforms", "eval_transforms", "inference_transforms", "photo_to_tensor", "input_error_in",
]
