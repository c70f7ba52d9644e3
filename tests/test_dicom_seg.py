"""DICOM-SEG on the real (JPEG 2000) CT series: segments named and placed on the right frames."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from muscle_pipeline import labels as ontology
from muscle_pipeline.io.dicom_seg import write_dicom_seg


def _series(shared_data):
    folder = shared_data / "totalsegmentator" / "ct_dicom_upper_abdomen" / "example_ct_dicom"
    reader = sitk.ImageSeriesReader()
    files = reader.GetGDCMSeriesFileNames(str(folder))
    reader.SetFileNames(files)
    image = reader.Execute()
    lps = np.eye(4)
    lps[:3, :3] = np.asarray(image.GetDirection()).reshape(3, 3) @ np.diag(image.GetSpacing())
    lps[:3, 3] = image.GetOrigin()
    return files, image.GetSize(), np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def test_dicom_seg_frames_land_on_their_source_images(shared_data, tmp_path):
    import highdicom as hd
    import pydicom

    files, size, affine = _series(shared_data)
    labels = np.zeros(size, dtype=np.uint8)  # (X, Y, Z) on the series' grid
    gm_left, ilio_right = ontology.value_of("gluteus_maximus_left"), ontology.value_of("iliopsoas_right")
    labels[100:200, 150:260, 3:9] = gm_left
    labels[300:380, 200:240, 12:15] = ilio_right
    # Shuffle the file order: placement must follow positions, not listing order.
    shuffled = list(reversed(files))
    notes: list[str] = []
    out = write_dicom_seg(labels, affine, shuffled, tmp_path / "segmentation.dcm", notes=notes)
    # The anonymised example blanks SOPClassUID/SOPInstanceUID/StudyInstanceUID: repaired, and said.
    assert notes and "SOPInstanceUID" in notes[0]

    seg = hd.seg.segread(str(out))
    names = {d.SegmentNumber: d.SegmentLabel for d in seg.SegmentSequence}
    assert sorted(names.values()) == ["gluteus_maximus_left", "iliopsoas_right"]
    number_of = {v: k for k, v in names.items()}
    sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]  # files are in ITK (z) order
    uids = [ds.file_meta.MediaStorageSOPInstanceUID for ds in sources]
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=uids,
        segment_numbers=[number_of["gluteus_maximus_left"], number_of["iliopsoas_right"]],
        assert_missing_frames_are_empty=True,
    )  # (instances, rows, cols, segments)
    for k in range(size[2]):
        np.testing.assert_array_equal(pixels[k, :, :, 0], (labels[:, :, k] == gm_left).T)
        np.testing.assert_array_equal(pixels[k, :, :, 1], (labels[:, :, k] == ilio_right).T)
    # Laterality is coded, and the series is referenced.
    desc = {d.SegmentLabel: d for d in seg.SegmentSequence}
    assert desc["gluteus_maximus_left"].AnatomicRegionSequence[0].CodeMeaning == "Left"
    # The anonymised example leaves SeriesInstanceUID empty: a valid UID derived from the series'
    # content is referenced (and filled into the SEG's copies of the source headers) instead.
    referenced = seg.ReferencedSeriesSequence[0].SeriesInstanceUID
    assert sources[0].SeriesInstanceUID == "" and pydicom.uid.UID(referenced).is_valid
    assert "SeriesInstanceUID" in notes[0]


def test_dicom_seg_refuses_a_grid_that_is_not_the_series(shared_data, tmp_path):
    from muscle_pipeline.errors import InputError

    files, size, affine = _series(shared_data)
    shifted = affine.copy()
    shifted[2, 3] += 50.0  # 50 mm off along z: no slice matches an instance
    with pytest.raises(InputError, match="matches no source instance"):
        write_dicom_seg(np.ones(size, np.uint8), shifted, files, tmp_path / "x.dcm")
