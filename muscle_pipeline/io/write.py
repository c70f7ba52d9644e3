"""Write results on the input's own grid."""
from __future__ import annotations

import os
import uuid
from pathlib import Path

import nibabel as nib
import numpy as np

NIFTI_SUFFIXES = (".nii.gz", ".nii")


def write_label_map(labels, reference, path: str | Path) -> Path:
    """Write an integer label map as NIfTI on ``reference``'s exact grid and affine.

    ``labels``: array/tensor of shape (X, Y, Z) (or (1, X, Y, Z)) equal to the reference's
    spatial shape, non-negative integer values. ``reference``: the MetaTensor the labels belong
    to; its ``.affine`` (voxel index -> RAS+ mm) is written unchanged. Stored as uint8 when every
    value is <= 255, else uint16. Written with nibabel, the counterpart of :func:`read_image`'s
    NIfTI reader: reading the file back gives the same affine (exactly where its numbers are
    float32 numbers, as when it came from a NIfTI file's sform; else to float32 rounding,
    ~1e-7 mm). The file is written under a temporary name in the same folder and renamed, so a
    killed job never leaves a half-written file behind. Returns the path written (``.nii.gz`` or
    ``.nii``).
    """
    path = Path(path)
    if not path.name.lower().endswith(NIFTI_SUFFIXES):
        raise ValueError(f"{path}: a label map is written as NIfTI; name it *.nii.gz (or *.nii)")
    values = labels.detach().cpu().numpy() if hasattr(labels, "detach") else np.asarray(labels)  # a tensor
    affine = np.asarray(reference.affine, dtype=np.float64)
    grid = tuple(int(n) for n in reference.shape[-3:])
    if values.ndim == 4 and values.shape[0] == 1:
        values = values[0]  # drop a channel dimension
    if values.shape != grid:
        raise ValueError(f"{path}: labels have shape {values.shape}, the reference grid is {grid}")
    if values.size and (np.issubdtype(values.dtype, np.floating) or values.dtype == bool):
        if values.dtype != bool and not np.array_equal(values, np.round(values)):
            raise ValueError(f"{path}: label values must be integers")
    low, high = (int(values.min()), int(values.max())) if values.size else (0, 0)
    if low < 0 or high > np.iinfo(np.uint16).max:
        raise ValueError(f"{path}: label values {low}..{high} do not fit uint16")
    dtype = np.uint8 if high <= np.iinfo(np.uint8).max else np.uint16

    meta = getattr(reference, "meta", None) or {}
    geometry = {key: meta[key] for key in _NIFTI_GEOMETRY_KEYS if key in meta}
    return write_volume(values.astype(dtype), affine, path,
                        nifti_geometry=geometry if len(geometry) == len(_NIFTI_GEOMETRY_KEYS) else None)


# meta entries that read_image stores for a NIfTI input (muscle_pipeline.io.read.nifti_geometry)
_NIFTI_GEOMETRY_KEYS = ("nifti_qform_code", "nifti_sform_code", "nifti_quatern", "nifti_pixdim", "nifti_sform")
# Largest |cosine| between two affine axes for which a qform (rotation + zooms only) is written.
_QFORM_SHEAR_TOLERANCE = 1e-3
# A stored input geometry is reused only where it gives the reference's affine (mm).
_SAME_AFFINE_MM = 1e-4


def write_volume(values: np.ndarray, affine, path: str | Path, nifti_geometry: dict | None = None) -> Path:
    """Write a 3D array (X, Y, Z) with its voxel->RAS ``affine`` as NIfTI-1, atomically (temporary
    name in the same folder, then ``os.replace``), in the array's dtype.

    ``nifti_geometry`` (the ``nifti_*`` meta of a NIfTI input, see
    :func:`muscle_pipeline.io.read.nifti_geometry`): its qform, sform, codes and pixdim are
    copied as stored, so every tool (nibabel uses the sform, ITK the qform unless sform_code is
    1) places the output exactly where it places the input; used only where it gives ``affine``.
    Otherwise the affine goes into the sform (code 1, scanner) and, unless it is sheared (a
    qform cannot hold a shear), into the qform too; a sheared affine gets qform_code 0 rather
    than a qform that disagrees with the sform. Millimetres. nibabel, not ITK: importing ITK
    costs seconds on a cold start, and the reader is nibabel too.
    """
    path = Path(path)
    affine = np.asarray(affine, dtype=np.float64)
    image = nib.Nifti1Image(np.asarray(values), affine)
    if not (nifti_geometry is not None and _copy_geometry(image.header, nifti_geometry, affine)):
        image.set_sform(affine, code=1)
        if _shear(affine) <= _QFORM_SHEAR_TOLERANCE:
            image.set_qform(affine, code=1)
        else:
            image.set_qform(None, code=0)
    image.header.set_xyzt_units(xyz="mm")
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = ".nii.gz" if path.name.lower().endswith(".nii.gz") else ".nii"
    temporary = path.parent / f".{path.name[: -len(suffix)]}.{uuid.uuid4().hex[:8]}.tmp{suffix}"
    try:
        nib.save(image, str(temporary))
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()
    return path


def _shear(affine) -> float:
    """Largest |cosine| between two voxel axes of a 4x4 affine: 0 for perpendicular axes."""
    axes = np.asarray(affine, dtype=np.float64)[:3, :3]
    unit = axes / np.linalg.norm(axes, axis=0)
    cosines = unit.T @ unit
    return float(np.max(np.abs(cosines - np.diag(np.diag(cosines)))))


def _copy_geometry(header, geometry: dict, affine: np.ndarray) -> bool:
    """Copy a NIfTI input's stored geometry fields into ``header``; False (header unchanged)
    where they do not give ``affine``, e.g. a reference whose affine was changed after reading."""
    candidate = header.copy()
    quatern = np.asarray(geometry["nifti_quatern"], dtype=np.float32)
    for key, value in zip(_QUATERN_FIELDS, quatern):
        candidate[key] = value
    sform = np.asarray(geometry["nifti_sform"], dtype=np.float64)
    candidate["srow_x"], candidate["srow_y"], candidate["srow_z"] = sform[0], sform[1], sform[2]
    pixdim = np.asarray(candidate["pixdim"]).copy()
    pixdim[:4] = np.asarray(geometry["nifti_pixdim"], dtype=np.float32)[:4]  # qfac and the voxel size
    candidate["pixdim"] = pixdim
    candidate["qform_code"] = int(geometry["nifti_qform_code"])
    candidate["sform_code"] = int(geometry["nifti_sform_code"])
    if not np.allclose(candidate.get_best_affine(), affine, rtol=0, atol=_SAME_AFFINE_MM):
        return False
    for key in (*_QUATERN_FIELDS, "srow_x", "srow_y", "srow_z", "pixdim", "qform_code", "sform_code"):
        header[key] = candidate[key]
    return True


_QUATERN_FIELDS = ("quatern_b", "quatern_c", "quatern_d", "qoffset_x", "qoffset_y", "qoffset_z")
