"""Volumes, QC picture and the atomic case folder, on the real labelled calf and a flipped copy."""
from __future__ import annotations

import numpy as np
import nibabel as nib
import pytest

from muscle_pipeline import outputs
from muscle_pipeline.qc import save_qc_png
from muscle_pipeline.quantify import measure_volumes, superior_axis, write_volumes_csv

# SOURCES.md §2a: voxel counts of the labelled calf half, 3 x 3 x 6 mm voxels.
CALF_COUNTS = {13: 4543, 15: 2108, 17: 6417, 19: 1684, 21: 1930, 23: 733, 25: 672}


@pytest.fixture(scope="module")
def calf(shared_data):
    folder = shared_data / "qmritools" / "calf_dti_labeled_half"
    img = nib.load(folder / "twoLegs_x80-160.nii.gz")
    lab = nib.load(folder / "labels_x80-160.nii.gz")
    return np.asarray(img.dataobj, np.float32), np.asarray(lab.dataobj).astype(np.uint8), img.affine


def test_volumes_match_voxel_counts_and_spacing(calf):
    _, lab, affine = calf
    vols = {v.value: v for v in measure_volumes(lab, affine)}
    assert set(vols) == set(CALF_COUNTS)
    for value, count in CALF_COUNTS.items():
        assert vols[value].voxels == count
        assert vols[value].volume_ml == pytest.approx(count * 3 * 3 * 6 / 1000, rel=1e-6)


def test_coverage_flag_marks_muscles_cut_by_the_field_of_view(calf):
    _, lab, affine = calf
    assert superior_axis(affine) == 2
    vols = {v.value: v for v in measure_volumes(lab, affine)}
    for value, v in vols.items():
        zs = np.flatnonzero((lab == value).any(axis=(0, 1)))
        assert v.touches_border == (zs[0] == 0 or zs[-1] == lab.shape[2] - 1)
    # A muscle confined to inner slices is not flagged.
    inner = np.zeros_like(lab)
    inner[10:20, 10:20, 5:10] = 28
    (only,) = measure_volumes(inner, affine)
    assert only.name == "soleus_right" and not only.touches_border


def test_volumes_do_not_depend_on_array_orientation(calf):
    _, lab, affine = calf
    flip = np.diag([-1.0, 1.0, 1.0, 1.0])
    flip[0, 3] = lab.shape[0] - 1
    flipped_affine = affine @ flip
    a = {v.value: (v.volume_ml, v.centroid_ras_mm) for v in measure_volumes(lab, affine)}
    b = {v.value: (v.volume_ml, v.centroid_ras_mm) for v in measure_volumes(lab[::-1], flipped_affine)}
    assert a.keys() == b.keys()
    for k in a:
        assert a[k][0] == b[k][0]
        np.testing.assert_allclose(a[k][1], b[k][1], atol=0.01)


def test_volumes_csv_and_qc_png(calf, tmp_path):
    img, lab, affine = calf
    csv_path = write_volumes_csv(measure_volumes(lab, affine), tmp_path / "volumes.csv")
    rows = csv_path.read_text().splitlines()
    assert rows[0].startswith("value,name,side,region,voxels,volume_ml,touches_border")
    assert len(rows) == 1 + len(CALF_COUNTS)
    png = save_qc_png(img, lab, affine, tmp_path / "qc.png", title="calf")
    from PIL import Image

    with Image.open(png) as im:
        assert im.size[0] > 400 and im.size[1] > 400
        pixels = np.asarray(im.convert("RGB"))
    # The overlay shows label colours, not just grey.
    assert (np.ptp(pixels.astype(int), axis=-1) > 60).mean() > 0.005


def test_qc_picture_is_the_same_for_a_flipped_scan(calf, tmp_path):
    img, lab, affine = calf
    flip = np.diag([-1.0, 1.0, 1.0, 1.0])
    flip[0, 3] = lab.shape[0] - 1
    a = save_qc_png(img, lab, affine, tmp_path / "a.png")
    b = save_qc_png(img[::-1].copy(), lab[::-1].copy(), affine @ flip, tmp_path / "b.png")
    from PIL import Image

    assert np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))


def test_staged_case_folder_appears_only_when_complete(tmp_path):
    with outputs.staged_case_dir(tmp_path, "case1") as folder:
        (folder / "report.json").write_text('{"status": "complete"}')
        assert not (tmp_path / "case1").exists()
    assert outputs.is_complete(tmp_path, "case1")

    with pytest.raises(RuntimeError):
        with outputs.staged_case_dir(tmp_path, "case2") as folder:
            (folder / "segmentation.nii.gz").write_bytes(b"partial")
            raise RuntimeError("killed half-way")
    assert not (tmp_path / "case2").exists()
    assert not list(tmp_path.glob(".tmp-case2-*"))

    with pytest.raises(FileExistsError):
        with outputs.staged_case_dir(tmp_path, "case1") as folder:
            pass
    with outputs.staged_case_dir(tmp_path, "case1", overwrite=True) as folder:
        (folder / "report.json").write_text('{"status": "complete", "n": 2}')
    assert '"n": 2' in (tmp_path / "case1" / "report.json").read_text()


def test_case_lock_is_exclusive_and_released(tmp_path):
    with outputs.case_lock(tmp_path, "c"):
        with pytest.raises(outputs.CaseLocked):
            with outputs.case_lock(tmp_path, "c"):
                pass
    with outputs.case_lock(tmp_path, "c"):
        pass


def test_volumes_from_label_boxes_equal_a_whole_map_count():
    """measure_volumes works inside each label's bounding box; the figures are those of comparing the
    whole map with each value (counts, slices, border flag, centroid)."""
    rng = np.random.default_rng(0)
    labels = np.zeros((40, 30, 20), np.uint8)
    for value in (2, 17, 117, 250):
        start = rng.integers(0, [30, 20, 12])
        labels[tuple(slice(a, a + n) for a, n in zip(start, rng.integers(3, 10, 3)))] = value
    labels[5, 5, 19] = 17  # a stray voxel on the top slice: the border flag must see it
    affine = np.diag([0.8, 0.8, 3.0, 1.0])
    affine[:3, 3] = [10.0, -5.0, 40.0]
    si = superior_axis(affine)
    for v in measure_volumes(labels, affine):
        idx = np.argwhere(labels == v.value)
        slices = np.unique(idx[:, si])
        assert v.voxels == len(idx) and v.slices_with_label == slices.size
        assert v.touches_border == bool(slices[0] == 0 or slices[-1] == labels.shape[si] - 1)
        assert np.allclose(v.centroid_ras_mm, (affine @ np.append(idx.mean(0), 1.0))[:3], atol=0.01)
    assert [v.value for v in measure_volumes(labels, affine)] == sorted(set(np.unique(labels)) - {0})


def test_volumes_from_runs_that_wrap_lines_and_fortran_maps():
    """measure_volumes reads each label's runs along the last axis (C order): runs that wrap
    from the end of one line onto the next, whole planes, Fortran-ordered maps and each axis as
    the superior one give the figures of comparing the whole map with each value."""
    labels = np.zeros((9, 7, 11), np.uint8)
    labels[2:4] = 3  # whole planes: one run over many lines
    labels[5, 1, 9:], labels[5, 2, :3] = 4, 4  # wraps from one line onto the next
    labels[7, 6, 10], labels[8, 0, 0] = 4, 4  # ... and from one plane onto the next
    labels[0, 0, 0], labels[8, 6, 10] = 9, 9  # the first and last voxel
    for si in range(3):
        affine = np.eye(4)
        affine[:3, :3] = np.diag([0.7, 0.9, 1.1])[:, np.roll([0, 1, 2], si - 2)]  # world z along axis si
        assert superior_axis(affine) == si
        for layout in (labels, np.asfortranarray(labels), labels[::-1]):
            volumes = measure_volumes(layout, affine)
            assert [v.value for v in volumes] == [3, 4, 9]
            for v in volumes:
                idx = np.argwhere(layout == v.value)
                slices = np.unique(idx[:, si])
                assert v.voxels == len(idx) and v.slices_with_label == slices.size
                assert v.touches_border == bool(slices[0] == 0 or slices[-1] == layout.shape[si] - 1)
                assert v.centroid_ras_mm == tuple(round(float(c), 2) for c in (affine @ np.append(idx.mean(0), 1.0))[:3])


def test_qc_overlay_is_the_per_label_blend(calf, tmp_path):
    """The QC tile colours every label in one lookup: the same pixels as blending each label in
    turn; and the picture is the same when the caller passes the values present."""
    from PIL import Image

    from muscle_pipeline.qc import _colour_lut, _colour_table, _overlay

    img, lab, affine = calf
    gray = np.random.default_rng(0).random(lab.shape[:2]).astype(np.float32)
    tile = lab[:, :, lab.shape[2] // 2].copy()
    tile[0, :3] = [200, 0, 13]  # a value without an entry stays grey
    lut = _colour_lut(np.unique(lab[lab > 0]))
    expected = np.repeat(gray[..., None], 3, axis=-1)
    for v, colour in lut.items():
        mask = tile == v
        expected[mask] = (1 - 0.45) * expected[mask] + 0.45 * np.asarray(colour)
    assert np.array_equal(_overlay(gray, tile, _colour_table(lut), 0.45), expected)

    a = save_qc_png(img, lab, affine, tmp_path / "a.png")
    b = save_qc_png(img, lab, affine, tmp_path / "b.png", values=sorted(CALF_COUNTS))
    assert np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))
