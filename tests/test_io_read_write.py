"""Reading the real scans of shared/data and writing label maps on their grids.

Expected shapes, spacings and orientations are copied from shared/data/SOURCES.md (where it
states them); the ITK-read affine is also checked against nibabel's reading of the header, an
independent implementation.
"""
from __future__ import annotations

import json
from pathlib import Path

import highdicom
import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import torch
from monai.transforms import EnsureChannelFirst
from pydicom.uid import generate_uid

from muscle_pipeline.io import discover, orientation_code, read_image, voxel_spacing, write_label_map

DICOM_SERIES = "totalsegmentator/ct_dicom_upper_abdomen/example_ct_dicom"

# relative path -> (shape, spacing mm, orientation or None where SOURCES.md does not state it).
# "Same grid as" statements in SOURCES.md are written out.
EXPECTED_NIFTI = {
    "totalsegmentator/ct_abdomen_pelvis/example_ct.nii.gz": ((122, 101, 112), (3.0, 3.0, 3.0), "RAS"),
    "totalsegmentator/ct_abdomen_pelvis/example_seg_fast_force_split.nii.gz": ((122, 101, 112), (3.0, 3.0, 3.0), "RAS"),
    "totalsegmentator/ct_dicom_upper_abdomen/example_seg_dicom.nii.gz": ((512, 512, 20), (0.977, 0.977, 2.0), "LAS"),
    "totalsegmentator/mr_upper_abdomen/example_mr_sm.nii.gz": ((117, 91, 20), (3.0, 3.0, 3.0), "LPS"),
    "totalsegmentator/mr_upper_abdomen/example_seg_mr.nii.gz": ((117, 91, 20), (3.0, 3.0, 3.0), "LPS"),
    "qmritools/calf_dti_labeled_half/twoLegs_x80-160.nii.gz": ((80, 160, 25), (3.0, 3.0, 6.0), "RAS"),
    "qmritools/calf_dti_labeled_half/labels_x80-160.nii.gz": ((80, 160, 25), (3.0, 3.0, 6.0), "RAS"),
    "qmritools/thigh_calf_unlabeled/test_up.nii.gz": ((320, 320, 31), (1.5, 1.5, 6.0), "RAS"),
    "qmritools/thigh_calf_unlabeled/test_low.nii.gz": ((320, 320, 31), (1.5, 1.5, 6.0), None),
    "qmritools/thigh_calf_unlabeled/dixon_water.nii.gz": ((320, 320, 23), (1.5, 1.5, 6.0), None),
    "qmritools/thigh_calf_unlabeled/dixon_fat.nii.gz": ((320, 320, 23), (1.5, 1.5, 6.0), None),
    **{
        f"qmritools/wholeleg_stations_unlabeled/Join_{i}.nii.gz": ((320, 320, 31), (1.5, 1.5, 6.0), None)
        for i in range(1, 8)
    },
    "swastling_musclemap/thigh_dixon_unlabeled/0006-Dixon_TE_345_th.nii.gz": ((512, 256, 10), (0.80, 0.80, 20.0), "RAS"),
    "swastling_musclemap/calf_dixon3d_unlabeled/0026-dix3d_TR23_448m_fa05_345.nii.gz": ((448, 210, 96), (0.915, 0.915, 5.0), "RAS"),
    "musclemap/lumbar_mr_labeled/image.nii.gz": ((256, 208, 20), (0.938, 0.938, 4.4), "LPS"),
    "musclemap/lumbar_mr_labeled/image_dseg.nii.gz": ((256, 208, 20), (0.938, 0.938, 4.4), "LPS"),
}
# The atlas's label maps (SOURCES.md section 5) are training labels, not scans; their geometry and
# sides are checked in test_atlas.py, so here they are only accounted for.
ATLAS_LABEL_MAPS = {f"visible_human_lower_limb/VH{s}_{side}_labels_1mm.nii.gz" for s in "FM" for side in ("Left", "Right")}
# SOURCES.md gives spacings to 2-3 decimals (0.977, 0.915, 0.938, 0.80).
SPACING_TOLERANCE_MM = 0.002


@pytest.fixture(scope="module")
def dicom_image(shared_data):
    """The JPEG 2000 CT series, read once for the whole module (ITK's first read is slow)."""
    cases = discover(shared_data / DICOM_SERIES)
    assert len(cases) == 1
    return read_image(cases[0])


def test_every_nifti_in_shared_data_is_listed(shared_data):
    found = {str(p.relative_to(shared_data)) for p in shared_data.rglob("*.nii.gz")}
    assert found == set(EXPECTED_NIFTI) | ATLAS_LABEL_MAPS


@pytest.mark.parametrize("relative_path", sorted(EXPECTED_NIFTI))
def test_real_nifti_reads_with_the_stated_geometry(shared_data, relative_path):
    shape, spacing, orientation = EXPECTED_NIFTI[relative_path]
    path = shared_data / relative_path
    image = read_image(path)

    assert tuple(image.shape) == shape
    assert image.dtype == torch.float32
    np.testing.assert_allclose(voxel_spacing(image.affine), spacing, atol=SPACING_TOLERANCE_MM)
    if orientation is not None:
        assert orientation_code(image.affine) == orientation
    # nibabel reads the same header independently: same world geometry and voxel values.
    reference = nib.load(path)
    np.testing.assert_allclose(np.asarray(image.affine), reference.affine, atol=1e-4)
    np.testing.assert_array_equal(image.numpy(), np.asanyarray(reference.dataobj).astype(np.float32))
    assert image.meta["filename_or_obj"] == str(path)
    np.testing.assert_allclose(image.meta["original_affine"], np.asarray(image.affine))
    assert tuple(image.meta["spatial_shape"]) == shape
    assert image.meta["modality"] is None
    assert image.meta["case_id"] == path.name[: -len(".nii.gz")]


def test_wholeleg_stations_share_one_affine(shared_data):
    """SOURCES.md: all 7 stations have the same affine, origin (-240, -240, -93)."""
    affines = [np.asarray(read_image(p).affine) for p in sorted((shared_data / "qmritools/wholeleg_stations_unlabeled").glob("Join_*.nii.gz"))]
    assert len(affines) == 7
    for affine in affines:
        np.testing.assert_array_equal(affine, affines[0])
    np.testing.assert_allclose(affines[0][:3, 3], (-240.0, -240.0, -93.0))


def test_jpeg2000_dicom_series_reads_with_the_stated_geometry(dicom_image, shared_data):
    image = dicom_image
    assert tuple(image.shape) == (512, 512, 20)
    assert image.dtype == torch.float32
    np.testing.assert_allclose(voxel_spacing(image.affine), (0.977, 0.977, 2.0), atol=SPACING_TOLERANCE_MM)
    # ImageOrientationPatient [1,0,0, 0,1,0]: rows run to the patient's left, columns to
    # posterior; slices are ordered from inferior to superior -> "LPS" in RAS axis codes.
    assert orientation_code(image.affine) == "LPS"
    # z of the slices: -804.5 .. -766.5 mm (SOURCES.md; DICOM and RAS share the z axis).
    corners = np.asarray(image.affine) @ np.array([[0, 0, 0, 1], [0, 0, 19, 1]]).T
    np.testing.assert_allclose(corners[2], (-804.5, -766.5))
    assert (float(image.min()), float(image.max())) == (-1024.0, 1839.0)  # HU, rescale applied
    assert image.meta["modality"] == "CT"
    assert image.meta["filename_or_obj"] == str(shared_data / DICOM_SERIES)
    assert image.meta["case_id"].startswith("CT_Body_3.0_")
    assert tuple(image.meta["spatial_shape"]) == (512, 512, 20)
    # MONAI's channel convention is declared: EnsureChannelFirst adds the channel dimension.
    with_channel = EnsureChannelFirst()(image)
    assert tuple(with_channel.shape) == (1, 512, 512, 20)
    assert torch.equal(with_channel.affine, image.affine)


def test_dicom_series_agrees_with_its_totalsegmentator_labels(dicom_image, shared_data):
    """The NIfTI label map TotalSegmentator made from this series (another converter, LAS)
    must land on the same anatomy through the two affines: liver voxels are soft tissue in
    HU and the spleen lies on the subject's left of the liver (smaller RAS x)."""
    labels_nifti = nib.load(shared_data / "totalsegmentator/ct_dicom_upper_abdomen/example_seg_dicom.nii.gz")
    names = json.loads((shared_data / "totalsegmentator/labels_total.json").read_text())
    value = {name: int(v) for v, name in names.items()}
    # Index in the label map -> index in the DICOM image, through world coordinates.
    label_to_image = np.linalg.inv(np.asarray(dicom_image.affine)) @ labels_nifti.affine
    np.testing.assert_allclose(label_to_image, np.round(label_to_image), atol=1e-3)  # same grid, axes flipped
    label_array = np.asarray(labels_nifti.dataobj)
    hu = dicom_image.numpy()
    centre_x = {}
    for organ in ("liver", "spleen"):
        ijk = np.argwhere(label_array == value[organ])
        image_ijk = np.round((label_to_image[:3, :3] @ ijk.T).T + label_to_image[:3, 3]).astype(int)
        organ_hu = hu[tuple(image_ijk.T)]
        assert 20 < np.median(organ_hu) < 150, organ  # enhanced soft tissue, not air/fat/bone
        centre_x[organ] = (np.asarray(dicom_image.affine)[:3, :3] @ image_ijk.mean(axis=0) + np.asarray(dicom_image.affine)[:3, 3])[0]
    assert centre_x["spleen"] < centre_x["liver"]


def _round_trip(image, labels, path: Path):
    written = write_label_map(labels, image, path)
    back = read_image(written)
    return written, back


# Axis-aligned grids come back bit-identical. The oblique lumbar grid is read from its qform
# (quaternion, computed in float64) and written back with an sform too, whose float32 numbers
# nibabel prefers when reading: the affine moves by ~2e-7 mm (float32 rounding), nothing more.
@pytest.mark.parametrize(
    "relative_path, affine_tolerance",
    [("totalsegmentator/mr_upper_abdomen/example_mr_sm.nii.gz", 0.0), ("musclemap/lumbar_mr_labeled/image.nii.gz", 1e-6)],
)
def test_nifti_label_map_round_trip(shared_data, tmp_path, relative_path, affine_tolerance):
    image = read_image(shared_data / relative_path)
    labels = np.digitize(image.numpy(), np.quantile(image.numpy(), [0.5, 0.8, 0.95])).astype(np.int64)  # 0..3
    written, back = _round_trip(image, labels, tmp_path / "labels.nii.gz")

    assert written == tmp_path / "labels.nii.gz"
    assert nib.load(written).get_data_dtype() == np.uint8
    np.testing.assert_allclose(np.asarray(back.affine), np.asarray(image.affine), rtol=0, atol=affine_tolerance)
    np.testing.assert_array_equal(back.numpy(), labels)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.nii.gz"]  # no temporary file left


def test_dicom_label_map_round_trip(dicom_image, tmp_path):
    hu = dicom_image.numpy()
    labels = np.select([hu > 300, hu > -100], [300, 2], 0)  # > 255: stored as uint16
    written, back = _round_trip(dicom_image, labels, tmp_path / "ct" / "segmentation.nii.gz")

    assert nib.load(written).get_data_dtype() == np.uint16
    assert torch.equal(back.affine, dicom_image.affine)
    np.testing.assert_array_equal(back.numpy(), labels)
    assert orientation_code(back.affine) == "LPS"


def test_write_label_map_refuses_a_wrong_grid_and_leaves_no_file(dicom_image, tmp_path):
    with pytest.raises(ValueError, match="shape"):
        write_label_map(np.zeros((512, 512, 19), np.uint8), dicom_image, tmp_path / "bad.nii.gz")
    with pytest.raises(ValueError, match="integers"):
        write_label_map(np.full((512, 512, 20), 0.5), dicom_image, tmp_path / "bad.nii.gz")
    assert list(tmp_path.iterdir()) == []


def test_write_label_map_replaces_an_existing_file(shared_data, tmp_path):
    image = read_image(shared_data / "totalsegmentator/mr_upper_abdomen/example_mr_sm.nii.gz")
    target = tmp_path / "seg.nii.gz"
    write_label_map(np.ones(image.shape, np.uint8), image, target)
    write_label_map(torch.full((1, *image.shape), 7), image, target)  # tensor with a channel dim
    np.testing.assert_array_equal(np.asarray(nib.load(target).dataobj), 7)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seg.nii.gz"]


@pytest.mark.parametrize("suffix", [".nrrd", ".mha", ".mhd"])
def test_nrrd_and_metaimage_read_like_the_nifti_they_were_made_from(shared_data, tmp_path, suffix):
    source = shared_data / "musclemap/lumbar_mr_labeled/image.nii.gz"  # oblique LPS
    converted = tmp_path / f"lumbar{suffix}"
    sitk.WriteImage(sitk.ReadImage(str(source)), str(converted), useCompression=True)
    from_nifti, from_converted = read_image(source), read_image(converted)
    np.testing.assert_allclose(np.asarray(from_converted.affine), np.asarray(from_nifti.affine), atol=1e-5)
    np.testing.assert_array_equal(from_converted.numpy(), from_nifti.numpy())
    assert discover(converted)[0].format == {".nrrd": "nrrd", ".mha": "mha", ".mhd": "mha"}[suffix]


def test_enhanced_multiframe_dicom_reads_on_the_same_world_grid(dicom_image, shared_data, tmp_path):
    """The real series converted by highdicom into one Legacy Converted Enhanced CT file
    (frames in file-name order, i.e. superior to inferior): ITK/GDCM read it as a volume whose
    voxels sit at the same world positions as the series read slice by slice."""
    slices = []
    for path in sorted((shared_data / DICOM_SERIES).iterdir()):
        dataset = pydicom.dcmread(path)
        dataset.decompress()
        # The anonymiser blanked identifiers that the enhanced IOD requires.
        dataset.SOPClassUID = pydicom.uid.CTImageStorage
        dataset.SOPInstanceUID = generate_uid()
        dataset.StudyInstanceUID, dataset.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.1", "1.2.826.0.1.3680043.8.498.2"
        dataset.PatientID, dataset.PatientName, dataset.StudyID, dataset.SeriesNumber = "anon", "anon^", "1", 1
        slices.append(dataset)
    enhanced = highdicom.legacy.LegacyConvertedEnhancedCTImage(
        legacy_datasets=slices, series_instance_uid=generate_uid(), series_number=2, sop_instance_uid=generate_uid(), instance_number=1
    )
    enhanced.save_as(tmp_path / "enhanced.dcm")

    (case,) = discover(tmp_path)
    assert case.format == "dicom" and len(case.paths) == 1 and case.modality == "CT"
    image = read_image(case)
    assert tuple(image.shape) == (512, 512, 20)
    index_map = np.linalg.inv(np.asarray(dicom_image.affine)) @ np.asarray(image.affine)
    np.testing.assert_allclose(index_map, [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, -1, 19], [0, 0, 0, 1]], atol=1e-6)
    np.testing.assert_array_equal(image.numpy(), dicom_image.numpy()[..., ::-1])
