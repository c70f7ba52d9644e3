"""Preprocessing of one right-looking leg crop for the thigh CT models, and the way back.

    prepared = ThighCTPreprocess()(image)          # (1, X', Y', Z') on an aligned 2 mm grid
    labels = to_input_grid(class_map, prepared, image, n_classes)   # back on image's grid

Steps (seed 004), every one keeping world coordinates (the affine follows the data):

1. ``Orientation("RAS")``: array axes ~ world x, y, z, so sagittal/coronal/axial views are
   always spatial dims 0/1/2 whatever the file's orientation code.
2. :class:`~muscle_pipeline.transforms.femur.FemurAxisAlign` (CT bone threshold on the HU
   image): the femoral shaft along z. When no femur is found (a crop above the femur) or the
   fitted axis is further than ``max_angle_deg`` from the scanner's z axis (another bone,
   e.g. pelvis and spine merged at a coarse spacing), alignment is skipped and logged.
3. ``Spacing`` to ``spacing_mm`` isotropic (bilinear).
4. CT window (``CTWindow``, MONAI ``ScaleIntensityRange``): HU -> 0..1.
5. ``DivisiblePad`` so every size is a multiple of 4 (two stride-2 levels).

All of them keep the world position of every voxel, so the inverse of the whole chain is ONE
resampling from the prepared grid onto the input grid (:func:`to_input_grid`), done on the
one-hot label map with linear interpolation then arg-max, which loses less than
nearest-neighbour steps undoing each transform in turn.
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import DivisiblePad, Orientation, SpatialResample, Spacing

from muscle_pipeline.thigh25d.network import SIZE_DIVISOR
from muscle_pipeline.transforms.femur import FemurAxisAlign, FemurAxisFit
from muscle_pipeline.transforms.intensity import CTWindow

__all__ = ["ThighCTPreprocess", "PreparedLeg", "to_input_grid", "resample_labels"]

log = logging.getLogger(__name__)


@dataclass
class PreparedLeg:
    """A preprocessed leg: ``image`` (1, X, Y, Z) float 0..1 on the model grid (MetaTensor),
    ``label`` the same grid's label map (or None), ``fit`` the femur fit (None = not aligned),
    ``notes`` what was skipped and why."""

    image: MetaTensor
    label: MetaTensor | None = None
    fit: FemurAxisFit | None = None
    notes: list[str] = field(default_factory=list)


class ThighCTPreprocess:
    """HU crop ``(1, X, Y, Z)`` -> :class:`PreparedLeg` on a femur-aligned isotropic grid.

    Args:
        spacing_mm: isotropic voxel size of the model grid (2 mm in the seed).
        window_hu: CT window mapped to 0..1 (default the project's muscle window -100..250 HU;
            the seed prints "100 to 250", see ``muscle_pipeline.transforms.intensity``).
        align_femur: run the femur-axis alignment at all.
        max_angle_deg: fitted axes further than this from the scanner z axis are refused.
    """

    def __init__(self, spacing_mm: float = 2.0, window_hu=(-100.0, 250.0), align_femur: bool = True,
                 max_angle_deg: float = 15.0) -> None:
        self.spacing_mm = float(spacing_mm)
        self.window = CTWindow(tuple(window_hu))
        self.align_femur = bool(align_femur)
        self.aligner = FemurAxisAlign(femur="largest", modality="ct", max_angle_deg=max_angle_deg, keep_size=False)

    def fit_femur(self, image: MetaTensor, notes: list[str]) -> FemurAxisFit | None:
        """The femur fit used for alignment, or None (with a note) when alignment is skipped."""
        if not self.align_femur:
            return None
        try:
            fit = self.aligner.fit(image)
        except ValueError as error:  # no elongated bone of femur size in the crop
            notes.append(f"femur-axis alignment skipped: {error}")
            log.info(notes[-1])
            return None
        if fit.angle_deg > self.aligner.max_angle_deg:
            notes.append(f"femur-axis alignment skipped: fitted axis {fit.angle_deg:.1f} deg from the scanner "
                         f"z axis (> {self.aligner.max_angle_deg:g}); probably not a femoral shaft")
            log.info(notes[-1])
            return None
        return fit

    def __call__(self, image: MetaTensor, label: MetaTensor | None = None) -> PreparedLeg:
        if not isinstance(image, MetaTensor):
            raise TypeError("ThighCTPreprocess needs a MetaTensor with an affine")
        image = image.float() if image.ndim == 4 else image[None].float()
        notes: list[str] = []
        oriented = Orientation(axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S")))(image)
        fit = self.fit_femur(oriented, notes)
        if fit is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                oriented = self.aligner(oriented, fit=fit)
        resampled = Spacing(pixdim=(self.spacing_mm,) * 3, mode="bilinear", padding_mode="border")(oriented)
        prepared = DivisiblePad(k=SIZE_DIVISOR, mode="constant", value=-1024.0)(resampled)
        prepared = self.window(prepared)
        prepared = MetaTensor(prepared.as_tensor().float(), affine=prepared.affine.clone())
        out_label = None
        if label is not None:
            out_label = resample_labels(label, prepared)
        return PreparedLeg(prepared, out_label, fit, notes)


def resample_labels(label: MetaTensor, like: MetaTensor) -> MetaTensor:
    """A label map ``(X, Y, Z)``/``(1, X, Y, Z)`` (any grid) nearest-neighbour onto ``like``'s grid."""
    label = label if label.ndim == 4 else label[None]
    out = SpatialResample(mode="nearest", padding_mode="zeros")(
        label.float(), dst_affine=like.affine, spatial_size=tuple(like.shape[1:]))
    return MetaTensor(out.as_tensor().round().to(torch.uint8), affine=like.affine.clone())


def to_input_grid(class_map: torch.Tensor, prepared: MetaTensor, image: MetaTensor, n_classes: int) -> torch.Tensor:
    """Class indices ``(X', Y', Z')`` on ``prepared``'s grid -> ``(X, Y, Z)`` uint8 on ``image``'s grid.

    One-hot, linear resampling of each class channel in world coordinates, arg-max; outside
    the prepared grid is background.
    """
    one_hot = torch.nn.functional.one_hot(torch.as_tensor(class_map).long(), n_classes)
    one_hot = MetaTensor(torch.movedim(one_hot, -1, 0).float(), affine=prepared.affine.clone())
    shape = tuple(image.shape[-3:])
    back = SpatialResample(mode="bilinear", padding_mode="zeros")(
        one_hot, dst_affine=torch.as_tensor(np.asarray(image.affine, dtype=np.float64)), spatial_size=shape)
    back = back.as_tensor()
    background = back.sum(dim=0) < 0.5  # outside the prepared grid every channel is ~0
    out = back.argmax(dim=0)
    out[background] = 0
    return out.to(torch.uint8)
