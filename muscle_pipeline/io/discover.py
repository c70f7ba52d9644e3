"""Find the cases (scans) in folders and files.

One case is one NIfTI / NRRD / MetaImage file, or one DICOM series (all its files, wherever
they lie under the given paths). Discovery only reads headers (file suffixes, and DICOM headers
through pydicom without decoding pixels), never voxel data, so it is cheap; problems inside a
file's voxels surface when the case is read (:func:`muscle_pipeline.io.read_image`).

A file that is not a scan (a text file, a DICOM structured report or presentation state, a
DICOM file without pixel data, an unreadable DICOM header) is skipped with a note: it is logged
and, when the caller passes a list, appended to it as a :class:`SkippedFile`. A bad file never
stops discovery of the good ones.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, Sequence

import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from muscle_pipeline.errors import NoCasesFoundError

logger = logging.getLogger(__name__)

# Suffix -> format, longest first so that ".nii.gz" wins over ".gz".
IMAGE_SUFFIXES: dict[str, str] = {
    ".nii.gz": "nifti",
    ".nii": "nifti",
    ".nrrd": "nrrd",
    ".nhdr": "nrrd",
    ".mha": "mha",
    ".mhd": "mha",
}
FORMATS = ("nifti", "nrrd", "mha", "dicom")

# DICOM elements larger than this are not loaded while reading headers (pixel data is only
# checked for presence); pydicom reads them lazily if ever touched.
_DEFER_BYTES = 4096
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


@dataclass(frozen=True)
class Case:
    """One scan to process.

    ``paths``: the image file (NIfTI/NRRD/MHA header file), or every file of a DICOM series
    (unordered; the reader orders them by slice position). ``series_uid``, ``modality`` and
    ``description`` come from the DICOM header (SeriesInstanceUID, Modality,
    SeriesDescription) and are None for other formats or when the header leaves them empty.
    """

    case_id: str
    paths: tuple[Path, ...]
    format: str
    series_uid: str | None = None
    modality: str | None = None
    description: str | None = None

    @property
    def source(self) -> Path:
        """The file, or for DICOM the folder holding the series (common parent of its files)."""
        if self.format != "dicom":
            return self.paths[0]
        return Path(os.path.commonpath([str(p.parent) for p in self.paths]))


@dataclass(frozen=True)
class SkippedFile:
    """A file that discovery left out, and why."""

    path: Path
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


def image_format(path: str | Path) -> str | None:
    """'nifti' | 'nrrd' | 'mha' from the file name's suffix, or None (maybe DICOM, maybe not)."""
    name = Path(path).name.lower()
    for suffix, fmt in IMAGE_SUFFIXES.items():
        if name.endswith(suffix) and len(name) > len(suffix):
            return fmt
    return None


def strip_image_suffix(name: str) -> str:
    """'scan.nii.gz' -> 'scan' (only the known image suffixes are removed)."""
    lower = name.lower()
    for suffix in IMAGE_SUFFIXES:
        if lower.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def discover(paths: str | Path | Iterable[str | Path], skipped: list | None = None) -> list[Case]:
    """Cases found in ``paths`` (files and/or folders, folders searched recursively).

    Returns the cases sorted by ``case_id``; ids are unique and the same on every run over the
    same inputs. Files that are not scans are appended to ``skipped`` (as :class:`SkippedFile`)
    and logged. Raises :class:`NoCasesFoundError` naming the input when no case is found.
    """
    inputs = [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]
    notes: list[SkippedFile] = []

    def skip(path: Path, reason: str) -> None:
        note = SkippedFile(path, reason)
        notes.append(note)
        logger.info("skipped %s", note)

    files = _list_files(inputs, skip)
    detached = _detached_data_files(files)
    cases: list[Case] = []
    dicom_groups: dict[tuple, list[tuple[Path, pydicom.Dataset]]] = defaultdict(list)
    for path in files:
        if path in detached:
            continue  # the voxel file of a .mhd/.nhdr header: part of that case
        fmt = image_format(path)
        if fmt is not None:
            cases.append(Case(case_id=strip_image_suffix(path.name), paths=(path,), format=fmt))
            continue
        header, reason = _read_dicom_image_header(path)
        if header is None:
            skip(path, reason)
            continue
        series_uid = str(header.get("SeriesInstanceUID", "") or "")
        # Without a SeriesInstanceUID (some anonymisers blank it) the folder stands in for it.
        key = (series_uid,) if series_uid else ("", str(path.parent))
        dicom_groups[key].append((path, header))

    cases.extend(_dicom_case(members) for _, members in sorted(dicom_groups.items()))
    if skipped is not None:
        skipped.extend(notes)
    if not cases:
        where = ", ".join(str(p) for p in inputs) or "(no paths given)"
        detail = f" ({len(notes)} file(s) skipped: {notes[0]}{' ...' if len(notes) > 1 else ''})" if notes else ""
        raise NoCasesFoundError(inputs[0] if len(inputs) == 1 else None, f"no readable scan found in {where}{detail}")
    return sorted(_unique_ids(cases), key=lambda c: c.case_id)


# ----------------------------------------------------------------------------------------------
def _list_files(inputs: Sequence[Path], skip) -> list[Path]:
    """Every regular file under ``inputs``, each once, in a stable order."""
    seen: set[Path] = set()
    files: list[Path] = []

    def add(path: Path) -> None:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            files.append(path)

    for root in inputs:
        if root.is_file():
            add(root)
        elif root.is_dir():
            for folder, dirnames, filenames in os.walk(root):
                dirnames.sort()
                for name in sorted(filenames):
                    path = Path(folder) / name
                    if path.is_file():
                        add(path)
        else:
            skip(root, "does not exist")
    return files


_DATA_FILE_LINE = re.compile(r"^\s*(ElementDataFile\s*=|data\s?file\s*:)\s*(.+?)\s*$", re.IGNORECASE)


def _detached_data_files(files: Sequence[Path]) -> set[Path]:
    """Voxel files named by .mhd/.nhdr headers, so that they are not reported as skipped.

    Only the single-file form (``ElementDataFile = x.raw`` / ``data file: x.raw.gz``) is looked
    for; ITK itself reads the header when the case is loaded.
    """
    data_files: set[Path] = set()
    for header in files:
        if not header.name.lower().endswith((".mhd", ".nhdr")):
            continue
        try:
            text = header.read_text(errors="replace")[:65536]
        except OSError:
            continue
        for line in text.splitlines():
            match = _DATA_FILE_LINE.match(line)
            if match and match.group(2).upper() not in ("LOCAL", "LIST"):
                data_files.add(header.parent / match.group(2).split()[0])
    return data_files


def _read_dicom_image_header(path: Path) -> tuple[pydicom.Dataset | None, str]:
    """(header, '') for a DICOM file holding an image slice or volume; (None, why) otherwise."""
    try:
        # defer_size keeps pixel data on disk; its element is still listed, so presence is known.
        header = pydicom.dcmread(path, defer_size=_DEFER_BYTES)
    except InvalidDicomError:
        return None, "not an image file: unknown suffix and not DICOM"
    except Exception as exc:  # pydicom raises many types for damaged files
        return None, f"unreadable DICOM header ({type(exc).__name__}: {exc})"
    sop_class = str(header.get("SOPClassUID", "") or header.file_meta.get("MediaStorageSOPClassUID", "") or "")
    sop_name = UID(sop_class).name if sop_class else ""
    is_known_class = bool(sop_class) and sop_name != sop_class
    if is_known_class and "Image Storage" not in sop_name:
        return None, f"non-image DICOM ({sop_name})"
    if not any(keyword in header for keyword in _PIXEL_KEYWORDS):
        return None, f"DICOM without pixel data ({sop_name or 'no SOP class'})"
    single_frame = int(header.get("NumberOfFrames", 1) or 1) <= 1
    if single_frame and not ("ImagePositionPatient" in header and "ImageOrientationPatient" in header):
        return None, "DICOM image without ImagePositionPatient/ImageOrientationPatient (e.g. a screenshot): not part of a 3D scan"
    return header, ""


def _clean(text: object) -> str:
    """A readable id fragment: letters, digits, '.', '-' kept; other runs become '_'."""
    return re.sub(r"[^A-Za-z0-9.\-]+", "_", str(text)).strip("_.")


def _short_hash(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:8]


def _dicom_case(members: list[tuple[Path, pydicom.Dataset]]) -> Case:
    """Case of one series; id = readable header fields + a short hash of the SeriesInstanceUID."""
    paths = tuple(path for path, _ in members)
    first = members[0][1]
    series_uid = str(first.get("SeriesInstanceUID", "") or "") or None
    modality = str(first.get("Modality", "") or "") or None
    description = str(first.get("SeriesDescription", "") or "") or None
    series_number = first.get("SeriesNumber", None)
    parts = [
        _clean(first.get("PatientID", "") or ""),
        f"S{series_number}" if series_number not in (None, "") else "",
        _clean(description or ""),
    ]
    readable = "_".join(p for p in parts if p) or _clean(modality or "dicom")
    return Case(
        case_id=f"{readable}_{_short_hash(series_uid or _series_fingerprint([h for _, h in members]))}",
        paths=paths,
        format="dicom",
        series_uid=series_uid,
        modality=modality,
        description=description,
    )


def _series_fingerprint(headers: list[pydicom.Dataset]) -> str:
    """Stands in for a blank SeriesInstanceUID (some anonymisers empty it): header content that
    identifies the series, not file or folder names, so copying or moving it keeps its id."""
    first = headers[0]
    keywords = ("StudyInstanceUID", "FrameOfReferenceUID", "SeriesDate", "SeriesTime", "Modality", "SeriesDescription")
    fields = [str(first.get(keyword, "") or "") for keyword in keywords]
    instances = sorted(str(h.get("SOPInstanceUID", "") or "") for h in headers)
    positions = sorted(" ".join(f"{float(v):.3f}" for v in h.get("ImagePositionPatient", []) or []) for h in headers)
    return "\n".join(fields + instances + positions)


def _unique_ids(cases: list[Case]) -> list[Case]:
    """Make case ids unique: colliding file cases get their parent folder's name in front,
    anything still colliding gets a short hash of its path."""
    cases = [replace(c, case_id=_clean(c.case_id) or "case") for c in cases]
    counts = _count_ids(cases)
    cases = [
        replace(c, case_id=f"{_clean(c.source.parent.name)}_{c.case_id}".strip("_"))
        if counts[c.case_id] > 1 and c.format != "dicom"
        else c
        for c in cases
    ]
    counts = _count_ids(cases)
    return [
        replace(c, case_id=f"{c.case_id}_{_short_hash(str(c.paths[0].resolve()))}")
        if counts[c.case_id] > 1
        else c
        for c in cases
    ]


def _count_ids(cases: list[Case]) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for case in cases:
        counts[case.case_id] += 1
    return counts
