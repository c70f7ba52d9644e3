"""Red-team findings of issue 16 on reading and writing: short DICOM pixel data, sheared or
missing NIfTI orientation, headers declaring far more voxels than the file holds, and DICOM-SEG
identifiers of anonymised series. Every input is a small file made here (DICOM slices reuse the
real CT series' headers, with slices of the real MR scan as native pixel data)."""
from __future__ import annotations

import gzip
import json
import time
import tracemalloc
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import torch
from monai.data import MetaTensor
from pydicom.uid import UID

from muscle_pipeline.cli import main
from muscle_pipeline.errors import CorruptFileError
from muscle_pipeline.io import read_image, write_label_map

DICOM_SERIES = "totalsegmentator/ct_dicom_upper_abdomen/example_ct_dicom"
MR = "totalsegmentator/mr_upper_abdomen/example_mr_sm.nii.gz"  # 117x91x20, int16
N_SLICES = 6
SLICE_BYTES = 117 * 91 * 2  # Columns x Rows x 16-bit


@pytest.fixture(scope="module")
def ct_headers(shared_data) -> list[pydicom.Dataset]:
    """The first N_SLICES slices (along z) of the real CT series, as pydicom datasets."""
    datasets = [pydicom.dcmread(p) for p in sorted((shared_data / DICOM_SERIES).iterdir())]
    return sorted(datasets, key=lambda ds: float(ds.ImagePositionPatient[2]))[:N_SLICES]


@pytest.fixture(scope="module")
def mr_voxels(shared_data) -> np.ndarray:
    return np.asanyarray(nib.load(shared_data / MR).dataobj)  # (117, 91, 20) int16


def _small_series(ct_headers, mr_voxels, folder: Path, patient: str = "", offset: int = 0) -> list[Path]:
    """A native (Explicit VR Little Endian) series: the real CT headers carrying MR slices
    ``offset``.. (117 columns x 91 rows, int16) as pixel data. Returns the files along z."""
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for k, source in enumerate(ct_headers):
        dataset = source.copy()
        dataset.set_pixel_data(np.ascontiguousarray(mr_voxels[:, :, offset + k].T), "MONOCHROME2", 16)
        if patient:
            dataset.PatientID, dataset.PatientName = patient, f"{patient}^"
        path = folder / f"slice{k:02d}.dcm"
        dataset.save_as(path)
        files.append(path)
    return files


def _expect_corrupt(path_or_case, named: Path) -> CorruptFileError:
    with pytest.raises(CorruptFileError) as raised:
        read_image(path_or_case)
    assert raised.value.path == named and str(named) in str(raised.value)
    return raised.value


# --- 1. DICOM pixel data shorter than the image ------------------------------------------------
def test_short_pixel_data_is_refused_naming_the_slice(ct_headers, mr_voxels, tmp_path):
    """ITK/GDCM read this series without an error, the missing bytes from uninitialised memory."""
    files = _small_series(ct_headers, mr_voxels, tmp_path / "series")
    damaged = pydicom.dcmread(files[2])
    damaged.PixelData = damaged.PixelData[:1000]
    damaged.save_as(files[2])
    error = _expect_corrupt(tmp_path / "series", files[2])
    assert f"PixelData has 1000 bytes, 117x91x16-bit needs {SLICE_BYTES}" in str(error)


def test_file_cut_inside_its_pixel_data_is_refused(ct_headers, mr_voxels, tmp_path):
    files = _small_series(ct_headers, mr_voxels, tmp_path / "series")
    data = files[4].read_bytes()
    files[4].write_bytes(data[:-5000])  # the element still declares its full length
    error = _expect_corrupt(tmp_path / "series", files[4])
    assert f"PixelData has {SLICE_BYTES - 5000} bytes" in str(error)


def test_jpeg2000_slice_with_a_broken_fragment_is_refused(shared_data, tmp_path):
    """The first fragment's item length is made larger than the data: the frame cannot be
    found, whatever a decoder would make of it."""
    folder = tmp_path / "series"
    folder.mkdir()
    sources = sorted((shared_data / DICOM_SERIES).iterdir())
    for source in sources:
        (folder / source.name).write_bytes(source.read_bytes())
    damaged = folder / sources[7].name
    data = bytearray(damaged.read_bytes())
    pixel_data = data.rindex(b"\xe0\x7f\x10\x00OB")  # (7FE0,0010) OB, explicit VR little endian
    bot_length = int.from_bytes(data[pixel_data + 16 : pixel_data + 20], "little")
    fragment = pixel_data + 20 + bot_length
    assert data[fragment : fragment + 4] == b"\xfe\xff\x00\xe0"  # item tag
    data[fragment + 4 : fragment + 8] = (0x7FFFFFF0).to_bytes(4, "little")
    damaged.write_bytes(bytes(data))
    error = _expect_corrupt(folder, damaged)
    assert "encapsulated PixelData does not parse" in str(error)


def test_info_names_the_short_slice(ct_headers, mr_voxels, tmp_path, capsys):
    files = _small_series(ct_headers, mr_voxels, tmp_path / "series")
    damaged = pydicom.dcmread(files[1])
    damaged.PixelData = damaged.PixelData[:1000]
    damaged.save_as(files[1])
    assert main(["info", str(tmp_path / "series")]) != 0
    out, err = capsys.readouterr()
    assert out == ""
    assert str(files[1]) in err and "PixelData has 1000 bytes" in err


# --- 2. NIfTI orientation ---------------------------------------------------------------------
def _nifti(path: Path, qform, qform_code: int, sform, sform_code: int, shape=(8, 9, 10)) -> Path:
    """A small int16 NIfTI whose header holds exactly the given qform/sform and codes (None:
    that form is left unset; the voxel size is 2 x 2 x 3 mm unless a qform says otherwise)."""
    voxels = np.arange(np.prod(shape), dtype=np.int16).reshape(shape)
    header = nib.Nifti1Header()
    header.set_data_dtype(np.int16)
    header.set_data_shape(shape)
    header.set_zooms((2.0, 2.0, 3.0))
    if qform is not None:
        header.set_qform(qform, code=qform_code)
    if sform is not None:
        header.set_sform(sform, code=sform_code)
    header["qform_code"], header["sform_code"] = qform_code, sform_code
    nib.save(nib.Nifti1Image(voxels, None, header=header), path)  # no affine: nibabel keeps the header
    stored = nib.load(path).header
    assert (int(stored["qform_code"]), int(stored["sform_code"])) == (qform_code, sform_code)
    return path


def _oblique() -> np.ndarray:
    """2 x 2 x 3 mm voxels rotated 20 degrees about an oblique axis (orthogonal: a qform holds it)."""
    axis = np.array([1.0, 2.0, 3.0]) / np.linalg.norm([1.0, 2.0, 3.0])
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    angle = np.deg2rad(20)
    rotation = np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([2.0, 2.0, 3.0])
    affine[:3, 3] = (-80.0, 40.0, 12.0)
    return affine


OBLIQUE = _oblique()
OBLIQUE_SHIFTED = OBLIQUE + np.pad(np.array([[6.0], [0.0], [0.0]]), ((0, 1), (3, 0)))  # 6 mm along x
SHEARED = np.array([[2.0, 0.8, 0.0, 10.0], [0.0, 2.0, 0.0, -5.0], [0.0, 0.0, 3.0, 7.0], [0, 0, 0, 1]])


def _orthogonalised(affine):
    """The nearest rotation times the column lengths: an affine a qform can hold."""
    u, _, vt = np.linalg.svd(affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0))
    result = affine.copy()
    result[:3, :3] = (u @ vt) * np.linalg.norm(affine[:3, :3], axis=0)
    return result


def test_missing_orientation_is_reported(tmp_path):
    path = _nifti(tmp_path / "no_orientation.nii.gz", None, 0, None, 0)
    image = read_image(path)
    assert image.meta["orientation_problem"] == "missing"
    (warning,) = image.meta["read_warnings"]
    assert str(path) in warning and "\n" not in warning


def test_sheared_affine_is_reported(tmp_path):
    path = _nifti(tmp_path / "sheared.nii.gz", _orthogonalised(SHEARED), 1, SHEARED, 1)
    image = read_image(path)
    np.testing.assert_allclose(np.asarray(image.affine), SHEARED, atol=1e-5)  # nibabel: the sform
    assert image.meta["orientation_problem"] == "sheared"
    (warning,) = image.meta["read_warnings"]
    assert str(path) in warning and "sheared" in warning


def test_every_format_has_the_orientation_keys(ct_headers, mr_voxels, tmp_path):
    nifti = _nifti(tmp_path / "oblique.nii.gz", OBLIQUE, 1, OBLIQUE, 1)
    nrrd = tmp_path / "image.nrrd"
    sitk.WriteImage(sitk.ReadImage(str(nifti)), str(nrrd))
    _small_series(ct_headers, mr_voxels, tmp_path / "series")
    for source in (nifti, nrrd, tmp_path / "series"):
        image = read_image(source)
        assert image.meta["orientation_problem"] is None, source
        assert image.meta["read_warnings"] == [], source


def _world(affine, ijk) -> np.ndarray:
    return (np.asarray(affine, dtype=np.float64) @ np.append(np.asarray(ijk, dtype=np.float64), 1.0))[:3]


def _sitk_world(path: Path, ijk) -> np.ndarray:
    """World point (RAS mm) of voxel ``ijk`` as ITK places it."""
    image = sitk.ReadImage(str(path))
    lps = np.asarray(image.TransformIndexToPhysicalPoint(tuple(int(v) for v in ijk)))
    return lps * [-1, -1, 1]


# (qform, qform_code, sform, sform_code, does ITK read the input)
HEADERS = {
    # nibabel uses the sform, ITK 5.4 the qform (sform_code 2): the label map must keep both
    "qform_and_sform_differ": (OBLIQUE, 1, OBLIQUE_SHIFTED, 2, True),
    "qform_only": (OBLIQUE, 1, None, 0, True),
    "sform_only": (None, 0, OBLIQUE, 1, True),
    "no_orientation": (None, 0, None, 0, True),
    "sheared_sform_with_qform": (_orthogonalised(SHEARED), 1, SHEARED, 1, True),
    "sheared_sform_only": (None, 0, SHEARED, 1, False),  # ITK refuses it: no orthonormal definition
}


@pytest.mark.parametrize("name", sorted(HEADERS))
def test_label_map_lands_where_each_tool_places_the_input(tmp_path, name):
    qform, qform_code, sform, sform_code, itk_reads = HEADERS[name]
    source = _nifti(tmp_path / "input.nii.gz", qform, qform_code, sform, sform_code)
    image = read_image(source)
    labels = np.zeros(image.shape, dtype=np.uint8)
    voxel = (6, 2, 7)
    labels[voxel] = 5
    written = write_label_map(labels, image, tmp_path / "labels.nii.gz")

    (found,) = np.argwhere(np.asarray(nib.load(written).dataobj) == 5)
    assert tuple(found) == voxel
    np.testing.assert_allclose(_world(nib.load(written).affine, found), _world(nib.load(source).affine, voxel), atol=1e-4)
    back = read_image(written)
    np.testing.assert_allclose(np.asarray(back.affine), np.asarray(image.affine), atol=1e-4)
    if itk_reads:
        (itk_found,) = np.argwhere(sitk.GetArrayFromImage(sitk.ReadImage(str(written))).T == 5)
        np.testing.assert_allclose(_sitk_world(written, itk_found), _sitk_world(source, voxel), atol=1e-3)
    header = nib.load(written).header
    if int(header["qform_code"]) and int(header["sform_code"]) and name not in ("qform_and_sform_differ", "sheared_sform_with_qform"):
        np.testing.assert_allclose(header.get_qform(), header.get_sform(), atol=1e-4)


def test_sheared_affine_of_another_format_gets_no_qform(tmp_path):
    """A reference that did not come from a NIfTI file: the sform holds the affine, and a qform
    (which cannot hold a shear) is not written rather than written wrong."""
    reference = MetaTensor(torch.zeros(8, 9, 10), affine=torch.as_tensor(SHEARED))
    written = write_label_map(np.ones((8, 9, 10), np.uint8), reference, tmp_path / "labels.nii.gz")
    header = nib.load(written).header
    assert int(header["qform_code"]) == 0 and int(header["sform_code"]) == 1
    np.testing.assert_allclose(header.get_sform(), SHEARED, atol=1e-5)

    oblique = MetaTensor(torch.zeros(8, 9, 10), affine=torch.as_tensor(OBLIQUE))
    header = nib.load(write_label_map(np.ones((8, 9, 10), np.uint8), oblique, tmp_path / "o.nii.gz")).header
    assert int(header["qform_code"]) == 1
    np.testing.assert_allclose(header.get_qform(), header.get_sform(), atol=1e-4)


# --- 3. headers declaring far more voxels than the file holds --------------------------------
HUGE = (1000, 1000, 500)  # float32: 2.0 GB


def _huge_nifti_bytes() -> bytes:
    """A NIfTI-1 header declaring 1000x1000x500 float32, then 700 bytes of voxels (~1 kB)."""
    header = nib.Nifti1Header()
    header.set_data_dtype(np.float32)
    header.set_data_shape(HUGE)
    header.set_sform(np.eye(4), code=1)
    header.set_data_offset(352)
    return header.binaryblock + b"\0" * 4 + np.zeros(175, np.float32).tobytes()


def _refused_fast_and_small(path: Path) -> CorruptFileError:
    """read_image refuses ``path`` within 10 s, allocating under 50 MB (Python-level, measured
    with tracemalloc: numpy and nibabel buffers are counted)."""
    tracemalloc.start()
    start = time.perf_counter()
    try:
        error = _expect_corrupt(path, path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - start < 10
    assert peak < 50e6, f"peak {peak / 1e6:.0f} MB"
    return error


def test_huge_header_in_a_small_nifti_is_refused_before_allocating(tmp_path):
    path = tmp_path / "huge.nii"
    path.write_bytes(_huge_nifti_bytes())
    error = _refused_fast_and_small(path)
    assert "header declares 1000x1000x500 float32 (2.0 GB) but the file holds 1.1 kB" in str(error)


def test_huge_header_in_a_small_gzip_nifti_is_refused_before_allocating(tmp_path):
    path = tmp_path / "huge.nii.gz"
    path.write_bytes(gzip.compress(_huge_nifti_bytes()))
    error = _refused_fast_and_small(path)
    assert "header declares 1000x1000x500 float32 (2.0 GB) but the" in str(error)
    assert "gzip file can hold at most" in str(error)


def test_gzip_nifti_shorter_than_declared_is_refused_from_its_length(tmp_path):
    """Within the compression bound (random voxels do not compress), so the gzip trailer's
    length and then the stream itself show that 8 MB are declared but 100 kB are there."""
    header = nib.Nifti1Header()
    header.set_data_dtype(np.int16)
    header.set_data_shape((200, 200, 100))
    header.set_sform(np.eye(4), code=1)
    header.set_data_offset(352)
    voxels = np.random.default_rng(0).integers(-1000, 1000, 50_000, dtype=np.int16).tobytes()
    path = tmp_path / "short.nii.gz"
    path.write_bytes(gzip.compress(header.binaryblock + b"\0" * 4 + voxels))
    error = _refused_fast_and_small(path)
    assert "header declares 200x200x100 int16 (8.0 MB) but the file decompresses to 100.4 kB" in str(error)


def _huge_metaimage(path: Path) -> Path:
    path.write_bytes(
        b"ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\nCompressedData = False\n"
        b"TransformMatrix = 1 0 0 0 1 0 0 0 1\nOffset = 0 0 0\nElementSpacing = 1 1 1\nDimSize = 1000 1000 500\n"
        b"ElementType = MET_FLOAT\nElementDataFile = LOCAL\n" + b"\0" * 700
    )
    return path


def _huge_nrrd(path: Path, encoding: str = "raw") -> Path:
    data = b"\0" * 700 if encoding == "raw" else gzip.compress(b"\0" * 700)
    path.write_bytes(
        b"NRRD0004\ntype: float\ndimension: 3\nspace: left-posterior-superior\nsizes: 1000 1000 500\n"
        b"space directions: (1,0,0) (0,1,0) (0,0,1)\nkinds: domain domain domain\nendian: little\n"
        + f"encoding: {encoding}\n".encode() + b"space origin: (0,0,0)\n\n" + data
    )
    return path


@pytest.mark.parametrize("make, name, holds", [
    (_huge_metaimage, "huge.mha", "but the file holds 700 bytes"),
    (_huge_nrrd, "huge.nrrd", "but the file holds 700 bytes"),
    (lambda path: _huge_nrrd(path, "gzip"), "huge_gzip.nrrd", "of compressed data in the file can hold at most"),
])
def test_huge_header_in_a_small_nrrd_or_metaimage_is_refused(tmp_path, make, name, holds):
    """ITK would allocate the 2 GB image buffer first (outside Python: checked by time only)."""
    path = make(tmp_path / name)
    start = time.perf_counter()
    error = _expect_corrupt(path, path)
    assert time.perf_counter() - start < 10
    assert "header declares 1000x1000x500 float (2.0 GB)" in str(error) and holds in str(error)


def test_detached_metaimage_data_file_shorter_than_declared(tmp_path):
    path = tmp_path / "scan.mhd"
    image = sitk.GetImageFromArray(np.zeros((10, 20, 30), np.int16))
    sitk.WriteImage(image, str(path))
    raw = tmp_path / "scan.raw"
    raw.write_bytes(raw.read_bytes()[:5000])
    error = _expect_corrupt(path, path)
    assert "header declares 30x20x10 short (12.0 kB) but its data file scan.raw holds 5.0 kB" in str(error)


# --- 4. DICOM-SEG identifiers of anonymised series ---------------------------------------------
def test_dicom_seg_of_anonymised_series_has_valid_distinct_uids(ct_headers, mr_voxels, tmp_path):
    """Two patients' series whose Study/SeriesInstanceUID were blanked by an anonymiser (the
    real CT headers already have them empty)."""
    import highdicom as hd

    from muscle_pipeline import labels as ontology
    from muscle_pipeline.io.dicom_seg import write_dicom_seg

    value = ontology.value_of("gluteus_maximus_left")
    segs, sources = [], []
    for patient, offset in (("patient_a", 0), ("patient_b", 10)):
        files = _small_series(ct_headers, mr_voxels, tmp_path / patient, patient=patient, offset=offset)
        for path in files:
            dataset = pydicom.dcmread(path)
            dataset.SeriesInstanceUID = dataset.StudyInstanceUID = ""
            dataset.save_as(path)
        image = read_image(tmp_path / patient)
        labels = np.zeros(image.shape, np.uint8)
        labels[30:60, 20:50, 1:4] = value
        notes: list[str] = []
        out = write_dicom_seg(labels.copy(), np.asarray(image.affine), files, tmp_path / f"{patient}.dcm", notes=notes)
        assert notes and "SeriesInstanceUID" in notes[0] and "StudyInstanceUID" in notes[0]
        seg = hd.seg.segread(str(out))  # reads back with highdicom
        pixels = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=[pydicom.dcmread(f).SOPInstanceUID for f in files], segment_numbers=[1],
            assert_missing_frames_are_empty=True)
        np.testing.assert_array_equal(pixels[..., 0], np.moveaxis(labels == value, 2, 0).transpose(0, 2, 1))
        segs.append(seg)
        sources.append(pydicom.dcmread(files[0]))

    for seg, source in zip(segs, sources):
        uids = {
            "study": seg.StudyInstanceUID,
            "seg series": seg.SeriesInstanceUID,
            "seg instance": seg.SOPInstanceUID,
            "referenced series": seg.ReferencedSeriesSequence[0].SeriesInstanceUID,
            "frame of reference": seg.FrameOfReferenceUID,
        }
        for name, uid in uids.items():
            assert uid and UID(uid).is_valid, (name, uid)
        assert uids["seg series"] != uids["referenced series"]
        referenced_instances = {item.ReferencedSOPInstanceUID for item in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
        assert source.SOPInstanceUID in referenced_instances  # present UIDs are referenced as they are
    a, b = segs
    assert a.StudyInstanceUID != b.StudyInstanceUID
    assert a.ReferencedSeriesSequence[0].SeriesInstanceUID != b.ReferencedSeriesSequence[0].SeriesInstanceUID
    assert a.SeriesInstanceUID != b.SeriesInstanceUID and a.SOPInstanceUID != b.SOPInstanceUID


def test_info_lists_the_orientation_problem(tmp_path, capsys):
    _nifti(tmp_path / "no_orientation.nii.gz", None, 0, None, 0)
    assert main(["info", str(tmp_path)]) == 0
    (line,) = [json.loads(text) for text in capsys.readouterr().out.splitlines()]
    assert line["orientation_problem"] == "missing"
    assert len(line["read_warnings"]) == 1 and "no_orientation.nii.gz" in line["read_warnings"][0]
