"""Completed atlas legs and bilateral scenes, with tissue classes, cached as NIfTI.

    from muscle_pipeline.atlas import complete_subject
    subj = complete_subject("VHM", spacing=2.0, cache_dir="~/.cache/mp_atlas")
    subj.legs["left"].labels, subj.scene.labels      # ontology values (+ generation-only >= 200)

``complete_subject`` reads both legs of one subject, checks their sides from world x, rebuilds the
femur and hip bone (both legs), the man's tibia (from the woman's leg of the same side, landmark
similarity fit), muscles one leg lacks (from the contralateral leg, mirrored and rigidly fitted),
converts to ontology values, adds skin / subcutaneous fat / intermuscular fat, and assembles both
legs on one grid in their shared world frame. Nothing is downloaded.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from muscle_pipeline import labels as ontology
from muscle_pipeline.atlas import completion as C
from muscle_pipeline.atlas.ingest import (ATLAS_FEMUR, ATLAS_PELVIS, ATLAS_TIBIA, MUSCLES, TIBIA_CARTILAGE, Leg,
                                          check_sides, read_leg, to_ontology)

VERSION = 1
SUBCUTANEOUS_FAT = ontology.value_of("subcutaneous_fat")
SKIN = ontology.value_of("skin")
INTERMUSCULAR_FAT = ontology.value_of("intermuscular_fat")
DEFAULT_FAT_MM = {"VHF": 14.0, "VHM": 9.0}  # mean subcutaneous fat thickness (women carry more)


@dataclass
class Completed:
    """Both completed legs of one subject and their bilateral scene (ontology values)."""

    subject: str
    legs: dict[str, Leg]
    scene: Leg
    info: dict = field(default_factory=dict)


def add_tissues(labels: np.ndarray, affine: np.ndarray, fat_mm: float = 10.0, skin_mm: float = 2.0,
                gap_mm: float = 6.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Pad the grid and add intermuscular fat (gaps the muscles/bones enclose, per axial slice after
    a ``gap_mm`` closing), subcutaneous fat (body = that envelope dilated by a smoothly varying
    thickness, mean ``fat_mm``, 0.5-1.5x) and skin (outer ``skin_mm`` shell, >= 1 voxel).
    Returns (labels, affine) of the padded grid."""
    sp = np.linalg.norm(affine[:3, :3], axis=0)
    pad = np.ceil((1.6 * fat_mm + skin_mm + gap_mm) / sp).astype(int) + 1
    lab = np.pad(labels, [(p, p) for p in pad])
    affine = affine.copy()
    affine[:3, 3] -= affine[:3, :3] @ pad
    core = lab > 0
    n_close = max(1, int(round(gap_mm / sp[0])))
    closed = ndimage.binary_closing(core, ndimage.generate_binary_structure(3, 1), iterations=n_close)
    filled = np.zeros_like(closed)
    for z in range(lab.shape[2]):
        filled[:, :, z] = ndimage.binary_fill_holes(closed[:, :, z])
    rng = np.random.default_rng(seed)
    coarse = np.maximum(np.array(lab.shape) * sp // 40, 2).astype(int)  # one random value per ~40 mm
    field_ = ndimage.zoom(rng.uniform(-1, 1, coarse), np.array(lab.shape) / coarse, order=1, grid_mode=True,
                          mode="nearest")[: lab.shape[0], : lab.shape[1], : lab.shape[2]]
    thickness = fat_mm * (1.0 + 0.5 * field_)
    # chamfer distance (voxels) is much faster than the exact EDT, and the thickness is random anyway
    d_out = ndimage.distance_transform_cdt(~filled, metric="taxicab").astype(np.float32) * (sp[0] / np.sqrt(2))
    body = filled | (d_out <= thickness)
    n_skin = max(1, int(round(skin_mm / sp[0])))
    skin = body & ~ndimage.binary_erosion(body, iterations=n_skin, border_value=0)
    out = lab.copy()
    out[filled & ~core] = INTERMUSCULAR_FAT
    out[body & ~filled] = SUBCUTANEOUS_FAT
    out[skin & ~core] = SKIN
    return out, affine


def _complete_raw(legs: dict[str, Leg], donor: dict[str, Leg] | None, info: dict) -> None:
    """Rebuild missing structures in place on raw atlas values (see completion.py)."""
    for side, leg in legs.items():
        other = legs["right" if side == "left" else "left"]
        missing = [v for v in MUSCLES if (other.labels == v).sum() > 20 and (leg.labels == v).sum() < 0.05 * (other.labels == v).sum()]
        if missing:
            landmarks = [v for v in MUSCLES if v not in missing]
            moved = C.transfer_structures(leg, other, missing, landmarks, mirror=True, scale=False)
            for v, m in moved.items():
                leg.labels[m] = v
            info.setdefault("mirrored_muscles", {})[side] = missing
    for side, leg in legs.items():
        if not (leg.labels == ATLAS_TIBIA).any() and donor is not None:
            d = donor[side]
            ext = (C.fibula_ends(d), C.fibula_ends(leg))
            moved = C.transfer_structures(leg, d, [ATLAS_TIBIA], TIBIA_CARTILAGE, mirror=False, scale=True,
                                          extra_landmarks=ext)
            leg.labels[moved[ATLAS_TIBIA]] = ATLAS_TIBIA
            info.setdefault("tibia_from", {})[side] = f"{d.subject} {side}"
        femur = C.rebuild_femur(leg)
        hip = C.rebuild_hip_bone(leg, femur)
        leg.labels[femur] = ATLAS_FEMUR
        leg.labels[hip] = ATLAS_PELVIS
        info.setdefault("rebuilt", {})[side] = {"femur_voxels": int(femur.sum()), "hip_bone_voxels": int(hip.sum())}


def assemble_scene(legs: dict[str, Leg]) -> Leg:
    """Both legs on one grid (same spacing) spanning both, in the subject's world frame; where both
    legs claim a voxel the left leg's label is kept."""
    sp = legs["left"].spacing
    lo = np.min([l.affine[:3, 3] for l in legs.values()], 0)
    hi = np.max([l.affine[:3, 3] + l.affine[:3, :3] @ (np.array(l.labels.shape) - 1) for l in legs.values()], 0)
    shape = tuple(np.ceil((hi - lo) / sp).astype(int) + 1)
    affine = np.diag([*sp, 1.0])
    affine[:3, 3] = lo
    out = np.zeros(shape, np.uint8)
    for side in ("right", "left"):
        leg = legs[side]
        pull = np.linalg.inv(leg.affine) @ affine
        moved = ndimage.affine_transform(leg.labels, pull, output_shape=shape, order=0)
        out[moved > 0] = moved[moved > 0]
    return Leg(legs["left"].subject, "both", out, affine)


def _paths(cache_dir: Path, subject: str, spacing: float) -> dict[str, Path]:
    tag = f"{subject}_{spacing:g}mm_v{VERSION}"
    return {"left": cache_dir / f"{tag}_left.nii.gz", "right": cache_dir / f"{tag}_right.nii.gz",
            "both": cache_dir / f"{tag}_scene.nii.gz", "info": cache_dir / f"{tag}_info.json"}


def complete_subject(subject: str, spacing: float = 2.0, cache_dir: str | Path | None = None,
                     root: str | Path | None = None, fat_mm: float | None = None, seed: int = 0) -> Completed:
    """Completed legs and bilateral scene of ``subject`` ("VHF"|"VHM") at ``spacing`` mm isotropic.
    With ``cache_dir`` the result is read from / written to NIfTI files there."""
    paths = _paths(Path(cache_dir).expanduser(), subject, spacing) if cache_dir else None
    if paths and all(p.exists() for p in paths.values()):
        loaded = {k: nib.load(str(p)) for k, p in paths.items() if k != "info"}
        legs = {k: Leg(subject, k, np.asarray(img.dataobj, np.uint8), img.affine) for k, img in loaded.items()}
        scene = legs.pop("both")
        return Completed(subject, legs, scene, json.loads(paths["info"].read_text()))
    legs = {side: read_leg(subject, side, spacing, root) for side in ("left", "right")}
    xl, xr = check_sides(legs["left"], legs["right"])
    info = {"subject": subject, "spacing_mm": spacing, "version": VERSION, "muscle_median_x_mm": {"left": xl, "right": xr}}
    donor = None
    if any(not (l.labels == ATLAS_TIBIA).any() for l in legs.values()):
        other = "VHF" if subject == "VHM" else "VHM"
        donor = {side: read_leg(other, side, spacing, root) for side in ("left", "right")}
    _complete_raw(legs, donor, info)
    onto = {side: Leg(subject, side, to_ontology(l.labels, side), l.affine) for side, l in legs.items()}
    scene = assemble_scene(onto)
    fat = DEFAULT_FAT_MM[subject] if fat_mm is None else fat_mm
    info["fat_mm"] = fat
    out_legs = {}
    for side, leg in onto.items():
        lab, aff = add_tissues(leg.labels, leg.affine, fat_mm=fat, seed=seed)
        out_legs[side] = Leg(subject, side, lab, aff)
    lab, aff = add_tissues(scene.labels, scene.affine, fat_mm=fat, seed=seed)
    scene = Leg(subject, "both", lab, aff)
    if paths:
        paths["info"].parent.mkdir(parents=True, exist_ok=True)
        for key, leg in {**out_legs, "both": scene}.items():
            nib.save(nib.Nifti1Image(leg.labels, leg.affine), str(paths[key]))
        paths["info"].write_text(json.dumps(info, indent=1))
    return Completed(subject, out_legs, scene, info)


def training_entries(subjects=("VHF", "VHM"), spacing: float = 2.0, cache_dir: str | Path = "~/.cache/muscle_pipeline/atlas",
                     root: str | Path | None = None) -> list[dict]:
    """Cascade-trainer data-list entries for the completed legs (one per leg, label scene only):
    ``{"label": <cached leg NIfTI>, "sides": "left"|"right", "synthesize": True, "subject": ...}``.
    Completes and caches the subjects first (about 12 s each at 2 mm)."""
    cache = Path(cache_dir).expanduser()
    entries = []
    for subject in subjects:
        complete_subject(subject, spacing=spacing, cache_dir=cache, root=root)
        paths = _paths(cache, subject, spacing)
        entries += [{"label": str(paths[side]), "sides": side, "synthesize": True, "subject": subject}
                    for side in ("left", "right")]
    return entries
