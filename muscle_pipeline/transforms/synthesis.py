"""Images drawn from label maps: SynthSeg-style domain randomisation (Billot et al. 2023) for a
contrast-agnostic muscle model trained from the completed atlas (``muscle_pipeline.atlas``).

Label values are the muscle ontology's (plus the atlas's generation-only values >= 200). Each value
belongs to one tissue class (air, muscle, fat, intermuscular fat, skin, bone, cartilage, ligament);
bones are split on the fly into a cortex shell and marrow. Unlike SynthSeg, muscles do NOT get
independent intensities: all muscles share one muscle intensity with <= ``muscle_jitter`` relative
jitter each, and a fascia / fat line is drawn where two muscles touch, because real scans show
muscle boundaries only through such lines.

* ``SynthesizeImage`` / ``SynthesizeImaged``: labels (1, X, Y, Z) -> image (1, X, Y, Z) float32 on the
  same grid: random MR contrast (fat-bright, fat-dark or fully random; arbitrary units, >= 0) or CT
  (HU), fatty infiltration, fascia lines, within-tissue texture, random resolution / slice thickness
  (blur, downsample, upsample back to the label grid), MR bias field (MONAI ``RandBiasField``),
  gamma, noise (Rician for MR, Gaussian for CT), extra blur (MONAI ``GaussianSmooth``).
* ``RandMuscleSize`` / ``RandMuscleSized``: per-muscle atrophy (erosion, freed voxels become
  intermuscular fat) or hypertrophy (growth into neighbouring fat only), in mm.
* ``RandFieldOfViewd``: partial field of view (labels outside a random slab set to 0 = air).
* ``synthesis_pipeline``: the above with MONAI ``Rand3DElasticd`` (affine + elastic, nearest) on
  the labels, as one ``Compose``.

The last draw's parameters are in ``SynthesizeImage.params`` (modality, mode, tissue values, ...).
"""
from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import (Compose, GaussianSmooth, MapTransform, Rand3DElasticd, RandBiasField,
                              RandomizableTransform)
from scipy import ndimage

from muscle_pipeline import labels as ontology
from muscle_pipeline.transforms.legs import voxel_spacing

__all__ = ["SynthesizeImage", "SynthesizeImaged", "RandMuscleSize", "RandMuscleSized", "RandFieldOfViewd",
           "RandNonLimbTissue", "RandNonLimbTissued", "NON_LIMB_SOFT", "NON_LIMB_FAT",
           "synthesis_pipeline", "tissue_class_lut", "TISSUES", "MR_MODES"]

TISSUES = ("air", "muscle", "fat", "intermuscular_fat", "skin", "cortex", "marrow", "cartilage", "ligament", "soft")
AIR, MUSCLE, FAT, IMF, SKIN, CORTEX, MARROW, CARTILAGE, LIGAMENT, SOFT = range(len(TISSUES))
MR_MODES = ("fat_bright", "fat_dark", "random")

# MR tissue ranges (arbitrary units, brightest tissue ~1). fat_bright: T1 / T2-TSE / PD;
# fat_dark: fat-suppressed, water-only Dixon, STIR. Marrow follows fat (fatty yellow marrow).
MR_RANGES = {
    "fat_bright": {AIR: (0.0, 0.02), MUSCLE: (0.2, 0.5), FAT: (0.8, 1.0), IMF: (0.7, 0.95), SKIN: (0.3, 0.6),
                   CORTEX: (0.0, 0.06), CARTILAGE: (0.3, 0.7), LIGAMENT: (0.0, 0.12), SOFT: (0.3, 0.6)},
    "fat_dark": {AIR: (0.0, 0.02), MUSCLE: (0.25, 0.6), FAT: (0.02, 0.15), IMF: (0.03, 0.2), SKIN: (0.2, 0.5),
                 CORTEX: (0.0, 0.06), CARTILAGE: (0.4, 0.9), LIGAMENT: (0.0, 0.12), SOFT: (0.3, 0.7)},
}
# CT (HU): contrast.CT_TISSUE of the procedural phantoms, plus classes the phantoms lack
CT_RANGES = {AIR: (-1000.0, -1000.0), MUSCLE: (35.0, 65.0), FAT: (-120.0, -80.0), IMF: (-100.0, -60.0),
             SKIN: (20.0, 50.0), CORTEX: (700.0, 1400.0), MARROW: (220.0, 380.0), CARTILAGE: (80.0, 120.0),
             LIGAMENT: (60.0, 100.0), SOFT: (20.0, 50.0)}


# generation-only label values of RandNonLimbTissue: tissue that is none of our structures
# (viscera, the other body parts a field of view catches); every training target maps them to 0
NON_LIMB_SOFT, NON_LIMB_FAT = 203, 204


def tissue_class_lut() -> np.ndarray:
    """(256,) int: label value -> tissue class index into ``TISSUES`` (bones -> cortex; marrow is
    carved out of each bone later). Unknown non-zero values are ``soft`` tissue."""
    lut = np.full(256, SOFT, dtype=np.int64)
    lut[0] = AIR
    for lab in ontology.all_labels():
        s = lab.structure
        if s.kind == "muscle":
            lut[lab.value] = MUSCLE
        elif s.kind == "bone":
            lut[lab.value] = CORTEX
    lut[ontology.value_of("subcutaneous_fat")] = FAT
    lut[ontology.value_of("intermuscular_fat")] = IMF
    lut[ontology.value_of("skin")] = SKIN
    lut[200], lut[201], lut[202] = CORTEX, CARTILAGE, LIGAMENT  # atlas generation-only values
    lut[NON_LIMB_SOFT], lut[NON_LIMB_FAT] = SOFT, FAT  # RandNonLimbTissue's organ-like and fatty blobs
    return lut


_CLASS_LUT = tissue_class_lut()


def _spacing_of(label, default) -> np.ndarray:
    if default is not None:
        return np.broadcast_to(np.asarray(default, float), (3,)).copy()
    if isinstance(label, MetaTensor):
        return voxel_spacing(label.affine)
    return np.ones(3)


def _as_labels(label) -> np.ndarray:
    arr = label.detach().cpu().numpy() if isinstance(label, torch.Tensor) else np.asarray(label)
    return np.clip(np.rint(arr[0]), 0, 255).astype(np.uint8)


def _like(label, array: np.ndarray):
    out = torch.as_tensor(np.ascontiguousarray(array)[None])
    if isinstance(label, MetaTensor):
        return MetaTensor(out, affine=label.affine, meta={k: v for k, v in label.meta.items() if k != "affine"})
    return out


class SynthesizeImage(RandomizableTransform):
    """Labels (1, X, Y, Z) -> synthetic image (1, X, Y, Z) float32 on the same grid.

    ``modality``: "mr" | "ct" | None (random, CT with ``ct_prob``); ``mr_mode``: one of ``MR_MODES``
    or None (random with ``mr_mode_probs``). Lengths are mm; the label grid's spacing comes from the
    MetaTensor affine (or ``label_spacing``). Resolution: with ``resolution_prob`` an isotropic
    acquisition spacing from ``spacing_range``, and with ``thick_prob`` one axis (``thick_axis`` or
    random) gets a slice thickness from ``thick_range``; coarser than the label grid means Gaussian
    blur (FWHM = thickness), downsampling and linear upsampling back to the label grid.
    """

    def __init__(self, modality: str | None = None, ct_prob: float = 0.25, mr_mode: str | None = None,
                 mr_mode_probs: Sequence[float] = (0.4, 0.3, 0.3), muscle_jitter: float = 0.03,
                 fascia_prob: float = 0.9, fatty_prob: float = 0.15, fatty_range: tuple[float, float] = (0.05, 0.6),
                 texture_std: float = 0.03, resolution_prob: float = 0.8, spacing_range=(0.8, 3.0),
                 thick_prob: float = 0.5, thick_range=(3.0, 10.0), thick_axis: int | None = None,
                 bias_prob: float = 0.7, bias_coeff: float = 0.3, noise_prob: float = 0.9,
                 mr_noise_range=(0.005, 0.05), ct_noise_range=(3.0, 25.0), blur_prob: float = 0.2,
                 gamma_prob: float = 0.5, cortex_mm_range=(2.0, 5.0), label_spacing=None, prob: float = 1.0):
        RandomizableTransform.__init__(self, prob)
        if modality not in (None, "mr", "ct") or mr_mode not in (None, *MR_MODES):
            raise ValueError(f"modality {modality!r} / mr_mode {mr_mode!r} unknown")
        if not 0 <= muscle_jitter <= 0.05:
            raise ValueError("muscle_jitter must stay within 5 %: independent muscle contrasts teach boundaries "
                             "that real scans do not show")
        self.modality, self.ct_prob, self.mr_mode = modality, ct_prob, mr_mode
        self.mr_mode_probs = np.asarray(mr_mode_probs, float) / np.sum(mr_mode_probs)
        self.muscle_jitter, self.fascia_prob, self.texture_std = muscle_jitter, fascia_prob, texture_std
        self.fatty_prob, self.fatty_range = fatty_prob, fatty_range
        self.resolution_prob, self.spacing_range = resolution_prob, spacing_range
        self.thick_prob, self.thick_range, self.thick_axis = thick_prob, thick_range, thick_axis
        self.bias_prob, self.noise_prob, self.blur_prob, self.gamma_prob = bias_prob, noise_prob, blur_prob, gamma_prob
        self.mr_noise_range, self.ct_noise_range, self.cortex_mm_range = mr_noise_range, ct_noise_range, cortex_mm_range
        self.label_spacing = label_spacing
        self.bias = RandBiasField(degree=3, coeff_range=(0.0, bias_coeff), prob=1.0)
        self.params: dict = {}

    def set_random_state(self, seed=None, state=None):
        super().set_random_state(seed, state)
        self.bias.set_random_state(state=self.R)
        return self

    # ------------------------------------------------------------------ drawing the parameters
    def _draw_values(self, modality: str, mode: str | None) -> np.ndarray:
        r = self.R
        vals = np.zeros(len(TISSUES))
        if modality == "ct":
            for c, (lo, hi) in CT_RANGES.items():
                vals[c] = r.uniform(lo, hi)
            return vals
        if mode == "random":  # SynthSeg-like: any order of tissue brightness (muscles still tied)
            vals[:] = r.uniform(0.0, 1.0, len(TISSUES))
            vals[AIR] = r.uniform(0.0, 0.05)
            vals[IMF] = vals[FAT] * r.uniform(0.85, 1.0) if r.uniform() < 0.7 else r.uniform(0, 1)
            vals[MARROW] = vals[FAT] * r.uniform(0.8, 1.0) if r.uniform() < 0.8 else vals[MARROW]
            return vals
        for c, (lo, hi) in MR_RANGES[mode].items():
            vals[c] = r.uniform(lo, hi)
        vals[MARROW] = vals[FAT] * r.uniform(0.8, 1.0) if r.uniform() < 0.85 else r.uniform(0.3, 0.7)
        return vals

    def randomize(self, data=None) -> None:
        super().randomize(None)
        r = self.R
        modality = self.modality or ("ct" if r.uniform() < self.ct_prob else "mr")
        mode = None if modality == "ct" else (self.mr_mode or str(r.choice(MR_MODES, p=self.mr_mode_probs)))
        target = None
        if r.uniform() < self.resolution_prob:
            target = np.full(3, r.uniform(*self.spacing_range))
        if r.uniform() < self.thick_prob:
            target = np.full(3, r.uniform(*self.spacing_range)) if target is None else target
            axis = self.thick_axis if self.thick_axis is not None else int(r.randint(3))
            target[axis] = r.uniform(*self.thick_range)
        self.params = {
            "modality": modality, "mr_mode": mode, "values": self._draw_values(modality, mode),
            "jitter": r.uniform(-self.muscle_jitter, self.muscle_jitter, 256),
            "texture": r.uniform(0, self.texture_std, len(TISSUES)),
            "cortex_mm": r.uniform(*self.cortex_mm_range),
            "fascia": r.uniform() < self.fascia_prob, "fascia_weight": r.uniform(0.3, 0.9),
            "fascia_fat": r.uniform() < 0.6, "fatty_u": r.uniform(size=256),
            "fatty_fraction": r.uniform(*self.fatty_range, 256), "target_spacing": target,
            "bias": modality == "mr" and r.uniform() < self.bias_prob,
            "noise": r.uniform(*(self.ct_noise_range if modality == "ct" else self.mr_noise_range))
            if r.uniform() < self.noise_prob else 0.0,
            "blur_mm": r.uniform(0.3, 1.5) if r.uniform() < self.blur_prob else 0.0,
            "gamma": float(np.exp(r.normal(0, 0.25))) if modality == "mr" and r.uniform() < self.gamma_prob else 1.0,
        }

    # ------------------------------------------------------------------ drawing the image
    def __call__(self, label, randomize: bool = True):
        if randomize:
            self.randomize()
        p = self.params
        lab = _as_labels(label)
        sp = _spacing_of(label, self.label_spacing)
        cls = _CLASS_LUT[lab]
        vals = p["values"].astype(np.float32)
        bone = cls == CORTEX
        n_cortex = max(1, int(round(p["cortex_mm"] / sp.min())))
        marrow = ndimage.binary_erosion(bone, iterations=n_cortex)
        # one value per label value: tissue value, muscles with <= muscle_jitter relative jitter
        lut = vals[_CLASS_LUT].copy()
        is_muscle = _CLASS_LUT == MUSCLE
        scale = abs(vals[MUSCLE]) if p["modality"] == "mr" else 50.0  # CT: jitter relative to ~50 HU
        lut[is_muscle] = vals[MUSCLE] + scale * p["jitter"][is_muscle]
        img = lut[lab]
        img[marrow] = vals[MARROW]
        span = float(vals.max() - vals.min()) if p["modality"] == "mr" else 100.0
        rng = self.R
        # fatty infiltration: fat fraction f with a marbled texture inside chosen muscles
        muscles_present = [int(v) for v in np.unique(lab) if is_muscle[v]]
        fatty = [v for v in muscles_present if p["fatty_u"][v] < self.fatty_prob]
        if fatty:
            field = ndimage.gaussian_filter(rng.standard_normal(lab.shape).astype(np.float32), 2.0 / sp)
            field /= field.std() + 1e-6
            for v in fatty:
                m = lab == v
                f = p["fatty_fraction"][v]
                w = np.clip(f + 0.5 * f * field[m], 0.0, 1.0)
                img[m] = (1 - w) * img[m] + w * vals[FAT]
        # fascia / fat line where two different muscles touch (partial volume at coarse grids)
        if p["fascia"] and len(muscles_present) > 1:
            mid = np.where(cls == MUSCLE, lab, 0).astype(np.int16)
            hi = ndimage.maximum_filter(mid, size=3)
            lo = ndimage.minimum_filter(np.where(mid > 0, mid, 1000).astype(np.int16), size=3)
            interface = (mid > 0) & ((hi > mid) | (lo < mid))
            # a fat stripe, or (MR) dark fascia like ligament; in CT both are near fat / soft tissue
            line = vals[IMF] if (p["fascia_fat"] or p["modality"] == "ct") else vals[LIGAMENT]
            w = p["fascia_weight"] * min(1.0, 1.5 / float(sp.min()))
            img[interface] = (1 - w) * img[interface] + w * line
        # within-tissue texture
        tex = (p["texture"] * span).astype(np.float32)[cls]
        tex[marrow] = p["texture"][MARROW] * span
        img = img + tex * rng.standard_normal(lab.shape).astype(np.float32)
        t = torch.as_tensor(img[None].astype(np.float32))
        # resolution / slice thickness: blur, downsample, upsample back to the label grid
        if p["target_spacing"] is not None:
            factor = np.maximum(np.asarray(p["target_spacing"]) / sp, 1.0)
            if (factor > 1.01).any():
                sigma = [float(0.42 * f) if f > 1.01 else 0.0 for f in factor]  # FWHM ~ thickness
                t = GaussianSmooth(sigma)(t)
                low = [max(2, int(round(n / f))) for n, f in zip(lab.shape, factor)]
                t = F.interpolate(t[None], size=low, mode="trilinear", align_corners=True)
                t = F.interpolate(t, size=lab.shape, mode="trilinear", align_corners=True)[0]
        if p["blur_mm"] > 0:
            t = GaussianSmooth([float(p["blur_mm"] / s) for s in sp])(t)
        t = torch.as_tensor(t, dtype=torch.float32)
        if p["modality"] == "mr":
            t = t.clamp_min(0)
            if p["bias"]:
                t = torch.as_tensor(self.bias(t, randomize=True), dtype=torch.float32)
            top = float(torch.quantile(t.flatten()[:: max(1, t.numel() // 200_000)], 0.999)) or 1.0
            t = top * (t / top).clamp(0, None) ** p["gamma"]
            if p["noise"] > 0:
                sd = p["noise"] * top
                re = t + sd * torch.as_tensor(rng.standard_normal(t.shape), dtype=torch.float32)
                im = sd * torch.as_tensor(rng.standard_normal(t.shape), dtype=torch.float32)
                t = torch.sqrt(re * re + im * im)
        else:
            if p["noise"] > 0:
                t = t + p["noise"] * torch.as_tensor(rng.standard_normal(t.shape), dtype=torch.float32)
            t = t.clamp_min(-1024.0)
        return _like(label, t[0].numpy().astype(np.float32))


class SynthesizeImaged(MapTransform, RandomizableTransform):
    """Dictionary twin: ``data[image_key] = SynthesizeImage(**kwargs)(data[label_key])``."""

    def __init__(self, label_key: Hashable = "label", image_key: Hashable = "image", **kwargs):
        MapTransform.__init__(self, [label_key])
        RandomizableTransform.__init__(self, 1.0)
        self.label_key, self.image_key = label_key, image_key
        self.synth = SynthesizeImage(**kwargs)

    def set_random_state(self, seed=None, state=None):
        super().set_random_state(seed, state)
        self.synth.set_random_state(state=self.R)
        return self

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        d[self.image_key] = self.synth(d[self.label_key], randomize=True)
        return d


class RandMuscleSize(RandomizableTransform):
    """Per-muscle atrophy / hypertrophy on labels (1, X, Y, Z): each muscle with probability ``prob``
    is eroded (freed voxels -> intermuscular fat) or grown into neighbouring fat (subcutaneous or
    intermuscular fat voxels only) by a distance drawn from ``(0, max_mm]``; a muscle keeps at
    least ``min_keep`` of its volume."""

    def __init__(self, prob: float = 0.3, max_mm: float = 4.0, atrophy_prob: float = 0.5, min_keep: float = 0.3,
                 label_spacing=None):
        RandomizableTransform.__init__(self, 1.0)
        self.each_prob, self.max_mm, self.atrophy_prob, self.min_keep = prob, max_mm, atrophy_prob, min_keep
        self.label_spacing = label_spacing
        self.changes: dict[int, float] = {}

    def __call__(self, label, randomize: bool = True):
        lab = _as_labels(label)
        sp = _spacing_of(label, self.label_spacing)
        fat = np.isin(lab, [ontology.value_of("subcutaneous_fat"), ontology.value_of("intermuscular_fat")])
        imf = ontology.value_of("intermuscular_fat")
        out = lab.copy()
        values = [int(v) for v in np.unique(lab) if _CLASS_LUT[v] == MUSCLE]
        boxes = ndimage.find_objects(lab.astype(np.int32))
        margin = int(np.ceil(self.max_mm / sp.min())) + 1
        self.changes = {}
        for v in values:
            if randomize and self.R.uniform() >= self.each_prob:
                continue
            dist = float(self.R.uniform(0.0, self.max_mm)) or self.max_mm
            grow = self.R.uniform() >= self.atrophy_prob
            box = tuple(slice(max(0, s.start - margin), s.stop + margin) for s in boxes[v - 1])
            m = out[box] == v
            if grow:
                d = ndimage.distance_transform_edt(~m, sampling=sp)
                add = (d <= dist) & fat[box] & (out[box] != v)
                out[box][add] = v
                self.changes[v] = dist
            else:
                d = ndimage.distance_transform_edt(m, sampling=sp)
                remove = m & (d <= dist)
                if (m.sum() - remove.sum()) >= self.min_keep * m.sum():
                    out[box][remove] = imf
                    self.changes[v] = -dist
        return _like(label, out.astype(np.int16)) if isinstance(label, torch.Tensor) else out[None]


class _LabelKeysTwin(MapTransform, RandomizableTransform):
    """A label-map transform (``array_transform``, built from the keyword arguments) applied to
    each label key, sharing this dict transform's random state."""

    array_transform: type

    def __init__(self, keys: KeysCollection = "label", **kwargs):
        MapTransform.__init__(self, keys)
        RandomizableTransform.__init__(self, 1.0)
        self.t = self.array_transform(**kwargs)

    def set_random_state(self, seed=None, state=None):
        super().set_random_state(seed, state)
        self.t.set_random_state(state=self.R)
        return self

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        for k in self.key_iterator(d):
            d[k] = self.t(d[k])
        return d


class RandMuscleSized(_LabelKeysTwin):
    """Dictionary twin of ``RandMuscleSize`` (label keys only)."""

    array_transform = RandMuscleSize


class RandFieldOfViewd(MapTransform, RandomizableTransform):
    """Partial field of view on label keys: with ``prob`` keep only a random slab along ``axis``
    (array axis of (X, Y, Z); 2 = superior-inferior on RAS grids) of ``min_fraction``..1 of the
    labelled extent; labels outside become 0 (air in the synthetic image). Shape is unchanged."""

    def __init__(self, keys: KeysCollection = "label", prob: float = 0.5, min_fraction: float = 0.3, axis: int = 2):
        MapTransform.__init__(self, keys)
        RandomizableTransform.__init__(self, prob)
        self.min_fraction, self.axis = min_fraction, axis
        self.slab: tuple[int, int] | None = None

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        self.randomize(None)
        self.slab = None
        if not self._do_transform:
            return d
        for k in self.key_iterator(d):
            lab = d[k]
            occupied = np.flatnonzero(np.asarray(_as_labels(lab)).any(tuple(i for i in range(3) if i != self.axis)))
            if not len(occupied):
                continue
            if self.slab is None:
                lo, hi = occupied[0], occupied[-1] + 1
                n = max(1, int(round((hi - lo) * self.R.uniform(self.min_fraction, 1.0))))
                start = int(self.R.randint(lo, hi - n + 1))
                self.slab = (start, start + n)
            keep = torch.zeros(lab.shape[1 + self.axis], dtype=torch.bool)
            keep[self.slab[0]: self.slab[1]] = True
            shape = [1, 1, 1]
            shape[self.axis] = -1
            d[k] = lab * keep.view(1, *shape).to(lab.dtype) if isinstance(lab, torch.Tensor) else lab * keep.numpy().reshape(1, *shape)
        return d


class RandNonLimbTissue(RandomizableTransform):
    """Labels (1, X, Y, Z) -> the same with random blobs of tissue that is not a lower limb in the
    air around the scene (values :data:`NON_LIMB_SOFT`, :data:`NON_LIMB_FAT`: background in every
    training target; soft tissue and fat in the synthetic image).

    Why: the atlas legs end at the pelvis and float in air, so a network trained on them alone has
    never seen soft tissue that is not one of its muscles; on a CT of the pelvis it painted the
    abdomen's organs (muscle-like HU) with thigh and hip muscles. The blobs are a smooth random
    field (correlation ``blob_mm``, in mm) thresholded to fill ``fill_range`` of the air voxels,
    weighted towards the top of the crop (``superior_bias``; the trunk is above the pelvis) and
    split into soft tissue and fat. Shape, grid and every existing label are unchanged.
    """

    def __init__(self, prob: float = 0.5, fill_range: tuple[float, float] = (0.1, 0.6), blob_mm: float = 25.0,
                 fat_fraction_range: tuple[float, float] = (0.1, 0.5), superior_bias: float = 0.7,
                 label_spacing=None):
        RandomizableTransform.__init__(self, prob)
        self.fill_range, self.blob_mm, self.superior_bias = fill_range, float(blob_mm), float(superior_bias)
        self.fat_fraction_range, self.label_spacing = fat_fraction_range, label_spacing

    def __call__(self, label):
        self.randomize(None)
        if not self._do_transform:
            return label
        lab = _as_labels(label)
        air = lab == 0
        if not air.any():
            return label
        sigma = self.blob_mm / _spacing_of(label, self.label_spacing)
        field = ndimage.gaussian_filter(self.R.standard_normal(lab.shape).astype(np.float32), sigma, mode="wrap")
        field /= field.std() + 1e-6
        # a ramp along the superior (last) axis: more tissue towards the trunk
        ramp = np.linspace(-1.0, 1.0, lab.shape[2], dtype=np.float32)[None, None, :]
        field += self.superior_bias * self.R.uniform(0.5, 1.5) * ramp
        fill = self.R.uniform(*self.fill_range)
        blobs = air & (field > np.quantile(field[air], 1.0 - fill))
        second = ndimage.gaussian_filter(self.R.standard_normal(lab.shape).astype(np.float32), sigma / 2, mode="wrap")
        fatty = second > np.quantile(second, 1.0 - self.R.uniform(*self.fat_fraction_range))
        out = lab.copy()
        out[blobs & ~fatty] = NON_LIMB_SOFT
        out[blobs & fatty] = NON_LIMB_FAT
        return _like(label, out) if isinstance(label, torch.Tensor) else out[None]


class RandNonLimbTissued(_LabelKeysTwin):
    """Dictionary twin of ``RandNonLimbTissue`` (label keys only)."""

    array_transform = RandNonLimbTissue


def synthesis_pipeline(label_key: str = "label", image_key: str = "image", elastic_prob: float = 0.8,
                       fov_prob: float = 0.5, size_prob: float = 0.3, **synth_kwargs) -> Compose:
    """Labels -> (deformed labels, synthetic image): muscle size changes, MONAI ``Rand3DElasticd``
    (rotation +-15 deg, scale +-12 %, smooth elastic warp; nearest on labels), partial field of view,
    then ``SynthesizeImaged``. Call ``.set_random_state(seed)`` for reproducible draws."""
    return Compose([
        RandMuscleSized(label_key, prob=size_prob),
        Rand3DElasticd(label_key, sigma_range=(6.0, 9.0), magnitude_range=(50.0, 150.0), prob=elastic_prob,
                       rotate_range=(np.pi / 12,) * 3, scale_range=(0.12,) * 3, mode="nearest", padding_mode="zeros"),
        RandFieldOfViewd(label_key, prob=fov_prob),
        SynthesizeImaged(label_key, image_key, **synth_kwargs),
    ])
