"""The 48 axis permutations/flips of one physical image, as arrays with matching affines and as
DICOM series written with SimpleITK (test helper); one by name with :func:`orient`."""
from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np


def orientation_names() -> list[str]:
    """The 48 names ``p<perm>f<flips>`` in :func:`all_orientations` order: ``p012f000`` is the array
    as given, ``p012f100`` flips axis 0, ``p120f000`` permutes the axes, ``p201f101`` does both."""
    return ["p" + "".join(map(str, perm)) + "f" + "".join("1" if f else "0" for f in flips)
            for perm in itertools.permutations(range(3)) for flips in itertools.product((False, True), repeat=3)]


def orient(array: np.ndarray, affine: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    """``(array', affine')`` of orientation ``name`` (see :func:`orientation_names`): the new array's
    axis k is the old axis ``perm[k]``, reversed when ``flips[k]``; ``affine'`` places every voxel of
    ``array'`` where the original voxel sits, so both describe the same physical image."""
    perm = tuple(int(c) for c in name[1:4])
    flips = tuple(c == "1" for c in name[5:8])
    shape = np.array(array.shape)
    out = np.transpose(array, perm)
    # index map new -> old: old[perm[k]] = new[k] (or shape-1-new[k] if flipped)
    m = np.zeros((4, 4))
    m[3, 3] = 1
    for k, axis in enumerate(perm):
        if flips[k]:
            m[axis, k] = -1.0
            m[axis, 3] = shape[axis] - 1
        else:
            m[axis, k] = 1.0
    for k, f in enumerate(flips):
        if f:
            out = np.flip(out, axis=k)
    return np.ascontiguousarray(out), affine @ m


def all_orientations(array: np.ndarray, affine: np.ndarray):
    """Yield ``(name, array', affine')`` for the 6 permutations × 8 flips of the array axes; every
    one describes the same physical image (voxel i' of array' sits where the original voxel sits)."""
    for name in orientation_names():
        yield (name, *orient(array, affine, name))


def to_ras(array: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Reorder/flip axes to the closest RAS orientation (exact for axis-aligned permutations)."""
    import nibabel.orientations as nio

    return nio.apply_orientation(array, nio.io_orientation(affine))


def write_dicom_series(array: np.ndarray, affine_ras: np.ndarray, folder: Path, modality: str = "MR") -> list[Path]:
    """Write ``array`` (X, Y, Z) with voxel→RAS ``affine_ras`` as a DICOM series via SimpleITK
    (one file per slice along the third array axis)."""
    import SimpleITK as sitk

    folder.mkdir(parents=True, exist_ok=True)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine_ras
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    direction = lps[:3, :3] / spacing
    image = sitk.GetImageFromArray(np.transpose(array, (2, 1, 0)).astype(np.int16))
    image.SetSpacing(spacing.tolist())
    image.SetDirection(direction.flatten().tolist())
    image.SetOrigin(lps[:3, 3].tolist())
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    series_uid = "1.2.826.0.1.3680043.2.1125." + str(abs(hash(folder.name)) % 10**12)
    study_uid = series_uid + ".1"
    row_dir, col_dir = direction[:, 0], direction[:, 1]
    paths = []
    for k in range(image.GetDepth()):
        sl = image[:, :, k]
        origin = image.TransformIndexToPhysicalPoint((0, 0, k))
        tags = {
            "0008|0060": modality,
            "0008|0016": "1.2.840.10008.5.1.4.1.1.4" if modality == "MR" else "1.2.840.10008.5.1.4.1.1.2",
            "0008|0018": f"{series_uid}.{k + 1}",
            "0020|000d": study_uid,
            "0020|000e": series_uid,
            "0020|0052": study_uid + ".2",
            "0020|0011": "1",
            "0010|0020": "orientation_test",
            "0008|103e": folder.name,
            "0020|0013": str(k + 1),
            "0020|0032": "\\".join(f"{v:.6f}" for v in origin),
            "0020|0037": "\\".join(f"{v:.6f}" for v in list(row_dir) + list(col_dir)),
            "0028|0030": f"{spacing[1]:.6f}\\{spacing[0]:.6f}",
            "0018|0050": f"{spacing[2]:.6f}",
        }
        for key, value in tags.items():
            sl.SetMetaData(key, value)
        path = folder / f"slice{k:04d}.dcm"
        writer.SetFileName(str(path))
        writer.Execute(sl)
        paths.append(path)
    return paths
