"""Discovery of cases in real folders: every scan found once, with stable readable ids, and
non-scans skipped with a note."""
from __future__ import annotations

import shutil
from pathlib import Path

import pydicom
import pytest
import SimpleITK as sitk
from pydicom.uid import generate_uid

from muscle_pipeline.errors import NoCasesFoundError
from muscle_pipeline.io import Case, SkippedFile, discover

DICOM_SERIES = "totalsegmentator/ct_dicom_upper_abdomen/example_ct_dicom"
MR = "totalsegmentator/mr_upper_abdomen/example_mr_sm.nii.gz"
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"


def _copy_series(shared_data: Path, target: Path, new_series_uid: str | None = None, prefix: str = "") -> Path:
    """Copy the real CT series into ``target``; with ``new_series_uid`` rewrite every file as
    another series (pydicom keeps the JPEG 2000 pixel data as it is)."""
    target.mkdir(parents=True, exist_ok=True)
    for source in sorted((shared_data / DICOM_SERIES).iterdir()):
        if new_series_uid is None:
            shutil.copy(source, target / f"{prefix}{source.name}")
            continue
        dataset = pydicom.dcmread(source)
        dataset.SeriesInstanceUID = new_series_uid
        dataset.SeriesDescription = "CT Body 3.0 copy"
        dataset.save_as(target / f"{prefix}{source.name}")
    return target


def _write_structured_report(shared_data: Path, path: Path) -> Path:
    """A real CT header turned into a Basic Text SR: no pixel data, non-image SOP class."""
    dataset = pydicom.dcmread(next(iter(sorted((shared_data / DICOM_SERIES).iterdir()))))
    del dataset.PixelData
    dataset.SOPClassUID = BASIC_TEXT_SR
    dataset.file_meta.MediaStorageSOPClassUID = BASIC_TEXT_SR
    dataset.Modality = "SR"
    dataset.save_as(path)
    return path


def test_every_real_scan_is_found_once(shared_data):
    skipped: list[SkippedFile] = []
    cases = discover(shared_data, skipped)

    nifti = sorted(shared_data.rglob("*.nii.gz"))
    assert len(nifti) >= 22  # the shared data set grows now and then
    assert len(cases) == len(nifti) + 1  # + the DICOM series
    assert {c.paths[0] for c in cases if c.format == "nifti"} == set(nifti)
    assert len({c.case_id for c in cases}) == len(cases)
    assert [c.case_id for c in cases] == sorted(c.case_id for c in cases)
    # Ids are the paths relative to the input folder: readable, and independent of other files.
    assert {c.case_id for c in cases if c.format == "nifti"} >= {
        "totalsegmentator_ct_abdomen_pelvis_example_ct", "qmritools_wholeleg_stations_unlabeled_Join_1",
        "musclemap_lumbar_mr_labeled_image", "musclemap_lumbar_mr_labeled_image_dseg"}

    (dicom,) = [c for c in cases if c.format == "dicom"]
    assert len(dicom.paths) == 20
    assert dicom.source == shared_data / DICOM_SERIES
    assert (dicom.modality, dicom.description) == ("CT", "CT Body 3.0")
    assert dicom.series_uid is None  # the anonymiser blanked SeriesInstanceUID
    assert dicom.case_id.startswith("CT_Body_3.0_")

    # SOURCES.md, LICENSE files, label JSONs: noted, none of them an image.
    skipped_names = {s.path.name for s in skipped}
    assert {"SOURCES.md", "labels_total.json", "LICENSE.txt"} <= skipped_names
    assert all("not an image file" in s.reason for s in skipped)
    assert discover(shared_data) == cases  # same ids on a second run


def test_two_series_in_one_folder_are_two_cases_with_stable_ids(shared_data, tmp_path):
    folder = tmp_path / "study"
    _copy_series(shared_data, folder)
    new_uid = generate_uid(entropy_srcs=["muscle_pipeline test series"])
    _copy_series(shared_data, folder, new_series_uid=new_uid, prefix="copy_")

    first, second = discover(folder), discover(folder)
    assert [c.case_id for c in first] == [c.case_id for c in second]
    assert len(first) == 2 and first[0].case_id != first[1].case_id
    by_uid = {c.series_uid: c for c in first}
    assert set(by_uid) == {None, new_uid}
    assert all(p.name.startswith("copy_") for p in by_uid[new_uid].paths)
    assert len(by_uid[new_uid].paths) == len(by_uid[None].paths) == 20
    assert by_uid[new_uid].case_id.startswith("CT_Body_3.0_copy_")
    # The id of the original series does not depend on where the folder lives.
    assert by_uid[None].case_id == discover(shared_data / DICOM_SERIES)[0].case_id


def test_mixed_tree_returns_every_good_case_and_notes_the_bad_files(shared_data, tmp_path):
    mr = sitk.ReadImage(str(shared_data / MR))
    shutil.copy(shared_data / MR, tmp_path / "mr.nii.gz")
    (tmp_path / "converted").mkdir()
    sitk.WriteImage(mr, str(tmp_path / "converted" / "mr_nrrd.nrrd"))
    sitk.WriteImage(mr, str(tmp_path / "converted" / "mr_meta.mhd"))  # + its .raw voxel file
    _copy_series(shared_data, tmp_path / "dicom" / "ct")
    # Bad files among them:
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "dicom" / "README").write_bytes(b"\x00" * 300)
    _write_structured_report(shared_data, tmp_path / "dicom" / "ct" / "report.dcm")
    no_pixels = pydicom.dcmread(next(iter(sorted((shared_data / DICOM_SERIES).iterdir()))))
    del no_pixels.PixelData
    no_pixels.save_as(tmp_path / "dicom" / "header_only.dcm")
    header = (shared_data / DICOM_SERIES).iterdir().__next__().read_bytes()
    (tmp_path / "dicom" / "cut.dcm").write_bytes(header[:400])  # DICOM header cut short

    skipped: list[SkippedFile] = []
    cases = discover(tmp_path, skipped)

    assert {(c.case_id, c.format) for c in cases} == {
        ("mr", "nifti"),
        ("converted_mr_nrrd", "nrrd"),
        ("converted_mr_meta", "mha"),
        (discover(shared_data / DICOM_SERIES)[0].case_id, "dicom"),
    }
    (dicom,) = [c for c in cases if c.format == "dicom"]
    assert len(dicom.paths) == 20 and all(p.name != "report.dcm" for p in dicom.paths)
    reasons = {s.path.name: s.reason for s in skipped}
    assert set(reasons) == {"notes.txt", "README", "report.dcm", "header_only.dcm", "cut.dcm"}  # not mr_meta.raw
    assert "non-image DICOM (Basic Text SR Storage)" in reasons["report.dcm"]
    assert "without pixel data" in reasons["header_only.dcm"]
    assert "not an image file" in reasons["notes.txt"] and "not an image file" in reasons["README"]
    assert "DICOM" in reasons["cut.dcm"]


def test_explicit_files_and_colliding_names(shared_data, tmp_path):
    for folder in ("left", "right"):
        (tmp_path / folder).mkdir()
        shutil.copy(shared_data / MR, tmp_path / folder / "scan.nii.gz")
    explicit = [tmp_path / "left" / "scan.nii.gz", tmp_path / "right" / "scan.nii.gz", tmp_path / "left"]

    cases = discover(explicit)  # the left file is named twice (itself and via its folder)
    assert [c.case_id for c in cases] == ["left_scan", "right_scan"]
    assert cases[0] == Case(case_id="left_scan", paths=(tmp_path / "left" / "scan.nii.gz",), format="nifti")


def test_nothing_to_find_raises_and_still_reports_the_notes(shared_data, tmp_path):
    _write_structured_report(shared_data, tmp_path / "sr.dcm")
    (tmp_path / "table.csv").write_text("a,b\n1,2\n")
    skipped: list[SkippedFile] = []
    with pytest.raises(NoCasesFoundError) as raised:
        discover(tmp_path, skipped)
    assert raised.value.path == tmp_path
    assert str(tmp_path) in str(raised.value)
    assert {s.path.name for s in skipped} == {"sr.dcm", "table.csv"}
