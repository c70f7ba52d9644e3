"""Preprocessing glue: one scan -> right-looking, normalised legs -> (predictions) -> one label map.

    image (X, Y, Z) or (1, X, Y, Z) MetaTensor, voxel -> RAS mm affine
      └─ SplitLegs          one crop per leg, left first (side from world x, never array order)
          └─ MirrorToRight  left legs reflected so every crop is a right leg
              └─ Compose    per modality, from configs/preprocess_<modality>.json:
                              MR: N4 bias correction (fast) -> MRNormalize
                              CT: FemurAxisAlign on HU (invertible) -> CTWindow (muscle, 0..1)

:func:`invert` walks the same way back for per-leg label maps predicted on the preprocessed
grids: ``Invertd`` (nearest) undoes the alignment, ``MirrorToRight.inverse(labels=True)``
un-mirrors and turns RIGHT values into LEFT ones for left legs, and ``merge_legs`` pastes the
legs onto the input's exact grid (shape and affine). Every geometric step is recorded in the
leg tensors' ``applied_operations``; the intensity steps move no voxel and need no inverse.

The Compose is built from a MONAI bundle config with ``monai.bundle.ConfigParser`` (see
:func:`preprocessing_transform`); a bundle can use the same ``_target_`` entries directly.
"""
from __future__ import annotations

import warnings as _warnings
from copy import deepcopy
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor
from monai.transforms import Compose, InvertibleTransform, Invertd, apply_transform

from muscle_pipeline.transforms.femur import FemurAxisAlignd, FemurAxisFit
from muscle_pipeline.transforms.legs import LEG_META_KEY, MirrorToRight, SplitLegs, merge_legs

__all__ = [
    "MODALITIES",
    "CONFIG_DIR",
    "PreprocessedLeg",
    "PreprocessResult",
    "preprocess_config_path",
    "preprocessing_transform",
    "preprocess",
    "invert",
]

MODALITIES = ("mr", "ct")
CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
IMAGE_KEY, LABEL_KEY = "image", "label"


def preprocess_config_path(modality: str) -> Path:
    """``muscle_pipeline/configs/preprocess_<modality>.json`` for "mr" or "ct"."""
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
    return CONFIG_DIR / f"preprocess_{modality}.json"


def preprocessing_transform(modality: str, config_file: str | Path | None = None, **overrides) -> Compose:
    """The per-leg preprocessing ``Compose`` of ``modality`` parsed from its bundle config.

    ``config_file`` replaces the packaged config; ``overrides`` set config ids before parsing
    (e.g. ``**{"n4#shrink_factor": 2}`` or ``window_hu=[-160, 240]``). The Compose works on
    dicts with ``"image"`` (channel-first ``(1, X, Y, Z)`` MetaTensor of one leg) and an
    optional ``"label"`` on the same grid (moved with nearest neighbour, intensities untouched).
    """
    parser = ConfigParser()
    parser.read_config(str(config_file or preprocess_config_path(modality)))
    for key, value in overrides.items():
        parser[key] = value
    transform = parser.get_parsed_content("preprocessing", instantiate=True)
    if not isinstance(transform, Compose):
        raise TypeError(f"'preprocessing' in {config_file or preprocess_config_path(modality)} is not a Compose")
    return transform


@dataclass
class PreprocessedLeg:
    """One leg after preprocessing.

    ``image``: ``(1, X', Y', Z')`` float32 MetaTensor, a right-looking leg on its preprocessed
    grid; its ``applied_operations`` hold the crop, the mirroring and (CT) the alignment.
    ``side``: the subject's side of this leg (from world x). ``info``: the leg's split info
    (crop box in the input grid, boundary, ...; see ``legs.plan_legs``). ``label``: the input
    label map carried through the same geometric steps (left values swapped to right for a
    mirrored left leg), or None. ``femur_axis``/``femur_angle_deg``: CT alignment fit (RAS unit
    vector, angle to the crop's z axis), None for MR or when no femur was found.
    """

    image: MetaTensor
    side: str
    info: dict = field(repr=False)
    label: MetaTensor | None = None
    femur_axis: np.ndarray | None = None
    femur_angle_deg: float | None = None

    @property
    def applied_operations(self) -> list:
        return self.image.applied_operations


@dataclass
class PreprocessResult:
    """What :func:`preprocess` returns; everything :func:`invert` needs is in here.

    ``transform`` is the Compose instance that preprocessed the legs: MONAI matches inverse
    records to the transform object that wrote them, so predictions must be inverted with it.
    ``affine``/``spatial_shape``/``meta`` describe the input grid; ``channel_first`` whether the
    input had a channel axis (the inverted label map gets the same layout).
    """

    legs: list[PreprocessedLeg]
    modality: str
    transform: Compose = field(repr=False)
    affine: torch.Tensor = field(repr=False)
    spatial_shape: tuple[int, int, int]
    meta: dict = field(repr=False)
    channel_first: bool
    warnings: list[str] = field(default_factory=list)

    @property
    def images(self) -> list[MetaTensor]:
        return [leg.image for leg in self.legs]

    @property
    def leg_infos(self) -> list[dict]:
        return [leg.info for leg in self.legs]


def _channel_first(image: MetaTensor) -> MetaTensor:
    """(X, Y, Z) -> (1, X, Y, Z) as a new MetaTensor built from the 4D array.

    Not ``image[None]``: a 3D MetaTensor made without ``original_channel_dim`` caches
    ``spatial_ndim = 2`` and MONAI crops of ``x[None]`` then skip the last axis' affine shift
    (same helper as ``muscle_pipeline.segmentation.channel_first``, which transforms must not
    import).
    """
    if image.ndim == 4:
        return image
    if image.ndim != 3:
        raise ValueError(f"expected a 3D volume (X, Y, Z) or (1, X, Y, Z), got shape {tuple(image.shape)}")
    meta = {k: v for k, v in image.meta.items() if k != "affine"}
    return MetaTensor(image.as_tensor()[None], affine=image.affine.clone(), meta=meta)


def _keep_grid(align: FemurAxisAlignd, data: dict) -> dict:
    """Record an identity 'alignment' so that inverting works the same with or without a femur."""
    source = data[align.source_key or IMAGE_KEY]
    affine = align.aligner._affine_of(source)
    grid_z = affine[:3, 2] / np.linalg.norm(affine[:3, 2])
    centre = affine[:3, :3] @ ((np.asarray(source.shape[1:]) - 1) / 2.0) + affine[:3, 3]
    fit = FemurAxisFit(axis=grid_z, centroid=centre, angle_deg=0.0, source="none", rotated=False)
    for key, mode, padding_mode in align.key_iterator(data, align.mode, align.padding_mode):
        data[key] = align.aligner(data[key], fit=fit, mode=mode, padding_mode=padding_mode)
        for entry in ("femur_axis", "femur_angle_deg"):  # no femur was found: say so, not "grid z"
            data[key].meta.pop(entry, None)
    return data


def _run(transform: Compose, data: dict, side: str, notes: list[str]) -> dict:
    """``transform(data)``, except that a leg without a detectable femur (a calf, a foot) keeps
    its grid instead of failing the whole scan."""
    for step in transform.transforms:
        if isinstance(step, FemurAxisAlignd):
            try:
                with _warnings.catch_warnings(record=True) as caught:
                    _warnings.simplefilter("always")
                    data = step(data)
                notes.extend(f"{side} leg: {w.message}" for w in caught)
            except ValueError as err:
                notes.append(f"{side} leg: no femur axis, grid kept ({err})")
                data = _keep_grid(step, data)
        else:
            data = apply_transform(step, data)
    return data


def preprocess(image: MetaTensor, modality: str, label: MetaTensor | np.ndarray | None = None,
               margin_mm: float = 10.0, side: str | None = None, n_legs: int | None = None,
               transform: Compose | None = None) -> PreprocessResult:
    """Split ``image`` into legs, mirror left legs, and run the modality's Compose on each.

    ``image``: ``(X, Y, Z)`` or ``(1, X, Y, Z)`` MetaTensor (voxel -> RAS mm affine; CT in HU).
    ``modality``: "mr" or "ct". ``label``: optional label map on the image's grid, carried
    through the same geometric steps (for training, or to check :func:`invert`). ``side``:
    hint for a scan holding one leg. ``transform``: a Compose to use instead of the packaged
    config's. Returns per-leg tensors (left leg first) and what :func:`invert` needs.
    """
    if not isinstance(image, MetaTensor):
        raise TypeError("preprocess needs a MetaTensor with an affine (use muscle_pipeline.io.read_image)")
    transform = preprocessing_transform(modality) if transform is None else transform
    img = _channel_first(image)
    if img.shape[0] != 1:
        raise ValueError(f"preprocess expects one channel, got shape {tuple(img.shape)}")
    lab = None
    if label is not None:
        lab = label if isinstance(label, MetaTensor) else MetaTensor(torch.as_tensor(np.asarray(label)))
        lab = MetaTensor(lab.as_tensor().reshape(img.shape), affine=img.affine.clone(),
                         meta={k: v for k, v in img.meta.items() if k != "affine"})

    splitter = SplitLegs(margin_mm=margin_mm, side=side, n_legs=n_legs)
    infos = splitter.plan(img)
    if not infos:
        raise ValueError("preprocess: no body found in the image")
    image_crops = splitter(img, legs=infos)
    label_crops = splitter(lab, legs=infos) if lab is not None else [None] * len(infos)

    notes: list[str] = []
    legs = []
    for info, image_crop, label_crop in zip(infos, image_crops, label_crops):
        data = {IMAGE_KEY: MirrorToRight()(image_crop)}
        if label_crop is not None:
            data[LABEL_KEY] = MirrorToRight(labels=True)(label_crop)
        data = _run(transform, data, info["side"], notes)
        out_label = data.get(LABEL_KEY)
        if out_label is not None:
            # resampling (nearest) returns float32; labels go back to the input's integer type
            out_label = out_label.round().to(lab.dtype)
        out_image = data[IMAGE_KEY]
        legs.append(PreprocessedLeg(
            image=out_image, side=info["side"], info=dict(info), label=out_label,
            femur_axis=out_image.meta.get("femur_axis"), femur_angle_deg=out_image.meta.get("femur_angle_deg"),
        ))
    return PreprocessResult(
        legs=legs, modality=modality, transform=transform, affine=img.affine.clone(),
        spatial_shape=tuple(int(s) for s in img.shape[1:]),
        meta={k: v for k, v in img.meta.items() if k != "affine"},
        channel_first=image.ndim == 4, warnings=notes,
    )


def invert(result: PreprocessResult, leg_predictions: Sequence, dtype: torch.dtype = torch.uint8) -> MetaTensor:
    """Per-leg label maps on the preprocessed grids -> one label map on the input's grid.

    ``leg_predictions``: one integer label map per ``result.legs`` (same order), shaped like
    that leg's image ``(X', Y', Z')`` or ``(1, X', Y', Z')``, with RIGHT ontology values (a
    right-leg model's output). Returns a MetaTensor with the input's layout, shape and affine;
    left legs' structures carry LEFT values (base + 100).
    """
    if len(leg_predictions) != len(result.legs):
        raise ValueError(f"got {len(leg_predictions)} predictions for {len(result.legs)} legs")
    inverter = Invertd(keys="pred", transform=result.transform, orig_keys=IMAGE_KEY, nearest_interp=True)
    unmirror = MirrorToRight(labels=True)
    geometric = any(isinstance(step, InvertibleTransform) for step in result.transform.transforms)
    leg_maps = []
    for leg, prediction in zip(result.legs, leg_predictions):
        pred = torch.as_tensor(np.asarray(prediction.detach().cpu() if isinstance(prediction, torch.Tensor)
                                          else prediction))
        if pred.ndim == 3:
            pred = pred[None]
        if tuple(pred.shape) != tuple(leg.image.shape):
            raise ValueError(f"{leg.side} leg: prediction of shape {tuple(pred.shape)} "
                             f"for a preprocessed image of shape {tuple(leg.image.shape)}")
        # Invertd gives the prediction the image's records and meta (leg info included) and
        # undoes the Compose's geometric steps; the crop and mirror records stay on it.
        if geometric:
            back = inverter({IMAGE_KEY: leg.image, "pred": MetaTensor(pred.float(), affine=leg.image.affine)})["pred"]
        else:  # intensity-only Compose (MR): nothing to undo but the mirror and the crop
            back = MetaTensor(pred.float(), meta=deepcopy(leg.image.meta),
                              applied_operations=deepcopy(leg.image.applied_operations))
        back = unmirror.inverse(back, labels=True)
        leg_maps.append(back.round().to(dtype))
    reference = MetaTensor(torch.zeros((1, *result.spatial_shape), dtype=dtype), affine=result.affine.clone(),
                           meta=dict(result.meta))
    merged = merge_legs(leg_maps, reference, legs=result.leg_infos)
    merged.meta.pop(LEG_META_KEY, None)
    merged = MetaTensor(merged.as_tensor().to(dtype), affine=result.affine.clone(), meta=dict(result.meta))
    if result.channel_first:
        return merged
    return MetaTensor(merged.as_tensor()[0], affine=result.affine.clone(),
                      meta=dict(result.meta) | {"original_channel_dim": float("nan")})

