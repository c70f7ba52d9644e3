"""Read one case into a MONAI ``MetaTensor`` in its native space.

Every format goes through MONAI's ``LoadImage`` with ``ITKReader`` (NIfTI, NRRD, MetaImage,
and DICOM series through GDCM, JPEG 2000 included). The result is float32 with shape
(X, Y, Z) (no channel), ``.affine`` maps voxel index -> RAS+ world mm, and the meta dict keeps
``filename_or_obj``, ``original_affine``, ``spatial_shape``, ``modality`` and ``case_id``.

Checks made here, because ITK does not make them (all measured with ITK 5.4):

* NIfTI: ITK reads a truncated or corrupt ``.nii.gz`` without complaint (the missing voxels
  come back as zeros), silently turns NaN voxels into 0 and replaces a zero pixdim with 1.
  So a NIfTI file is first decoded with Python's gzip (which checks the stream's CRC and
  length) and nibabel (raw header and voxels, nothing "fixed").
* DICOM: ITK's series reader takes the origin and slice direction from the file order it is
  given and does not refuse missing slices or mixed orientations. So the series is checked
  and ordered here from its headers (pydicom): one ImageOrientationPatient, one image size,
  uniform steps of ImagePositionPatient along the slice normal, no in-plane shift (tilt).
  GDCM also reads a slice whose PixelData is shorter than the image without an error (the rest
  comes from uninitialised memory), so every slice's pixel data length is checked first.
* Declared size: a header declaring more voxel bytes than the file can hold is refused before
  nibabel/ITK allocate them (a 1 kB file could ask for gigabytes).
* Orientation: every result carries meta ``orientation_problem`` ("missing" for a NIfTI with
  qform_code = sform_code = 0, "sheared" for non-perpendicular voxel axes, else None) and
  ``read_warnings`` (one-line notes naming the file). A NIfTI's own qform/sform fields are kept
  in meta (``nifti_*``) so that :func:`write_label_map` can write the same header geometry.

Every problem is raised as one :mod:`muscle_pipeline.errors` exception naming the file.
"""
from __future__ import annotations

import contextlib
import functools
import gzip
import io
import logging
import math
import struct
import warnings
import zlib
from pathlib import Path

try:  # ISA-L's gzip: the same format and checks (CRC, length), decoded ~3x faster than zlib
    from isal import igzip as _gzip
    from isal.isal_zlib import error as _isal_error
except ImportError:  # pragma: no cover - isal is a dependency; a bare install still reads
    _gzip, _isal_error = gzip, zlib.error

import nibabel as nib
import numpy as np
import pydicom
import torch
from monai.data import ITKReader, MetaTensor
from monai.transforms import LoadImage
from monai.utils import ensure_tuple

from muscle_pipeline.errors import (
    CorruptFileError,
    InvalidGeometryError,
    InvalidIntensityError,
    MusclePipelineError,
    NoCasesFoundError,
    UnsupportedImageError,
)
from muscle_pipeline.io.discover import Case, discover, image_format, strip_image_suffix

# Two slices closer than this (mm) along the normal are "at the same position".
_SAME_POSITION_MM = 1e-3
# Allowed deviation of one slice step from the median step, relative to it; a missing slice
# doubles a step, position rounding in real headers stays far below this.
_STEP_TOLERANCE = 0.05
# Allowed difference between ImageOrientationPatient cosines of two slices.
_ORIENTATION_TOLERANCE = 1e-4
# Largest cosine between two unit axes of an affine still called orthogonal; float32 sforms of
# real scans stay below 1e-5, a shear a viewer would show is far above.
_SHEAR_TOLERANCE = 1e-3
_GZIP_ERRORS = (EOFError, gzip.BadGzipFile, zlib.error, _isal_error)

# DEFLATE cannot compress better than 1032:1 (a 258-byte match per ~2 bits), so a gzip stream
# of N bytes never decompresses to more than 1032 * N bytes.
_MAX_DEFLATE_RATIO = 1032
# pydicom header reads leave values longer than this unread (the pixel data), kept as offsets.
_DEFER_BYTES = 4096


class DicomSeriesITKReader(ITKReader):
    """MONAI ``ITKReader`` that reads an ordered list of DICOM files as ONE series volume.

    MONAI's own ITKReader, given a folder, reads only the folder's first series, and given a
    list of files, reads each file separately as a channel. A folder may hold several series,
    so a case's own files are passed here, already ordered along the slice normal (ITK's
    series reader takes the origin and slice direction from that order).
    """

    def read(self, data, **kwargs):
        names = [str(name) for name in ensure_tuple(data)]
        if len(names) == 1:
            return super().read(names[0], **kwargs)
        import itk

        return itk.imread(names, imageio=itk.GDCMImageIO.New())


def read_image(case_or_path: Case | str | Path, volume_index: int | None = None) -> MetaTensor:
    """Read a case (or a file / a folder holding exactly one case) as a MetaTensor.

    Returns float32 of shape (X, Y, Z); ``.affine`` maps voxel index -> RAS+ mm. A 4D image
    needs ``volume_index`` (which volume to take, 0-based); a 3D image accepts only None or 0.
    Raises CorruptFileError, UnsupportedImageError, InvalidGeometryError,
    InvalidIntensityError or NoCasesFoundError, each naming the file or folder.
    """
    case = _as_case(case_or_path)
    source = case.source
    for path in case.paths:
        if not path.is_file():
            raise NoCasesFoundError(path, "does not exist (moved or deleted since discovery?)")
    if case.format == "nifti":
        # Decoded once with gzip + nibabel (which the checks need anyway); the affine is nibabel's
        # best affine, as MONAI's NibabelReader gives it. ITK is not needed (importing it costs
        # seconds on a cold start).
        header, voxels = _check_nifti_file(source)
        # C order like ITK's arrays: nibabel returns the file's x-fastest (Fortran) layout, on
        # which resampling and crops ran ~20 % slower (calf 3D Dixon)
        meta = {"spacing": np.asarray(header.get_zooms()[:3], dtype=np.float64), **nifti_geometry(header)}
        image = MetaTensor(torch.as_tensor(np.ascontiguousarray(voxels, dtype=np.float32)),
                           affine=torch.as_tensor(header.get_best_affine(), dtype=torch.float64), meta=meta)
        # integer voxels (scaled or not by nibabel, the dtype says) cannot be NaN or infinite
        return _finish(image, source, case, volume_index, _nifti_orientation_problem(header, source),
                       finite=np.issubdtype(voxels.dtype, np.integer))
    if case.format == "dicom":
        data: object = [str(p) for p in ordered_series_files(case)]
        reader: ITKReader = DicomSeriesITKReader()
    else:
        data = str(source)
        reader = ITKReader()
        _check_declared_size_itk(source)
    with _itk_warnings_off():
        try:
            image = _loader()(data, reader=reader)
        except MusclePipelineError:
            raise
        except Exception as exc:  # ITK raises RuntimeError/IndexError/... with C++ detail
            reason = _first_line(exc)
            if "spacing" in reason.lower():  # e.g. MetaImage "ElementSpacing = 1 0 1"
                raise InvalidGeometryError(source, f"invalid voxel spacing: {reason}") from None
            raise CorruptFileError(source, f"ITK cannot read it: {reason}") from None
    return _finish(image, source, case, volume_index)


def _finish(image: MetaTensor, source: Path, case: Case, volume_index: int | None,
            orientation: tuple[str | None, list[str]] | None = None, finite: bool = False) -> MetaTensor:
    """Checks common to every reader, then the (X, Y, Z) float32 MetaTensor with our meta keys.

    ``orientation``: (problem, warnings) found by a format-specific check; else the affine
    itself is checked for shear. Sets meta ``orientation_problem`` ("missing", "sheared" or
    None) and ``read_warnings`` (list of one-line messages naming the file, empty when fine).
    ``finite``: the reader knows the voxels are finite (integer data), so the NaN check is skipped.
    """
    array, affine = _select_volume(image, source, volume_index)
    _check_geometry(affine, image.meta.get("spacing"), source)
    if not finite:
        _check_finite(array, source)
    if orientation is None:
        sheared = shear(affine) > _SHEAR_TOLERANCE
        orientation = ("sheared", [_sheared_message(source, affine)]) if sheared else (None, [])
    problem, read_warnings = orientation

    meta = dict(image.meta)
    meta.update(
        filename_or_obj=str(source),
        original_affine=np.asarray(meta.get("original_affine", affine), dtype=np.float64),
        spatial_shape=np.asarray(array.shape),
        modality=case.modality,
        case_id=case.case_id,
        format=case.format,
        original_channel_dim=float("nan"),  # MONAI's "no_channel": EnsureChannelFirst adds one
        orientation_problem=problem,
        read_warnings=list(read_warnings),
    )
    meta.pop("affine", None)  # given below; MetaTensor warns when both are set
    return MetaTensor(array, affine=torch.as_tensor(affine, dtype=torch.float64), meta=meta)


def voxel_spacing(affine) -> tuple[float, float, float]:
    """Voxel size in mm along the three array axes (column norms of the affine)."""
    matrix = np.asarray(affine, dtype=np.float64)[:3, :3]
    return tuple(float(v) for v in np.linalg.norm(matrix, axis=0))


def orientation_code(affine) -> str:
    """Nearest anatomical axis codes of the array axes in RAS terms, e.g. 'RAS' or 'LPS'
    ('L' = index increases towards the subject's left)."""
    return "".join(nib.orientations.aff2axcodes(np.asarray(affine, dtype=np.float64)))


# ----------------------------------------------------------------------------------------------
def _as_case(case_or_path: Case | str | Path) -> Case:
    if isinstance(case_or_path, Case):
        return case_or_path
    path = Path(case_or_path)
    if not path.exists():
        raise NoCasesFoundError(path, "does not exist")
    fmt = image_format(path)
    if path.is_file() and fmt is not None:
        return Case(case_id=strip_image_suffix(path.name), paths=(path,), format=fmt)
    cases = discover([path])
    if len(cases) > 1:
        ids = ", ".join(c.case_id for c in cases)
        raise UnsupportedImageError(path, f"holds {len(cases)} cases ({ids}); read them one by one via discover()")
    return cases[0]


@functools.lru_cache(maxsize=1)
def _loader() -> LoadImage:
    """One MONAI LoadImage for the process; every call passes its reader explicitly.

    Built once because constructing LoadImage instantiates all of MONAI's default readers, and
    MONAI 1.6's GPU DICOM reader logs a warning each time when nvImageCodec is absent (CPU
    machines), which would clutter every read.
    """
    plugin_logger = logging.getLogger("monai.data.nvimgcodec_pydicom_plugin")
    level = plugin_logger.level
    plugin_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*nvImageCodec.*")
            return LoadImage(reader=ITKReader(), image_only=True, dtype=np.float32)
    finally:
        plugin_logger.setLevel(level)


@contextlib.contextmanager
def _itk_warnings_off():
    """Silence ITK's C++ warnings on stderr while reading; problems are raised by us instead."""
    import itk

    before = itk.Object.GetGlobalWarningDisplay()
    itk.Object.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        itk.Object.SetGlobalWarningDisplay(before)


def _first_line(exc: BaseException) -> str:
    """The informative line of an ITK/MONAI error (ITK puts the reason after 'ITK ERROR:')."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in lines:
        if "ERROR" in line:
            return line
    return lines[0] if lines else type(exc).__name__


def _check_nifti_file(path: Path):
    """Decode a NIfTI file with gzip + nibabel and refuse what ITK would silently accept.

    Returns (header, voxels): the NIfTI header and the scaled voxel array. One streaming pass:
    only the voxel array is held (not the file's bytes as well), and a gzip stream is read to
    its end so that its CRC and length are checked.
    """
    gz = path.name.lower().endswith(".gz")

    def open_stream():
        return _gzip.open(path, "rb") if gz else open(path, "rb")

    try:
        with open_stream() as stream:
            header = _parse_nifti_header(path, stream)
            _check_nifti_geometry(path, header)
            _check_nifti_size(path, header, gz)
            stream.seek(0)
            try:
                voxels = header.data_from_fileobj(stream)
            except _GZIP_ERRORS:
                raise
            except Exception as exc:
                raise CorruptFileError(path, f"voxel data cannot be read ({_first_line(exc)})") from None
            while stream.read(1 << 24):  # to the end: gzip checks the CRC and the length there
                pass
    except EOFError:
        raise CorruptFileError(path, "truncated gzip file (the compressed stream ends early)") from None
    except (gzip.BadGzipFile, zlib.error, _isal_error, OSError) as exc:
        raise CorruptFileError(path, f"corrupt gzip file ({exc})") from None
    return header, voxels  # NaN/inf are checked once, on the float32 array, by _finish


def _parse_nifti_header(path: Path, stream):
    """The NIfTI-1 or -2 header (with extensions) at the start of ``stream``, nothing "fixed"."""
    for header_class in (nib.Nifti1Header, nib.Nifti2Header):
        try:
            stream.seek(0)
            candidate = header_class.from_fileobj(stream, check=False)
        except _GZIP_ERRORS:
            raise
        except Exception:
            continue
        if int(candidate["sizeof_hdr"]) == header_class.sizeof_hdr:
            return candidate
    raise CorruptFileError(path, "not a NIfTI file (no valid NIfTI-1/2 header)")


def _check_nifti_geometry(path: Path, header) -> None:
    ndim = int(header["dim"][0])
    spatial = min(ndim, 3)
    pixdim = np.asarray(header["pixdim"][1 : 1 + spatial], dtype=np.float64)
    if not np.all(np.isfinite(pixdim)) or np.any(pixdim <= 0):
        raise InvalidGeometryError(path, f"voxel spacing (pixdim) {pixdim.tolist()} mm is zero, negative or not finite")
    affine = header.get_best_affine()
    if not np.all(np.isfinite(affine)) or np.any(np.linalg.norm(affine[:3, :spatial], axis=0) <= 0):
        raise InvalidGeometryError(path, f"voxel-to-world affine has a zero or non-finite axis:\n{affine}")


def nifti_geometry(header) -> dict:
    """The NIfTI header's geometry fields, as meta entries for :func:`write_label_map`, which
    copies them so that every tool places the label map where it places the input.

    ``nifti_qform``/``nifti_sform``: 4x4 voxel -> RAS+ mm (float64 of the stored numbers);
    ``nifti_qform_code``/``nifti_sform_code``: int; ``nifti_quatern``: float32 (6,) quatern_b,
    c, d, qoffset_x, y, z as stored; ``nifti_pixdim``: float32 (8,) as stored (pixdim[0] = qfac).
    """
    return {
        "nifti_qform": np.asarray(header.get_qform(), dtype=np.float64),
        "nifti_sform": np.asarray(header.get_sform(), dtype=np.float64),
        "nifti_qform_code": int(header["qform_code"]),
        "nifti_sform_code": int(header["sform_code"]),
        "nifti_quatern": np.asarray([header[k] for k in ("quatern_b", "quatern_c", "quatern_d",
                                                         "qoffset_x", "qoffset_y", "qoffset_z")], dtype=np.float32),
        "nifti_pixdim": np.asarray(header["pixdim"], dtype=np.float32).copy(),
    }


def shear(affine) -> float:
    """Largest |cosine| between two voxel axes of a 4x4 affine: 0 for perpendicular axes."""
    axes = np.asarray(affine, dtype=np.float64)[:3, :3]
    unit = axes / np.linalg.norm(axes, axis=0)
    cosines = unit.T @ unit
    return float(np.max(np.abs(cosines - np.diag(np.diag(cosines)))))


def _sheared_message(path: Path, affine) -> str:
    return (f"{path}: the voxel axes are not perpendicular (sheared affine, largest axis cosine "
            f"{shear(affine):.3g}); ITK-based tools cannot represent it and may place the image elsewhere")


def _nifti_orientation_problem(header, path: Path) -> tuple[str | None, list[str]]:
    """("missing" | "sheared" | None, read warnings) of a NIfTI header."""
    if int(header["qform_code"]) == 0 and int(header["sform_code"]) == 0:
        return "missing", [f"{path}: NIfTI header has no orientation (qform_code and sform_code are 0); "
                           "left/right and the position in the scanner are unknown"]
    affine = header.get_best_affine()
    if shear(affine) > _SHEAR_TOLERANCE:
        return "sheared", [_sheared_message(path, affine)]
    if int(header["qform_code"]) > 0 and int(header["sform_code"]) > 0:
        # which one a tool uses differs (nibabel: sform; ITK 5.4: qform unless sform_code is 1)
        difference = float(np.max(np.abs(header.get_qform() - header.get_sform())))
        if difference > 1e-3:
            return None, [f"{path}: NIfTI qform and sform disagree (by up to {difference:.3g} mm); "
                          "the sform is used here, some tools use the qform"]
    return None, []


def _size_text(n_bytes: float) -> str:
    """'2.0 GB', '1.0 kB', '512 bytes' (decimal units)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.1f} {unit}"
    return f"{int(n_bytes)} bytes"


def _declared_text(shape, type_name: str, n_bytes: int) -> str:
    return f"header declares {'x'.join(str(int(n)) for n in shape)} {type_name} ({_size_text(n_bytes)})"


def _check_nifti_size(path: Path, header, gz: bool) -> None:
    """Refuse a header declaring more voxel bytes than the file can hold, before nibabel
    allocates them (it allocates the whole array, then finds the data short)."""
    shape = header.get_data_shape()
    dtype = header.get_data_dtype()
    n_bytes = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
    needed = int(header.get_data_offset()) + n_bytes
    file_size = path.stat().st_size
    declared = _declared_text(shape, dtype.name, n_bytes)
    if not gz:
        if file_size < needed:
            raise CorruptFileError(path, f"{declared} but the file holds {_size_text(file_size)}")
        return
    limit = file_size * _MAX_DEFLATE_RATIO
    if needed > limit:
        raise CorruptFileError(path, f"{declared} but the {_size_text(file_size)} gzip file can hold at most "
                                     f"{_size_text(limit)}")
    # ISIZE (last 4 bytes) = uncompressed size mod 2**32 of the last gzip member: the largest
    # size it allows below the ratio bound. Only a hint (several members are legal), so a short
    # one is confirmed by counting the stream, which holds one 16 MB block at a time.
    with open(path, "rb") as raw:
        raw.seek(max(file_size - 4, 0))
        trailer = raw.read(4)
    if len(trailer) < 4:
        return  # too short to be gzip: the decoder says so
    size_mod = struct.unpack("<I", trailer)[0]
    largest = size_mod + ((limit - size_mod) // 2**32) * 2**32 if limit >= size_mod else size_mod
    if largest >= needed:
        return
    total = 0
    with _gzip.open(path, "rb") as stream:
        while total < needed and (block := stream.read(1 << 24)):
            total += len(block)
    if total < needed:
        raise CorruptFileError(path, f"{declared} but the file decompresses to {_size_text(total)}")


def _raw_data_extent(path: Path) -> tuple[Path, int, str] | None:
    """Where a NRRD / MetaImage file keeps its voxels: (data file, byte offset, "raw" or
    "deflate"); None when it cannot be told simply (file lists, patterns, text encodings).

    Only the few keys ITK does not expose are looked at; sizes and types come from ITK."""
    with open(path, "rb") as stream:
        head = stream.read(1 << 16)
    lines = head.split(b"\n")
    position = 0
    fields: dict[str, str] = {}
    if head.startswith(b"NRRD"):
        for line in lines:
            position += len(line) + 1
            text = line.decode("latin-1").strip()
            if not text:  # a blank line ends a NRRD header; the data follows (if attached)
                break
            if ":" in text and not text.startswith("#"):
                key, _, value = text.partition(":")
                fields[key.strip().lower()] = value.lstrip("=").strip()
        else:
            return None
        encoding = {"raw": "raw", "gzip": "deflate", "gz": "deflate"}.get(fields.get("encoding", "").lower())
        data_file = fields.get("data file", fields.get("datafile"))
        if encoding is None or int(fields.get("line skip", "0") or 0) or int(fields.get("byte skip", "0") or 0):
            return None
        if data_file is None:
            return path, position, encoding
    else:
        for line in lines:
            position += len(line) + 1
            key, _, value = line.decode("latin-1").partition("=")
            fields[key.strip()] = value.strip()
            if key.strip() == "ElementDataFile":  # the last header line of a MetaImage
                break
        else:
            return None
        data_file = fields["ElementDataFile"]
        encoding = "deflate" if fields.get("CompressedData", "").lower() in ("true", "1") else "raw"
        if fields.get("HeaderSize", "0") not in ("", "0"):
            return None
        if data_file == "LOCAL":
            return path, position, encoding
    if not data_file or data_file.upper().startswith("LIST") or "%" in data_file or " " in data_file:
        return None
    return path.parent / data_file, 0, encoding


def _check_declared_size_itk(path: Path) -> None:
    """NRRD / MetaImage: refuse a header declaring more voxel bytes than the data can hold,
    before ITK allocates the image buffer for them."""
    import itk

    try:
        with _itk_warnings_off():
            imageio = itk.ImageIOFactory.CreateImageIO(str(path), itk.CommonEnums.IOFileMode_ReadMode)
            imageio.SetFileName(str(path))
            imageio.ReadImageInformation()
        extent = _raw_data_extent(path)
    except Exception:
        return  # unreadable header: the read itself reports it
    if extent is None:
        return
    data_path, offset, encoding = extent
    if not data_path.is_file():
        return
    n_bytes = int(imageio.GetImageSizeInBytes())
    shape = [imageio.GetDimensions(i) for i in range(imageio.GetNumberOfDimensions())]
    type_name = imageio.GetComponentTypeAsString(imageio.GetComponentType())
    if imageio.GetNumberOfComponents() > 1:
        type_name += f" x{imageio.GetNumberOfComponents()}"
    available = max(data_path.stat().st_size - offset, 0)
    declared = _declared_text(shape, type_name, n_bytes)
    where = "the file" if data_path == path else f"its data file {data_path.name}"
    if encoding == "raw" and available < n_bytes:
        raise CorruptFileError(path, f"{declared} but {where} holds {_size_text(available)}")
    if encoding == "deflate" and available * _MAX_DEFLATE_RATIO < n_bytes:
        raise CorruptFileError(path, f"{declared} but the {_size_text(available)} of compressed data in {where} "
                                     f"can hold at most {_size_text(available * _MAX_DEFLATE_RATIO)}")


def _check_finite(array, path: Path) -> None:
    values = torch.as_tensor(array)
    if not values.is_floating_point():
        return
    # in slabs: torch.isfinite makes a float |x| copy of its input (+1.2 GB and 2 bool masks on
    # a 512x512x1200 float32 volume, the read's peak)
    flat = values.reshape(-1)
    step = 1 << 22
    if all(bool(torch.isfinite(flat[i:i + step]).all()) for i in range(0, flat.numel(), step)):
        return
    n_nan = sum(int(torch.isnan(flat[i:i + step]).sum()) for i in range(0, flat.numel(), step))
    n_inf = sum(int(torch.isinf(flat[i:i + step]).sum()) for i in range(0, flat.numel(), step))
    raise InvalidIntensityError(path, f"{n_nan} NaN and {n_inf} infinite voxel values")


def _select_volume(image: MetaTensor, path: Path, volume_index: int | None) -> tuple[torch.Tensor, np.ndarray]:
    """(X, Y, Z) float32 array and 4x4 affine; one volume taken out of a 4D image."""
    array = image.as_tensor().to(torch.float32)
    affine = np.asarray(image.affine, dtype=np.float64)
    shape = tuple(array.shape)
    if array.ndim < 3 or min(shape[:3]) < 2:
        raise UnsupportedImageError(path, f"is a 2D image (shape {shape}); a 3D scan is needed")
    if array.ndim > 4:
        raise UnsupportedImageError(path, f"has {array.ndim} dimensions (shape {shape}); a 3D scan is needed")
    n_volumes = shape[3] if array.ndim == 4 else 1
    if array.ndim == 4 and n_volumes > 1 and volume_index is None:
        raise UnsupportedImageError(
            path, f"is a 4D image with {n_volumes} volumes (shape {shape}); choose one with volume_index 0..{n_volumes - 1}"
        )
    index = 0 if volume_index is None else int(volume_index)
    if not 0 <= index < n_volumes:
        raise UnsupportedImageError(path, f"has {n_volumes} volume(s); volume_index {volume_index} is out of range")
    if array.ndim == 4:
        array = array[..., index].contiguous()
    return array, affine


def _check_geometry(affine: np.ndarray, itk_spacing, path: Path) -> None:
    """Refuse zero, negative or non-finite spacing. ITK keeps a negative spacing as it is (e.g.
    MetaImage ``ElementSpacing = 1 -2 1``), which would silently flip that axis in the affine."""
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    header_spacing = np.asarray(itk_spacing if itk_spacing is not None else spacing, dtype=np.float64)[:3]
    if (
        not np.all(np.isfinite(affine))
        or not np.all(np.isfinite(header_spacing))
        or np.any(header_spacing <= 0)
        or np.any(spacing <= 0)
        or abs(np.linalg.det(affine[:3, :3])) <= 0
    ):
        raise InvalidGeometryError(path, f"voxel spacing {header_spacing.tolist()} mm is zero, negative or not finite")


def ordered_series_files(case: Case) -> list[Path]:
    """The files of a DICOM series ordered along the slice normal, after checking that they
    form one regular 3D grid (one orientation, one image size and pixel spacing, uniform steps
    of ImagePositionPatient along the normal, no in-plane shift between slices).

    Raises UnsupportedImageError for a single 2D slice, CorruptFileError for a slice whose
    pixel data is short or broken (:func:`check_pixel_data`), InvalidGeometryError otherwise.
    """
    headers = []
    for path in case.paths:
        try:
            # defer_size: the pixel data stays unread, its length and file offset are kept
            header = pydicom.dcmread(path, defer_size=_DEFER_BYTES)
        except Exception as exc:
            raise CorruptFileError(path, f"unreadable DICOM header ({_first_line(exc)})") from None
        check_pixel_data(path, header)
        headers.append((path, header))
    if len(headers) == 1:
        path, header = headers[0]
        if int(header.get("NumberOfFrames", 1) or 1) > 1:
            return [path]  # multi-frame: one file is the whole volume, ITK/GDCM orders its frames
        raise UnsupportedImageError(path, "is a single DICOM slice (2D); a 3D series is needed")

    first_path, first = headers[0]
    for path, header in headers:
        for keyword in ("ImageOrientationPatient", "ImagePositionPatient", "Rows", "Columns"):
            if header.get(keyword) in (None, ""):
                raise InvalidGeometryError(path, f"DICOM slice lacks {keyword}")
    reference_orientation = np.asarray(first.ImageOrientationPatient, dtype=np.float64)
    reference_size = (int(first.Rows), int(first.Columns))
    reference_pixel = np.asarray(first.get("PixelSpacing", [1, 1]), dtype=np.float64)
    for path, header in headers:
        orientation = np.asarray(header.ImageOrientationPatient, dtype=np.float64)
        if orientation.shape != (6,) or not np.allclose(orientation, reference_orientation, atol=_ORIENTATION_TOLERANCE):
            raise InvalidGeometryError(
                path,
                f"ImageOrientationPatient {orientation.tolist()} differs from {reference_orientation.tolist()} "
                f"of {first_path.name}: mixed orientations in one series",
            )
        size = (int(header.Rows), int(header.Columns))
        pixel = np.asarray(header.get("PixelSpacing", [1, 1]), dtype=np.float64)
        if size != reference_size or not np.allclose(pixel, reference_pixel, rtol=1e-4):
            raise InvalidGeometryError(
                path, f"image size {size} / pixel spacing {pixel.tolist()} differ from {first_path.name} in the same series"
            )

    row, column = reference_orientation[:3], reference_orientation[3:]
    normal = np.cross(row, column)
    positions = np.asarray([np.asarray(h.ImagePositionPatient, dtype=np.float64) for _, h in headers])
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    paths = [headers[i][0] for i in order]
    along, positions = along[order], positions[order]
    steps = np.diff(along)

    duplicate = np.flatnonzero(steps < _SAME_POSITION_MM)
    if duplicate.size:
        i = int(duplicate[0])
        raise InvalidGeometryError(
            paths[i + 1], f"lies at the same slice position as {paths[i].name} ({along[i]:.3f} mm along the normal): duplicate slices or two acquisitions in one series"
        )
    usual = float(np.median(steps))
    irregular = np.flatnonzero(np.abs(steps - usual) > _STEP_TOLERANCE * usual)
    if irregular.size:
        i = int(irregular[0])
        raise InvalidGeometryError(
            case.source,
            f"non-uniform slice spacing along the slice normal: {steps[i]:.3f} mm between {paths[i].name} and "
            f"{paths[i + 1].name} where the usual step is {usual:.3f} mm (missing slice?)",
        )
    shifts = np.diff(positions, axis=0) - np.outer(steps, normal)
    if np.max(np.linalg.norm(shifts, axis=1)) > _STEP_TOLERANCE * usual:
        raise InvalidGeometryError(
            case.source, "slices are shifted in-plane from one to the next (gantry tilt or sheared series); not supported"
        )
    return paths


def check_pixel_data(path: Path, header) -> None:
    """Refuse a DICOM file whose PixelData cannot hold its frames.

    ITK/GDCM read a short PixelData without an error, filling the rest from uninitialised memory
    (different garbage on every run). ``header``: read with ``defer_size`` so that native pixel
    data is not loaded: its declared length and file offset are enough. Native transfer syntaxes
    need Rows*Columns*SamplesPerPixel*NumberOfFrames*ceil(BitsAllocated/8) bytes (bits for
    BitsAllocated 1); encapsulated ones must parse into fragments, at least one per frame.
    """
    element = header.get_item("PixelData", keep_deferred=True)
    if element is None:
        raise CorruptFileError(path, "has no readable PixelData (file cut short or damaged?)")
    try:
        rows, columns = int(header.Rows), int(header.Columns)
        samples = int(header.get("SamplesPerPixel", 1) or 1)
        bits = int(header.BitsAllocated)
        frames = int(header.get("NumberOfFrames", 1) or 1)
    except Exception as exc:
        raise CorruptFileError(path, f"image pixel attributes missing or invalid ({_first_line(exc)})") from None
    syntax = header.file_meta.get("TransferSyntaxUID") if hasattr(header, "file_meta") else None
    if syntax is not None and pydicom.uid.UID(syntax).is_encapsulated:
        _check_encapsulated(path, header, frames)
        return
    n_values = rows * columns * samples * frames
    needed = (n_values + 7) // 8 if bits == 1 else n_values * math.ceil(bits / 8)
    length = getattr(element, "length", None)
    if length is None:  # already a decoded DataElement (small enough to be read)
        length = len(element.value or b"")
    if length == 0xFFFFFFFF:
        raise CorruptFileError(path, f"PixelData is encapsulated but the transfer syntax {syntax} is native")
    available = length
    value_tell = getattr(element, "value_tell", None)
    if value_tell is not None and syntax != pydicom.uid.DeflatedExplicitVRLittleEndian:
        # a file cut short keeps its declared length; what is really there ends with the file
        available = min(length, max(path.stat().st_size - int(value_tell), 0))
    if available < needed:
        layout = f"{columns}x{rows}" + (f"x{samples} samples" if samples > 1 else "") + f"x{bits}-bit"
        layout += f" x {frames} frames" if frames > 1 else ""
        raise CorruptFileError(path, f"PixelData has {available} bytes, {layout} needs {needed} (truncated or damaged file)")


def _check_encapsulated(path: Path, header, frames: int) -> None:
    """Encapsulated (compressed) PixelData: the fragment items parse, end inside the data, and
    there are enough of them (and offset table entries) for NumberOfFrames."""
    from pydicom import encaps

    try:
        value = header.PixelData  # loads the deferred value (compressed, so small)
        buffer = io.BytesIO(value)
        offsets = encaps.parse_basic_offsets(buffer)
        n_fragments, positions = encaps.parse_fragments(buffer)
        if n_fragments:
            buffer.seek(positions[-1] + 4)
            last_length = struct.unpack("<I", buffer.read(4))[0]
            if positions[-1] + 8 + last_length > len(value):
                raise ValueError(f"the last fragment declares {last_length} bytes but the data ends "
                                 f"{len(value) - positions[-1] - 8} bytes after its start")
    except Exception as exc:
        raise CorruptFileError(path, f"encapsulated PixelData does not parse ({_first_line(exc)})") from None
    if n_fragments < frames or (offsets and len(offsets) != frames):
        raise CorruptFileError(path, f"encapsulated PixelData has {n_fragments} fragment(s) and {len(offsets)} "
                                     f"offset table entries for NumberOfFrames {frames}")
