"""Read the Visible Human lower-limb atlas (Andreassen et al. 2023, CC BY 4.0) into arrays.

Each leg is one uint8 label map, 1 mm, RAS+ world mm, with the atlas's own values (muscles 1-38,
bones 100-114, cartilage 120-127, ligaments 130-133; ``labels.json``). ``read_leg`` returns those
raw values on a coarser grid if asked; ``to_ontology`` turns them into muscle-ontology values with
the leg's side (left = base + 100) using ``datasets/visible_human_lower_limb.json``.

Structures the ontology has no entry for keep generation-only values (>= 200, SynthSeg's
"generation labels"): they shape the synthetic image but are background in a training target.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from muscle_pipeline import labels as ontology
from muscle_pipeline.datasets import dataset_ontology_values

SUBJECTS = ("VHF", "VHM")
SIDES = ("left", "right")
DATASET = "visible_human_lower_limb"

# atlas values (labels.json)
MUSCLES = tuple(range(1, 39))
CARTILAGE = tuple(range(120, 128))
LIGAMENTS = tuple(range(130, 134))
FEMUR_HEAD_CARTILAGE, FEMUR_DISTAL_CARTILAGE, ACETABULUM_CARTILAGE = 120, 121, 123
TIBIA_CARTILAGE = (124, 125, 126)
ATLAS_FEMUR, ATLAS_PELVIS, ATLAS_TIBIA, ATLAS_FIBULA = 103, 100, 105, 106

# generation-only values (no ontology entry; 0 in a training target)
OTHER_BONE = 200  # coccyx, foot bones
CARTILAGE_VALUE = 201
LIGAMENT_VALUE = 202
GENERATION_ONLY = {OTHER_BONE: "other_bone", CARTILAGE_VALUE: "cartilage", LIGAMENT_VALUE: "ligament"}


def default_root() -> Path:
    """``<shared data>/visible_human_lower_limb`` (``$MUSCLE_PIPELINE_SHARED_DATA`` or the folder
    ``shared/data`` beside the checkout)."""
    repo = Path(__file__).resolve().parents[2]
    return Path(os.environ.get("MUSCLE_PIPELINE_SHARED_DATA", repo.parent / "shared" / "data")) / DATASET


@dataclass
class Leg:
    """One leg: ``labels`` (X, Y, Z) uint8 on a RAS grid with voxel->world-mm ``affine`` (4x4)."""

    subject: str
    side: str
    labels: np.ndarray
    affine: np.ndarray

    @property
    def spacing(self) -> np.ndarray:
        return np.linalg.norm(self.affine[:3, :3], axis=0)

    def world(self, index: np.ndarray) -> np.ndarray:
        """World mm of voxel indices ``(N, 3)``."""
        return index @ self.affine[:3, :3].T + self.affine[:3, 3]


def resample_nearest(labels: np.ndarray, affine: np.ndarray, spacing: float) -> tuple[np.ndarray, np.ndarray]:
    """Labels on an isotropic grid of ``spacing`` mm (nearest neighbour); integer multiples of the
    input spacing are a strided view, others go through ``scipy.ndimage.zoom(order=0)``."""
    old = np.linalg.norm(affine[:3, :3], axis=0)
    factor = spacing / old
    new_affine = affine.copy()
    new_affine[:3, :3] = affine[:3, :3] * factor
    if np.allclose(factor, np.round(factor)) and (np.round(factor) >= 1).all():
        k = np.round(factor).astype(int)
        return np.ascontiguousarray(labels[::k[0], ::k[1], ::k[2]]), new_affine
    out = ndimage.zoom(labels, 1.0 / factor, order=0, grid_mode=False)
    return out, new_affine


def read_leg(subject: str, side: str, spacing: float = 1.0, root: str | Path | None = None) -> Leg:
    """One atlas leg with its raw atlas values, resampled to ``spacing`` mm (nearest)."""
    if subject not in SUBJECTS or side not in SIDES:
        raise ValueError(f"no atlas leg {subject} {side}; subjects {SUBJECTS}, sides {SIDES}")
    path = Path(root or default_root()) / f"{subject}_{side.capitalize()}_labels_1mm.nii.gz"
    img = nib.load(str(path))
    affine = np.asarray(img.affine, dtype=float)
    if not (np.allclose(affine[:3, :3], np.diag(np.diag(affine[:3, :3]))) and (np.diag(affine)[:3] > 0).all()):
        raise ValueError(f"{path}: expected an axis-aligned RAS+ grid, got affine {affine.tolist()}")
    labels = np.asarray(img.dataobj, dtype=np.uint8)
    if spacing != 1.0:
        labels, affine = resample_nearest(labels, affine, spacing)
    return Leg(subject, side, labels, affine)


def muscle_world_x(leg: Leg) -> float:
    """Median world x (mm, RAS) of the leg's muscle voxels."""
    idx = np.argwhere((leg.labels >= 1) & (leg.labels <= 38))
    return float(np.median(leg.world(idx.astype(float))[:, 0]))


def check_sides(left: Leg, right: Leg) -> tuple[float, float]:
    """Verify from world x (RAS: +x = subject's right) that the ``left`` file really is the left
    leg; returns both median x. Raises ``ValueError`` otherwise (array order is never trusted)."""
    xl, xr = muscle_world_x(left), muscle_world_x(right)
    if not xl < xr:
        raise ValueError(f"{left.subject}: 'Left' leg muscles at x={xl:.0f} mm are not left of 'Right' ones "
                         f"at x={xr:.0f} mm (RAS)")
    return xl, xr


def ontology_lut(side: str) -> np.ndarray:
    """256-entry uint8 lookup: raw atlas value -> ontology value on ``side`` (or generation-only)."""
    lut = np.zeros(256, dtype=np.uint8)
    for value, target in dataset_ontology_values(DATASET).items():
        lut[value] = target
    lut[[102] + list(range(107, 115))] = OTHER_BONE
    lut[list(CARTILAGE)] = CARTILAGE_VALUE
    lut[list(LIGAMENTS)] = LIGAMENT_VALUE
    if side == "left":
        lut = ontology.swap_sides_lut(255)[lut].astype(np.uint8)
    return lut


def to_ontology(raw: np.ndarray, side: str) -> np.ndarray:
    """Raw atlas values of one leg -> ontology values (uint8), left leg on left values."""
    return ontology_lut(side)[raw]


def ni35_lut(keep_bones: bool = True, keep_tissues: bool = False) -> np.ndarray:
    """256-entry lookup to a Ni et al. 35-muscle target: finer entries merge into their Ni parent
    (gemelli -> external_rotators, EDL/EHL -> phalangeal_extensors, fibularis longus -> fibulari),
    other muscles (plantaris) and generation-only values -> 0; bones / tissues kept if asked."""
    lut = np.zeros(256, dtype=np.uint8)
    for lab in ontology.all_labels():
        s = lab.structure
        side_offset = ontology.LEFT_OFFSET if lab.side == "left" else 0
        if s.kind == "muscle" and 1 <= s.base <= 35:
            lut[lab.value] = lab.value
        elif s.kind == "muscle" and s.parent and ontology.structure(s.parent).base <= 35:
            lut[lab.value] = ontology.structure(s.parent).base + side_offset
        elif (s.kind == "bone" and keep_bones) or (s.kind == "tissue" and keep_tissues):
            lut[lab.value] = lab.value
    return lut


def to_ni35(labels: np.ndarray, keep_bones: bool = True, keep_tissues: bool = False) -> np.ndarray:
    """Completed atlas labels (ontology + generation-only values) -> a Ni 35-muscle target."""
    return ni35_lut(keep_bones, keep_tissues)[np.asarray(labels, dtype=np.uint8)]
