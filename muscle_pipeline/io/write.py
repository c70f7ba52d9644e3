"""Write results on the input's own grid."""
from __future__ import annotations

import os
import uuid
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

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
    values = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
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

    return write_volume(values.astype(dtype), affine, path)


def write_volume(values: np.ndarray, affine, path: str | Path) -> Path:
    """Write a 3D array (X, Y, Z) with its voxel->RAS ``affine`` as NIfTI-1, atomically (temporary
    name in the same folder, then ``os.replace``), in the array's dtype.

    The affine goes into both the sform and the qform (code 1, scanner), millimetres. nibabel,
    not ITK: importing ITK costs seconds on a cold start, and the reader is nibabel too.
    """
    path = Path(path)
    affine = np.asarray(affine, dtype=np.float64)
    image = nib.Nifti1Image(np.asarray(values), affine)
    image.set_sform(affine, code=1)
    image.set_qform(affine, code=1)
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
