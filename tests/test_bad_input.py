"""Bad input gives ONE clear error from muscle_pipeline.errors naming the file, never a
traceback from inside ITK. Every broken file is made here from a real scan."""
from __future__ import annotations

import gzip
import io
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from muscle_pipeline.errors import (
    CorruptFileError,
    InvalidGeometryError,
    InvalidIntensityError,
    MusclePipelineError,
    NoCasesFoundError,
    UnsupportedImageError,
)
from muscle_pipeline.io import discover, read_image

DICOM_SERIES = "totalsegmentator/ct_dicom_upper_abdomen/example_ct_dicom"
MR = "totalsegmentator/mr_upper_abdomen/example_mr_sm.nii.gz"  # 117x91x20, int16
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"


def _expect(error_type, path: Path, case_or_path=None, **kwargs) -> MusclePipelineError:
    """read_image raises ``error_type`` naming ``path``, without a chained library traceback."""
    with pytest.raises(error_type) as raised:
        read_image(path if case_or_path is None else case_or_path, **kwargs)
    error = raised.value
    assert error.path == path
    assert str(path) in str(error)
    # No chained library traceback ("During handling of the above exception ...").
    assert error.__cause__ is None and (error.__context__ is None or error.__suppress_context__)
    return error


@pytest.fixture(scope="module")
def mr(shared_data):
    """(voxels as float32, affine) of a real MR scan, the raw material for broken NIfTI files."""
    image = nib.load(shared_data / MR)
    return np.asanyarray(image.dataobj).astype(np.float32), image.affine


def _save(array, affine, path: Path) -> Path:
    nib.save(nib.Nifti1Image(array, affine), path)
    return path


def _sorted_series(folder: Path) -> list[Path]:
    """Series files ordered by slice position (z of ImagePositionPatient; axial series)."""
    return sorted(folder.iterdir(), key=lambda p: float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]))


@pytest.fixture
def series_copy(shared_data, tmp_path) -> Path:
    return Path(shutil.copytree(shared_data / DICOM_SERIES, tmp_path / "series"))


# --- damaged files ------------------------------------------------------------------------------
def test_truncated_gzip(shared_data, tmp_path):
    data = (shared_data / MR).read_bytes()
    path = tmp_path / "truncated.nii.gz"
    path.write_bytes(data[: len(data) // 2])
    error = _expect(CorruptFileError, path)
    assert "truncated" in str(error)


def test_corrupt_gzip(shared_data, tmp_path):
    data = bytearray((shared_data / MR).read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(b ^ 0xFF for b in data[middle : middle + 64])
    path = tmp_path / "corrupt.nii.gz"
    path.write_bytes(bytes(data))
    _expect(CorruptFileError, path)


def test_truncated_uncompressed_nifti(shared_data, tmp_path):
    raw = gzip.decompress((shared_data / MR).read_bytes())
    path = tmp_path / "truncated.nii"
    path.write_bytes(raw[: len(raw) - 5000])
    _expect(CorruptFileError, path)


def test_text_file_named_like_nifti(tmp_path):
    path = tmp_path / "notes.nii.gz"
    path.write_text("this is not an image")
    _expect(CorruptFileError, path)


def test_truncated_metaimage(shared_data, tmp_path):
    path = tmp_path / "mr.mha"
    sitk.WriteImage(sitk.ReadImage(str(shared_data / MR)), str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 3000])
    _expect(CorruptFileError, path)


# --- not a 3D scan ------------------------------------------------------------------------------
def test_2d_image(mr, tmp_path):
    voxels, affine = mr
    _expect(UnsupportedImageError, _save(voxels[:, :, 10], affine, tmp_path / "slice.nii.gz"))
    _expect(UnsupportedImageError, _save(voxels[:, :, 10:11], affine, tmp_path / "one_slice.nii.gz"))


def test_4d_image_needs_a_volume_index(mr, tmp_path):
    voxels, affine = mr
    path = _save(np.stack([voxels, 2 * voxels, voxels + 5], axis=-1), affine, tmp_path / "series4d.nii.gz")
    error = _expect(UnsupportedImageError, path)
    assert "3 volumes" in str(error) and "volume_index" in str(error)
    _expect(UnsupportedImageError, path, volume_index=3)

    second = read_image(path, volume_index=1)
    assert tuple(second.shape) == voxels.shape
    np.testing.assert_array_equal(second.numpy(), 2 * voxels)
    np.testing.assert_allclose(np.asarray(second.affine), affine, atol=1e-4)
    assert tuple(second.meta["spatial_shape"]) == voxels.shape


def test_volume_index_on_a_3d_image(shared_data):
    assert tuple(read_image(shared_data / MR, volume_index=0).shape) == (117, 91, 20)
    _expect(UnsupportedImageError, shared_data / MR, volume_index=1)


# --- voxel values -------------------------------------------------------------------------------
@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf])
def test_non_finite_voxels(mr, tmp_path, bad_value):
    voxels, affine = mr
    voxels = voxels.copy()
    voxels[50, 40, 10] = bad_value  # ITK's NIfTI reader would silently turn a NaN into 0
    error = _expect(InvalidIntensityError, _save(voxels, affine, tmp_path / "bad_value.nii.gz"))
    assert ("1 NaN" if np.isnan(bad_value) else "1 infinite") in str(error)


def test_nan_in_nrrd(mr, tmp_path):
    voxels, _ = mr
    voxels = voxels.copy()
    voxels[1, 2, 3] = np.nan
    path = tmp_path / "nan.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(voxels.transpose(2, 1, 0)), str(path))
    _expect(InvalidIntensityError, path)


# --- geometry -----------------------------------------------------------------------------------
@pytest.mark.parametrize("spacing", [0.0, -3.0])
def test_zero_or_negative_spacing(mr, tmp_path, spacing):
    """The header's pixdim for y is set to 0 / -3 (nibabel would 'fix' it when saving an image
    object, so the header block itself is edited; ITK would read 1 / 3 instead)."""
    voxels, affine = mr
    image = nib.Nifti1Image(voxels, affine)
    image.set_sform(None, code=0)  # qform + pixdim define the grid
    buffer = io.BytesIO()
    image.to_file_map({"image": nib.FileHolder(fileobj=buffer)})
    raw = buffer.getvalue()
    header = nib.Nifti1Header.from_fileobj(io.BytesIO(raw), check=False)
    header["pixdim"][2] = spacing
    path = tmp_path / "bad_spacing.nii.gz"
    path.write_bytes(gzip.compress(header.binaryblock + raw[len(header.binaryblock) :]))
    error = _expect(InvalidGeometryError, path)
    assert "spacing" in str(error)


def test_zero_spacing_metaimage(mr, tmp_path):
    voxels, _ = mr
    path = tmp_path / "flat.mha"
    image = sitk.GetImageFromArray(voxels.transpose(2, 1, 0))
    image.SetSpacing((1.5, 2.0, 3.0))
    sitk.WriteImage(image, str(path))
    path.write_bytes(path.read_bytes().replace(b"ElementSpacing = 1.5 2 3", b"ElementSpacing = 1.5 0 3", 1))
    _expect(InvalidGeometryError, path)


def test_dicom_series_with_a_missing_slice(series_copy):
    files = _sorted_series(series_copy)
    files[10].unlink()
    error = _expect(InvalidGeometryError, series_copy)
    assert "missing slice" in str(error)
    assert files[9].name in str(error) and files[11].name in str(error)  # the files around the gap


def test_dicom_series_with_mixed_orientation(series_copy):
    changed = _sorted_series(series_copy)[7]
    dataset = pydicom.dcmread(changed)
    angle = np.deg2rad(10)
    dataset.ImageOrientationPatient = [np.cos(angle), np.sin(angle), 0.0, -np.sin(angle), np.cos(angle), 0.0]
    dataset.save_as(changed)
    (case,) = discover(series_copy)  # still one series (same SeriesInstanceUID), refused on reading
    error = _expect(InvalidGeometryError, changed, case)
    assert "mixed orientations" in str(error)


def test_dicom_series_with_a_duplicate_slice(series_copy):
    original = _sorted_series(series_copy)[5]
    dataset = pydicom.dcmread(original)
    dataset.SOPInstanceUID = pydicom.uid.generate_uid()
    duplicate = series_copy / "duplicate.dcm"
    dataset.save_as(duplicate)
    error = _expect(InvalidGeometryError, max(original, duplicate, key=lambda p: p.name), series_copy)
    assert "same slice position" in str(error)


def test_single_dicom_slice(series_copy):
    single = _sorted_series(series_copy)[0]
    _expect(UnsupportedImageError, single)


# --- nothing to read ----------------------------------------------------------------------------
def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    _expect(NoCasesFoundError, tmp_path / "empty")


def test_folder_of_non_images(shared_data, tmp_path):
    folder = tmp_path / "documents"
    folder.mkdir()
    (folder / "readme.txt").write_text("scan notes")
    shutil.copy(shared_data / "totalsegmentator/labels_total.json", folder)
    report = pydicom.dcmread(next(iter(sorted((shared_data / DICOM_SERIES).iterdir()))))
    del report.PixelData
    report.SOPClassUID = report.file_meta.MediaStorageSOPClassUID = BASIC_TEXT_SR
    report.save_as(folder / "report.dcm")
    error = _expect(NoCasesFoundError, folder)
    assert "3 file(s) skipped" in str(error)


def test_text_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("not an image")
    error = _expect(NoCasesFoundError, path)
    assert "not an image file" in str(error)


def test_missing_path(tmp_path):
    _expect(NoCasesFoundError, tmp_path / "nowhere.nii.gz")
