"""A bundle's trained cascade: load it and segment one right-leg-looking crop.

Contract with the segment job: the input is ONE leg (left legs already mirrored to look like right
legs), a ``MetaTensor`` (1, X, Y, Z) whose affine maps voxels to RAS mm; the output is a uint8 label
map (X, Y, Z) on the same grid with RIGHT-side ontology values (the job adds +100 for a left leg).
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Orientation, SpatialResample, Spacing

from .. import labels as ontology
from ..bundle import bundle_path, read_bundle_config
from ..precision import PRECISION_NAMES, resolve_precision
from ..profiling import stage
from .boxes import BoxPriors, WorldBox
from .fuse import fuse_local_probabilities
from .localize import Localizer
from .refine import Refiner

# Our affines are voxel -> RAS+ mm; say so rather than rely on the MetaTensor's "space" (MONAI 1.6 warns).
RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))

__all__ = ["CascadeModel", "build_cascade", "load_cascade", "bundle_path", "read_bundle_config", "right_value"]

log = logging.getLogger(__name__)


def right_value(structure_name: str) -> int:
    """Ontology value of a structure's RIGHT side (the base value)."""
    s = ontology.structure(structure_name)
    return ontology.value_of(f"{structure_name}_right" if s.sided else structure_name)


def groups_for(structures: list[str], overrides: dict | None = None) -> dict[str, list[str]]:
    """Stage-1 groups: ``overrides`` (group → structures) first, then each structure's ontology group."""
    groups: dict[str, list[str]] = {g: list(ms) for g, ms in (overrides or {}).items()}
    placed = {m for ms in groups.values() for m in ms}
    for m in structures:
        if m in placed:
            continue
        g = ontology.structure(m).group or m
        groups.setdefault(g, []).append(m)
    return groups



def prepare_grids(image: MetaTensor | None, stage1_spacing, stage2_spacing, intensity=None, bias_correction=None,
                  labels: MetaTensor | None = None) -> dict:
    """The cascade's preprocessing, the same for training and inference: RAS orientation, the
    stage-2 grid (image bilinear, labels nearest), N4 when the bundle has it, the bundle's
    intensity transform, then the coarser stage-1 grid.

    ``image`` / ``labels``: (1, X, Y, Z) MetaTensors on one grid (either may be None). Returns
    ``{"image2", "image1"}`` and/or ``{"label2", "label1"}``.
    """
    out = {}
    if image is not None:
        with stage("preprocess"):
            img2 = Spacing(pixdim=stage2_spacing, mode="bilinear")(Orientation(axcodes="RAS", labels=RAS_LABELS)(image))
        if bias_correction is not None:
            with stage("n4"):
                img2 = bias_correction(img2)
        with stage("preprocess"):
            img2 = intensity(img2) if intensity is not None else img2
            out["image2"] = img2
            out["image1"] = Spacing(pixdim=stage1_spacing, mode="bilinear")(img2)
    if labels is not None:
        lab2 = Spacing(pixdim=stage2_spacing, mode="nearest")(Orientation(axcodes="RAS", labels=RAS_LABELS)(labels))
        out["label2"] = lab2
        out["label1"] = Spacing(pixdim=stage1_spacing, mode="nearest")(lab2)
    return out


class CascadeModel:
    """Stage 1 (localise) → stage 2 (refine per muscle) → fusion → post-processing.

    Use :func:`load_cascade` to build one from a bundle. ``predict`` takes any RAS affine (flipped,
    permuted, any spacing); the image is reoriented and resampled to the model's spacings inside
    and the result is resampled back onto the input grid.
    """

    def __init__(self, structures: list[str], modality: str, localizer: Localizer, refiner: Refiner,
                 stage1_spacing, stage2_spacing, intensity, bias_correction=None, threshold: float = 0.5,
                 postprocess: bool = True, closing_mm: float = 3.0, memory_budget_mb: float | None = None):
        self.structures = list(structures)
        self.modality = modality
        self.localizer, self.refiner = localizer, refiner
        self.stage1_spacing = tuple(float(v) for v in stage1_spacing)
        self.stage2_spacing = tuple(float(v) for v in stage2_spacing)
        self.intensity = intensity
        self.bias_correction = bias_correction
        self.threshold = threshold
        self.postprocess = postprocess
        self.closing_mm = closing_mm
        # working memory of one fusion block (MB); None: each muscle's box at once. The input and
        # the uint8 outputs come on top of it.
        self.memory_budget_mb = memory_budget_mb

    @property
    def values(self) -> dict[str, int]:
        return {m: right_value(m) for m in self.structures}

    # --- preprocessing -------------------------------------------------------------------------
    def preprocess(self, image: MetaTensor) -> tuple[MetaTensor, MetaTensor]:
        """(1, X, Y, Z) input → (stage-1 image, stage-2 image), both RAS-oriented and normalised."""
        grids = prepare_grids(_as_meta(image), self.stage1_spacing, self.stage2_spacing, self.intensity,
                              self.bias_correction)
        return _as_meta(grids["image1"]), _as_meta(grids["image2"])

    # --- prediction ----------------------------------------------------------------------------
    def _local_probabilities(self, image: MetaTensor, progress: bool):
        img1, img2 = self.preprocess(image)
        with stage("stage1"):
            world_boxes = self.localizer.boxes(img1)
        shape2 = tuple(img2.shape[1:])
        boxes2 = {m: world_boxes[m].to_voxels(np.asarray(img2.affine), shape2) for m in self.structures}
        with stage("stage2"):
            items = self.refiner.refine(img2, boxes2, progress=progress)
        return items, np.asarray(img2.affine, float)

    def predict(self, image: MetaTensor, progress: bool = False) -> MetaTensor:
        """(1, X, Y, Z) image with RAS affine → (X, Y, Z) uint8 labels (right-side values) on its grid."""
        image = _as_meta(image)
        target_affine = np.asarray(image.affine, float)
        target_shape = tuple(image.shape[1:])
        items, affine2 = self._local_probabilities(image, progress)
        with stage("fusion"):
            labels = fuse_local_probabilities(items, self.values, affine2, target_affine, target_shape, self.threshold,
                                              memory_budget_mb=self.memory_budget_mb)
        if self.postprocess:
            with stage("postprocess"):
                labels = clean_labels(labels.numpy(), target_affine, self.closing_mm)
                labels = torch.as_tensor(labels, dtype=torch.uint8)
        return MetaTensor(labels, affine=torch.as_tensor(target_affine), meta={k: v for k, v in image.meta.items()
                                                                               if k not in ("affine",)})

    def predict_proba(self, image: MetaTensor) -> MetaTensor:
        """(1, X, Y, Z) → (M, X, Y, Z) float probabilities on the input grid, channels in ``structures`` order."""
        image = _as_meta(image)
        target_affine = np.asarray(image.affine, float)
        target_shape = tuple(image.shape[1:])
        items, affine2 = self._local_probabilities(image, False)
        out = torch.zeros((len(self.structures), *target_shape))
        resample = SpatialResample(mode="bilinear", padding_mode="zeros")
        for item in items:
            src = MetaTensor(item.prob[None].float(), affine=torch.as_tensor(item.box.affine_of_crop(affine2)))
            out[self.structures.index(item.muscle)] = resample(
                src, dst_affine=torch.as_tensor(target_affine), spatial_size=target_shape)[0].as_tensor()
        return MetaTensor(out, affine=torch.as_tensor(target_affine))

    def segment_file(self, image_path: str, output_path: str, side: str | None = None) -> str:
        """Segment a scan file (one leg or both, any side) and write its label map on the input grid.

        Goes through the segment job's side handling (:func:`muscle_pipeline.segmentation.segment_image`):
        legs are split, a left leg is mirrored before the model sees it and gets LEFT ontology
        values (base + 100). ``side`` names the leg of a single-leg scan when its position relative
        to the isocentre would not (see docs/outputs.md).
        """
        from ..io import read_image, write_label_map
        from ..segmentation import segment_image

        image = read_image(image_path)
        result = segment_image(image, self, side=side or None)
        for warning in result.warnings:
            log.warning("%s: %s", image_path, warning)
        out = Path(output_path)
        out.parent.mkdir(parents=True, exist_ok=True)
        write_label_map(result.labels.numpy().astype(np.uint8), image, out)
        return str(out)


def clean_labels(labels: np.ndarray, affine, closing_mm: float = 3.0) -> np.ndarray:
    """Per label: largest component, closing (``closing_mm``), hole filling (``muscle_pipeline.postprocess``)."""
    from ..postprocess import clean_label_map

    from ..transforms.legs import voxel_spacing

    spacing = voxel_spacing(affine)
    return np.asarray(clean_label_map(np.asarray(labels, np.uint8), spacing=tuple(spacing), closing_mm=closing_mm))


def _as_meta(image) -> MetaTensor:
    if isinstance(image, MetaTensor):
        return image if image.dtype == torch.float32 else image.float()
    return MetaTensor(torch.as_tensor(image, dtype=torch.float32))


def build_cascade(structures, modality: str, stage1_spacing, stage2_spacing, stage1_roi, stage1_network,
                  stage2_network, intensity, bias_correction=None, models_dir: str | os.PathLike = "models",
                  device: str | torch.device = "cpu", stage1_threshold: float = 0.5, box_margin_mm: float = 6.0,
                  n_jitter: int = 6, jitter_ratio_range=(1.0, 1.8), overlap: float = 0.25, sw_batch_size: int = 2,
                  fusion_threshold: float = 0.5, postprocess: bool = True, closing_mm: float = 3.0,
                  memory_budget_mb: float | None = 512, seed: int = 0, precision: str = "fp32") -> CascadeModel:
    """The trained cascade from parsed config values: what a bundle's ``inference.json`` item
    ``cascade`` calls (``"_target_": "muscle_pipeline.cascade.build_cascade"``, every argument an
    ``@id``), so ``monai.bundle run ... --n_jitter 2`` changes what runs.

    ``stage1_network``: a network; ``stage2_network``: a factory (``"_mode_": "callable"``), one
    network per structure; weights from ``models_dir`` (``stage1.pt``, ``stage2_<muscle>.pt``,
    ``cascade.json`` with box priors and patch sizes). ``precision``: ``"fp32"``, ``"bf16"`` or
    ``"auto"`` (bf16 where the device computes it natively; :mod:`muscle_pipeline.precision`)."""
    models = Path(models_dir)
    meta = json.loads((models / "cascade.json").read_text())
    # structures no training case labelled have no stage-2 model: the cascade segments the others
    untrained = set(meta.get("untrained", []))
    if untrained & set(structures):
        log.warning("%s: no trained model for %s; they are not segmented", models, ", ".join(sorted(untrained & set(structures))))
    structures = [m for m in structures if m not in untrained]
    autocast_dtype = resolve_precision(precision, device)
    stage1_network.load_state_dict(torch.load(models / "stage1.pt", map_location="cpu", weights_only=True))
    localizer = Localizer(stage1_network.to(device), BoxPriors.from_dict(meta["priors"]), stage1_roi,
                          sw_batch_size=sw_batch_size, overlap=overlap, threshold=stage1_threshold,
                          margin_mm=box_margin_mm, autocast_dtype=autocast_dtype)
    networks = {}
    for m in structures:
        net = stage2_network()
        net.load_state_dict(torch.load(models / f"stage2_{m}.pt", map_location="cpu", weights_only=True))
        networks[m] = net.to(device)
    refiner = Refiner(networks, meta["patch_sizes"], n_jitter=n_jitter, ratio_range=jitter_ratio_range, overlap=overlap,
                      sw_batch_size=max(2, n_jitter), seed=seed, autocast_dtype=autocast_dtype)
    model = CascadeModel(structures, modality, localizer, refiner, stage1_spacing, stage2_spacing, intensity,
                         bias_correction, threshold=fusion_threshold, postprocess=postprocess, closing_mm=closing_mm,
                         memory_budget_mb=memory_budget_mb)
    model.precision = PRECISION_NAMES[autocast_dtype]  # what runs, for report.json
    return model


def load_cascade(bundle: str | os.PathLike, device: str | torch.device = "cpu",
                 models_dir: str | os.PathLike | None = None, **overrides) -> CascadeModel:
    """Build the trained cascade of a bundle (name such as ``"calf_mri"`` or a folder path) from its
    parsed ``inference.json``: ``overrides`` set config ids first (``n_jitter=2``,
    ``fusion_threshold=0.3``, ``"stage2_network#channels"``), exactly as on the bundle command line.

    ``models_dir``: weights folder other than the bundle's ``models/`` (e.g. a fresh training run).
    """
    parser = read_bundle_config(bundle, device=str(device), **overrides)
    if models_dir is not None:
        parser["models_dir"] = str(models_dir)
    if isinstance(parser.get("cascade"), dict):
        return parser.get_parsed_content("cascade")
    # a bundle copied before build_cascade existed: its "cascade" item calls load_cascade itself
    keys = ("structures", "modality", "stage1_spacing", "stage2_spacing", "stage1_roi", "stage1_network",
            "stage2_network", "intensity", "bias_correction", "stage1_threshold", "box_margin_mm", "n_jitter",
            "jitter_ratio_range", "overlap", "sw_batch_size", "fusion_threshold", "postprocess", "closing_mm",
            "memory_budget_mb", "seed", "precision")
    values = {k: parser.get_parsed_content(k) for k in keys if k in parser}
    models = parser.get_parsed_content("models_dir") if "models_dir" in parser else Path(parser["bundle_root"]) / "models"
    return build_cascade(models_dir=models, device=device, **values)
