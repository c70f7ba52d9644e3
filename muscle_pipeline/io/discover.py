"""Find the cases (scans) in folders and files.

One case is one NIfTI / NRRD / MetaImage file, or one DICOM series (all its files, wherever
they lie under the given paths). Discovery only reads headers (file suffixes, and DICOM headers
through pydicom without decoding pixels), never voxel data, so it is cheap; problems inside a
file's voxels surface when the case is read (:func:`muscle_pipeline.io.read_image`).

A file that is not a scan (a text file, a DICOM structured report or presentation state, a
DICOM file without pixel data, an unreadable DICOM header) is skipped with a note: it is logged
and, when the caller passes a list, appended to it as a :class:`SkippedFile`. So are input paths
that do not exist, dangling symbolic links, FIFOs/sockets/devices (never opened, so a FIFO cannot
hang discovery), the caller's ``exclude`` folders (the job's own output folder) and any folder
holding a muscle_pipeline output (``batch_report.json`` or ``.locks``). A bad file never stops
discovery of the good ones.

A damaged DICOM file (cut short, unparsable header, an image object without its pixel data) in
a folder holding a DICOM series' files most likely is a lost slice of that series: it is attached
to the case as ``Case.damaged_neighbours`` so that the batch fails the case instead of
segmenting a series that silently lost its first or last slices.

Case ids are readable and depend only on the source and the input it was found under: a file's
path relative to that input folder (separators -> ``_``, image suffix stripped; a file given
directly keeps its stem), a DICOM series' header fields + a hash of its SeriesInstanceUID. Adding
files to an input therefore never renames an existing case, and a re-run resumes it.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import stat
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, Sequence

import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from muscle_pipeline.errors import NoCasesFoundError
from muscle_pipeline.outputs import BATCH_REPORT_JSON, LOCK_DIR, case_id_problem

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
    # Damaged DICOM files lying beside the series' files (probably its lost slices); non-empty
    # makes the batch fail the case. ``skipped_beside``: every file skipped in those folders.
    damaged_neighbours: tuple["SkippedFile", ...] = ()
    skipped_beside: tuple["SkippedFile", ...] = ()

    @property
    def source(self) -> Path:
        """The file, or for DICOM the folder holding the series (common parent of its files)."""
        if self.format != "dicom":
            return self.paths[0]
        return Path(os.path.commonpath([str(p.parent) for p in self.paths]))


@dataclass(frozen=True)
class SkippedFile:
    """A file that discovery left out, and why. ``damaged``: it looks like a DICOM file that was
    cut short or corrupted (not merely some other kind of file)."""

    path: Path
    reason: str
    damaged: bool = False

    def as_dict(self) -> dict:
        return {"path": str(self.path), "reason": self.reason}

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


def discover(
    paths: str | Path | Iterable[str | Path],
    skipped: list | None = None,
    exclude: Iterable[str | Path] = (),
) -> list[Case]:
    """Cases found in ``paths`` (files and/or folders, folders searched recursively).

    Returns the cases sorted by ``case_id``; ids are unique, the same on every run over the same
    inputs, and a case keeps its id when files are added. Files that are not scans are appended
    to ``skipped`` (as :class:`SkippedFile`) and logged. Folders in ``exclude`` (e.g. the job's
    output folder) and folders holding a muscle_pipeline output are not searched (one note each).
    Raises :class:`NoCasesFoundError` naming the input when no case is found.
    """
    inputs = [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]
    notes: list[SkippedFile] = []

    def skip(path: Path, reason: str, damaged: bool = False) -> None:
        note = SkippedFile(path, reason, damaged)
        notes.append(note)
        logger.info("skipped %s", note)

    listed = _list_files(inputs, skip, {Path(p).resolve() for p in exclude})
    anchors = dict(listed)
    files = [path for path, _ in listed]
    detached = _detached_data_files(files)
    file_cases: list[tuple[Case, Path]] = []
    dicom_groups: dict[tuple, list[tuple[Path, pydicom.Dataset]]] = defaultdict(list)
    for path in files:
        if path in detached:
            continue  # the voxel file of a .mhd/.nhdr header: part of that case
        fmt = image_format(path)
        if fmt is not None:
            case = Case(case_id=_relative_id(path, anchors[path]), paths=(path,), format=fmt)
            file_cases.append((case, anchors[path]))
            continue
        header, reason, damaged = _read_dicom_image_header(path)
        if header is None:
            skip(path, reason, damaged)
            continue
        series_uid = str(header.get("SeriesInstanceUID", "") or "")
        # Without a SeriesInstanceUID (some anonymisers blank it) the folder stands in for it.
        key = (series_uid,) if series_uid else ("", str(path.parent))
        dicom_groups[key].append((path, header))

    dicom_cases = [_with_neighbours(_dicom_case(members), notes) for _, members in sorted(dicom_groups.items())]
    if skipped is not None:
        skipped.extend(notes)
    if not file_cases and not dicom_cases:
        where = ", ".join(str(p) for p in inputs) or "(no paths given)"
        detail = f" ({len(notes)} file(s) skipped: {notes[0]}{' ...' if len(notes) > 1 else ''})" if notes else ""
        raise NoCasesFoundError(inputs[0] if len(inputs) == 1 else None, f"no readable scan found in {where}{detail}")
    return sorted(_unique_ids(file_cases + [(c, None) for c in dicom_cases]), key=lambda c: c.case_id)


# ----------------------------------------------------------------------------------------------
def _list_files(inputs: Sequence[Path], skip, exclude: set[Path]) -> list[tuple[Path, Path]]:
    """(file, anchor) for every regular file under ``inputs``, each once, in a stable order.

    ``anchor`` is the input folder the file was found under (its own folder for a file given
    directly); case ids are the file's path relative to it. Everything else met is noted."""
    seen: set[Path] = set()
    files: list[tuple[Path, Path]] = []

    def add(path: Path, anchor: Path) -> None:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            files.append((path, anchor))

    def excluded(folder: Path, top: bool = False) -> str | None:
        resolved = folder.resolve()
        if resolved in exclude:
            return "the job's output folder: not read as input"
        if top and any(parent in exclude for parent in resolved.parents):
            return "inside the job's output folder: not read as input"
        if (folder / BATCH_REPORT_JSON).is_file() or (folder / LOCK_DIR).is_dir():
            return f"a muscle_pipeline output folder (holds {BATCH_REPORT_JSON} or {LOCK_DIR}): not read as input"
        return None

    for root in inputs:
        if root.is_dir():
            why = excluded(root, top=True)
            if why:
                skip(root, why)
                continue
            for folder, dirnames, filenames in os.walk(root):
                kept = []
                for name in sorted(dirnames):
                    sub = Path(folder) / name
                    why = "symbolic link to a folder: not followed" if sub.is_symlink() else excluded(sub)
                    if why:
                        skip(sub, why)
                    else:
                        kept.append(name)
                dirnames[:] = kept
                for name in sorted(filenames):
                    path = Path(folder) / name
                    why = _not_a_regular_file(path)
                    if why:
                        skip(path, why)
                    else:
                        add(path, root)
        elif root.is_file():
            if any(parent in exclude for parent in root.resolve().parents):
                skip(root, "inside the job's output folder: not read as input")
            else:
                add(root, root.parent)
        else:
            skip(root, _not_a_regular_file(root) or "does not exist")
    return files


def _not_a_regular_file(path: Path) -> str | None:
    """Why ``path`` is not a readable regular file (or a link to one), without opening it."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return "dangling symbolic link" if path.is_symlink() else "does not exist"
    except OSError as exc:
        return f"cannot be examined ({exc.strerror or type(exc).__name__})"
    if stat.S_ISREG(mode):
        return None
    kinds = [(stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device"),
             (stat.S_ISBLK, "block device"), (stat.S_ISDIR, "folder")]
    kind = next((name for test, name in kinds if test(mode)), "special file")
    return f"not a regular file ({kind})"


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


_DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")


def _read_dicom_image_header(path: Path) -> tuple[pydicom.Dataset | None, str, bool]:
    """(header, '', False) for a DICOM file holding an image slice or volume; (None, why,
    damaged) otherwise, ``damaged`` when it looks like a DICOM file that was cut short or
    corrupted: 'DICM' at byte 128 or a DICOM file name but unparsable, a parse failure midway,
    or an image object (or one without SOP class) that lacks its pixel data (pydicom reads a
    truncated file as far as it goes)."""
    try:
        # defer_size keeps pixel data on disk; its element is still listed, so presence is known.
        header = pydicom.dcmread(path, defer_size=_DEFER_BYTES)
    except InvalidDicomError:
        if _has_dicom_preamble(path) or path.name.lower().endswith(_DICOM_SUFFIXES):
            return None, "unreadable DICOM header (not a valid DICOM file although named or marked as one)", True
        return None, "not an image file: unknown suffix and not DICOM", False
    except Exception as exc:  # pydicom raises many types for damaged files
        return None, f"unreadable DICOM header ({type(exc).__name__}: {exc})", True
    sop_class = str(header.get("SOPClassUID", "") or header.file_meta.get("MediaStorageSOPClassUID", "") or "")
    sop_name = UID(sop_class).name if sop_class else ""
    is_known_class = bool(sop_class) and sop_name != sop_class
    if is_known_class and "Image Storage" not in sop_name:
        return None, f"non-image DICOM ({sop_name})", False
    if not any(keyword in header for keyword in _PIXEL_KEYWORDS):
        damaged = "Image Storage" in sop_name or not sop_class
        hint = " (damaged or cut short?)" if damaged else ""
        return None, f"DICOM without pixel data ({sop_name or 'no SOP class'}){hint}", damaged
    single_frame = int(header.get("NumberOfFrames", 1) or 1) <= 1
    if single_frame and not ("ImagePositionPatient" in header and "ImageOrientationPatient" in header):
        return (None, "DICOM image without ImagePositionPatient/ImageOrientationPatient (e.g. a screenshot): "
                "not part of a 3D scan", False)
    return header, "", False


def _has_dicom_preamble(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def _with_neighbours(case: Case, notes: Sequence[SkippedFile]) -> Case:
    """Attach the files skipped in the folders holding the series' files (damaged ones apart)."""
    folders = {p.parent for p in case.paths}
    beside = tuple(n for n in notes if n.path.parent in folders)
    return replace(case, skipped_beside=beside, damaged_neighbours=tuple(n for n in beside if n.damaged))


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


def _relative_id(path: Path, anchor: Path) -> str:
    """'<in>/visit1/scan.nii.gz' found under '<in>' -> 'visit1_scan' (cleaned by _unique_ids)."""
    try:
        rel = path.relative_to(anchor)
    except ValueError:
        rel = Path(path.name)
    return "_".join(rel.parent.parts + (strip_image_suffix(rel.name),))


def _unique_ids(cases: list[tuple[Case, Path | None]]) -> list[Case]:
    """Clean ids (filesystem-safe; names the job uses in the output folder get ``_scan``
    appended) and make them unique: colliding file cases (same relative path under two inputs,
    same stem given directly from two folders) get their input folder's name in front, anything
    still colliding gets a short hash of its path. Ids that do not collide are left alone, so a
    case's id does not depend on the other files of its input folder."""
    cleaned = []
    for case, anchor in cases:
        case_id = _clean(case.case_id) or "case"
        if case_id_problem(case_id):
            case_id += "_scan"
        cleaned.append((replace(case, case_id=case_id), anchor))
    counts = _count_ids([c for c, _ in cleaned])
    cases = [
        replace(c, case_id=f"{_clean(anchor.resolve().name)}_{c.case_id}".strip("_"))
        if counts[c.case_id] > 1 and anchor is not None
        else c
        for c, anchor in cleaned
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
