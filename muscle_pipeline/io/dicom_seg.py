"""DICOM-SEG output for DICOM inputs (highdicom): one segment per structure, ontology names and
colours, referencing the source series, frames placed by ImagePositionPatient.

The label map is on the grid MONAI read the series into (array (X, Y, Z), voxel→RAS affine).
Each array slice is matched to its source instance by world position, not by file order, so
the frames land on the right images whatever order the files were listed in.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

import numpy as np

from muscle_pipeline import __version__
from muscle_pipeline import labels as ontology
from muscle_pipeline.errors import InputError

_LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _segment_codes(entry: ontology.Label):
    from pydicom.sr.codedict import codes

    kind = entry.structure.kind
    category = codes.SCT.AnatomicalStructure if kind in ("muscle", "bone") else codes.SCT.Tissue
    specific = {"femur": codes.SCT.Femur, "tibia": codes.SCT.Tibia, "fibula": codes.SCT.Fibula}
    prop_type = specific.get(entry.structure.name) or (
        codes.SCT.SkeletalMuscle if kind == "muscle" else codes.SCT.Bone if kind == "bone" else codes.SCT.Tissue
    )
    return category, prop_type


def _content_digest(datasets) -> str:
    """SHA-256 over what tells one source series from another (patient, study and series fields,
    each instance's SOP UID, position and pixel data): the seed of every UID derived for it, so
    that two different series never get the same derived UID and one series always the same."""
    digest = hashlib.sha256()
    for ds in datasets:
        meta = getattr(ds, "file_meta", None)
        for key in ("PatientID", "PatientName", "PatientBirthDate", "StudyDate", "StudyTime", "AccessionNumber",
                    "StudyID", "SeriesNumber", "SeriesDate", "SeriesTime", "SOPInstanceUID", "ImagePositionPatient"):
            digest.update(f"{key}={ds.get(key, '')}\n".encode())
        digest.update(str(meta.get("MediaStorageSOPInstanceUID", "") if meta is not None else "").encode())
        digest.update(bytes(ds.get("PixelData", b"") or b""))
    return digest.hexdigest()


def _repair_identifiers(datasets, notes: list[str]) -> None:
    """Anonymisers often blank identifiers a DICOM-SEG must reference (the real TotalSegmentator
    example series has an empty SOPClassUID and StudyInstanceUID and no FrameOfReferenceUID).
    Fill them in the in-memory copies only, never with an empty or shared value: SOP class and
    instance from the file meta header, else derived; series, study and frame of reference
    derived deterministically (``generate_uid(entropy_srcs=...)``) from the series UID where it
    is present, else from the series' content (:func:`_content_digest`); and say so. UIDs the
    source has are kept, so that the SEG references them."""
    from pydicom.uid import generate_uid

    filled = set()
    series_uid = str(datasets[0].get("SeriesInstanceUID", "") or "")
    seed = series_uid or _content_digest(datasets)
    derived = {
        "SeriesInstanceUID": generate_uid(entropy_srcs=["series", seed]),
        "StudyInstanceUID": generate_uid(entropy_srcs=["study", seed]),
        "FrameOfReferenceUID": generate_uid(entropy_srcs=["frame", seed]),
    }
    for index, ds in enumerate(datasets):
        meta = getattr(ds, "file_meta", None)
        if not ds.get("SOPClassUID") and meta is not None and meta.get("MediaStorageSOPClassUID"):
            ds.SOPClassUID = meta.MediaStorageSOPClassUID
            filled.add("SOPClassUID")
        if not ds.get("SOPInstanceUID"):
            if meta is not None and meta.get("MediaStorageSOPInstanceUID"):
                ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
            else:
                ds.SOPInstanceUID = generate_uid(entropy_srcs=["instance", seed, str(index),
                                                               str(ds.get("ImagePositionPatient", ""))])
            filled.add("SOPInstanceUID")
        for key, value in derived.items():
            if not ds.get(key):
                setattr(ds, key, value)
                filled.add(key)
        for key in ("PatientID", "StudyID", "AccessionNumber", "PatientName"):
            if key not in ds:
                setattr(ds, key, "")
    if filled:
        notes.append("source series lacks " + ", ".join(sorted(filled)) + "; DICOM-SEG uses values filled from the "
                     "file meta header or derived from the " + ("SeriesInstanceUID" if series_uid else "series' content"))


def _lab_colour(rgb: tuple[int, int, int]):
    import highdicom as hd

    return hd.color.CIELabColor.from_rgb(*rgb) if hasattr(hd.color.CIELabColor, "from_rgb") else None


def write_dicom_seg(
    label_map: np.ndarray,
    affine: np.ndarray,
    source_files: Sequence[str | Path],
    path: str | Path,
    series_description: str = "muscle_pipeline segmentation",
    notes: list[str] | None = None,
) -> Path:
    """Write ``label_map`` (X, Y, Z ontology values on the series' grid, ``affine`` voxel→RAS mm)
    as a binary DICOM-SEG referencing the series in ``source_files``. Returns the path; anything
    repaired in the source headers is appended to ``notes``."""
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    label_map = np.asarray(label_map)
    datasets = [pydicom.dcmread(str(f)) for f in source_files]
    _repair_identifiers(datasets, notes if notes is not None else [])
    # World (LPS) position of the first voxel of every array slice, matched to each instance's IPP.
    lps = _LPS_FROM_RAS @ np.asarray(affine, float)
    positions = np.array([ds.ImagePositionPatient for ds in datasets], dtype=float)
    order = []
    for k in range(label_map.shape[2]):
        corner = (lps @ np.array([0, 0, k, 1.0]))[:3]
        dist = np.linalg.norm(positions - corner, axis=1)
        j = int(np.argmin(dist))
        if dist[j] > 0.01 * float(np.linalg.norm(lps[:3, 2])) + 1e-3:
            raise InputError(source_files[0], f"label map slice {k} matches no source instance (off by {dist[j]:.3f} mm)")
        order.append(j)
    rows, cols = int(datasets[0].Rows), int(datasets[0].Columns)
    if label_map.shape[:2] != (cols, rows):
        raise InputError(source_files[0], f"label map {label_map.shape} does not match the series' {cols}x{rows} frames")

    values = [int(v) for v in np.unique(label_map) if v != 0]
    algorithm = hd.AlgorithmIdentificationSequence(
        name="muscle_pipeline", version=__version__, family=codes.DCM.ArtificialIntelligence
    )
    descriptions, seg_numbers = [], {}
    for number, value in enumerate(values, start=1):
        try:
            entry = ontology.label(value)
        except KeyError:
            raise InputError(None, f"label value {value} is not in the muscle ontology") from None
        category, prop_type = _segment_codes(entry)
        laterality = {"left": codes.SCT.Left, "right": codes.SCT.Right}.get(entry.side)
        kwargs = {"display_color": _lab_colour(entry.color)}
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=entry.name,
                segmented_property_category=category,
                segmented_property_type=prop_type,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algorithm,
                anatomic_regions=[laterality] if laterality else None,
                **{k: v for k, v in kwargs.items() if v is not None},
            )
        )
        seg_numbers[value] = number
    # Frames in source-instance order: frame j = array slice whose position matched instance j.
    lut = np.zeros(int(label_map.max()) + 1, dtype=np.uint16)
    for value, number in seg_numbers.items():
        lut[value] = number
    frames = np.zeros((len(datasets), rows, cols), dtype=np.uint16)
    for k, j in enumerate(order):
        frames[j] = lut[label_map[:, :, k]].T  # (X, Y) -> (rows=Y, cols=X)
    ref = datasets[0]
    seg = hd.seg.Segmentation(
        source_images=datasets,
        pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=int(getattr(ref, "SeriesNumber", 0) or 0) + 900,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="muscle_pipeline",
        manufacturer_model_name="muscle_pipeline",
        software_versions=__version__,
        device_serial_number="0",
        series_description=series_description,
    )
    path = Path(path)
    seg.save_as(str(path))
    return path
