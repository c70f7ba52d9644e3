"""Image contrast of the phantoms: tissue intensities, MR bias field and noise.

MR (T1-like, arbitrary units with subcutaneous fat ~= 1.0): muscle mid-grey (~0.36), fat and
fatty marrow bright, cortical bone and air dark; a smooth multiplicative bias field
``exp(bias * g(p))`` with ``|g| <= 1`` over the region (low-order polynomial + two coil-like
Gaussian blobs, fixed in the body frame) and Rician noise of standard deviation ``noise`` (in
units of the fat intensity).

CT (HU): air -1000, fat ~ -100, muscle 40-60, cortical bone 900-1400, marrow 220-380, plus
Gaussian noise of ``noise * 500`` HU (15 HU at the default 0.03). No bias field.
"""
from __future__ import annotations

import numpy as np

from .anatomy import Registry

# nominal values and the per-phantom ranges they are drawn from
MR_TISSUE = {"air": (0.0, 0.0), "skin": (0.5, 0.6), "fat": (0.95, 1.05), "intermuscular_fat": (0.88, 0.96),
             "viscera": (0.42, 0.5), "muscle": (0.32, 0.40), "cortex": (0.03, 0.06), "marrow": (0.8, 0.9)}
CT_TISSUE = {"air": (-1000.0, -1000.0), "skin": (20.0, 50.0), "fat": (-110.0, -85.0),
             "intermuscular_fat": (-95.0, -75.0), "viscera": (20.0, 40.0), "muscle": (42.0, 58.0),
             "cortex": (900.0, 1400.0), "marrow": (220.0, 380.0)}
# per-muscle spread around the phantom's muscle value (slight, so that the task is not trivial
# but intensity alone does not separate muscles): relative for MR, HU for CT
MR_MUSCLE_SPREAD = 0.03
CT_MUSCLE_SPREAD = 3.0
CT_NOISE_HU_PER_UNIT = 500.0


def entry_intensities(registry: Registry, modality: str, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """Intensity of every registry entry (float32 LUT) and the tissue values drawn."""
    table = MR_TISSUE if modality == "mr" else CT_TISSUE
    tissue_value = {t: float(rng.uniform(lo, hi)) for t, (lo, hi) in table.items()}
    lut = np.zeros(len(registry.entries), np.float32)
    for i, e in enumerate(registry.entries):
        value = tissue_value[e.tissue]
        if e.tissue == "muscle":
            jitter = rng.normal(0.0, 1.0)
            value = value * (1 + MR_MUSCLE_SPREAD * jitter) if modality == "mr" else value + CT_MUSCLE_SPREAD * jitter
        lut[i] = value
    return lut, tissue_value


class BiasField:
    """Smooth multiplicative MR bias field, defined in body coordinates (mm)."""

    def __init__(self, strength: float, half_extent: tuple[float, float, float], rng: np.random.Generator):
        self.strength = float(strength)
        self.half = np.asarray(half_extent, dtype=np.float64)
        # linear + quadratic terms; the z term is the strongest (receive coils cover a limited
        # length of the limb, so the signal falls off towards the ends of the field of view)
        c = rng.normal(0.0, 0.35, size=9)
        c[2] = rng.choice([-1.0, 1.0]) * rng.uniform(0.7, 1.0)
        self.poly = c
        self.blob_centers = rng.uniform(-0.8, 0.8, size=(2, 3))
        self.blob_weights = rng.uniform(-0.6, 0.6, size=2)
        self.blob_sigma = rng.uniform(0.4, 0.7, size=2)
        self.norm = np.abs(self.poly).sum() + np.abs(self.blob_weights).sum()

    def __call__(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Multiplicative field (float32) at body coordinates (mm); x, y, z may be compact
        broadcastable arrays (un-rotated grids), which keeps most of the work on 1-D arrays."""
        xn, yn, zn = (np.clip(a / np.float32(h), -1.5, 1.5) for a, h in zip((x, y, z), self.half))
        c = self.poly.astype(np.float32)
        g = (c[0] * xn + c[1] * yn + c[2] * zn + c[3] * xn * xn + c[4] * yn * yn + c[5] * zn * zn
             + c[6] * xn * yn + c[7] * xn * zn + c[8] * yn * zn)
        for center, w, s in zip(self.blob_centers, self.blob_weights, self.blob_sigma):
            # separable Gaussian: exp(-|p - c|^2 / 2s^2) = product of 1-D factors
            k = np.float32(-1.0 / (2 * s * s))
            gx, gy, gz = (np.exp(k * (a - np.float32(ci)) ** 2) for a, ci in zip((xn, yn, zn), center))
            g = g + np.float32(w) * (gx * gy * gz)
        return np.exp(np.float32(self.strength / self.norm) * g).astype(np.float32)


def add_noise(image: np.ndarray, modality: str, noise: float, rng_real: np.random.Generator,
              rng_imag: np.random.Generator) -> np.ndarray:
    """Noisy copy of a slab. Drawing slab after slab (C order, along array axis 0) gives the
    same values as drawing the whole volume at once."""
    if noise <= 0:
        return image
    if modality == "mr":
        real = image + np.float32(noise) * rng_real.standard_normal(image.shape, dtype=np.float32)
        imag = np.float32(noise) * rng_imag.standard_normal(image.shape, dtype=np.float32)
        return np.sqrt(real * real + imag * imag)
    sigma = np.float32(noise * CT_NOISE_HU_PER_UNIT)
    return image + sigma * rng_real.standard_normal(image.shape, dtype=np.float32)
