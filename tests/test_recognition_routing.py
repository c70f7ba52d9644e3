"""Issue 16: know the scan before segmenting it — recognition, routing, refusal, provenance.

Real scans from ../shared/data: before this, every one of them came back ``complete`` through
any model (calf_mri on a pelvis CT: soleus 1567 mL; on an abdominal DICOM CT: two "legs")."""
from __future__ import annotations

import json
from functools import lru_cache

import nibabel as nib
import numpy as np
import pytest

import muscle_pipeline as mp
from muscle_pipeline import routing
from muscle_pipeline.api import batch_exit_code
from muscle_pipeline.errors import CaseRejected, ModelError
from muscle_pipeline.io import discover, read_image
from muscle_pipeline.qc import _regions_on_ras_z
from muscle_pipeline.quantify import StructureVolume, asymmetric_volumes, implausible_volumes
from muscle_pipeline.recognition import MAX_SLICES, recognize_scan
from muscle_pipeline.transforms.legs import leg_axes

LUMBAR_MR = "musclemap/lumbar_mr_labeled/image.nii.gz"
ABDOMEN_MR = "totalsegmentator/mr_upper_abdomen/example_mr_sm.nii.gz"
ABDOMEN_CT_DICOM = "totalsegmentator/ct_dicom_upper_abdomen/example_ct_dicom"
PELVIS_CT = "totalsegmentator/ct_abdomen_pelvis/example_ct.nii.gz"
THIGHS = "qmritools/thigh_calf_unlabeled/test_up.nii.gz"
CALVES = "qmritools/thigh_calf_unlabeled/test_low.nii.gz"
FAT = "qmritools/thigh_calf_unlabeled/dixon_fat.nii.gz"
CALF_DIXON3D = "swastling_musclemap/calf_dixon3d_unlabeled/0026-dix3d_TR23_448m_fa05_345.nii.gz"


@lru_cache(maxsize=None)
def _recognise(path: str):
    (case,) = discover([path])
    return recognize_scan(read_image(case), dicom_modality=case.modality)


def recognise(shared_data, rel):
    return _recognise(str(shared_data / rel))


@pytest.mark.parametrize("rel,modality,regions", [
    (LUMBAR_MR, "MR", {"none"}),
    (ABDOMEN_MR, "MR", {"none"}),
    (ABDOMEN_CT_DICOM, "CT", {"none"}),
    (PELVIS_CT, "CT", {"hip", "none"}),
    (THIGHS, "MR", {"thigh"}),
    (CALVES, "MR", {"leg"}),
    (FAT, "MR", {"leg"}),
], ids=["lumbar_mr", "abdomen_mr", "abdomen_ct_dicom", "pelvis_ct", "thighs", "calves", "dixon_fat"])
def test_recognition_of_real_scans(shared_data, rel, modality, regions):
    result = recognise(shared_data, rel)
    assert result.modality == modality
    assert set(result.regions) == regions, result.summary()
    assert result.lower_limb == (regions != {"none"})


def test_modality_comes_from_the_dicom_tag_where_there_is_one(shared_data):
    assert recognise(shared_data, ABDOMEN_CT_DICOM).modality_source == "DICOM Modality tag"
    assert recognise(shared_data, PELVIS_CT).modality_source.startswith("intensities")


def test_pelvis_ct_slices_above_the_hip_bone_are_no_lower_limb(shared_data):
    """TotalSegmentator's hip bones cover slices 0-60 of 112; the abdomen lies above."""
    per_slice = recognise(shared_data, PELVIS_CT).per_slice
    voted = [(k, v) for k, v in enumerate(per_slice) if v]
    assert all(v == "hip" for k, v in voted if k <= 40)
    assert all(v == "none" for k, v in voted if k >= 64)


def test_bilateral_legs_are_named_from_the_header(shared_data):
    assert sorted(recognise(shared_data, CALVES).legs) == ["left", "right"]


@pytest.mark.parametrize("rel,expected", [(CALVES, "calf_mri"), (FAT, "calf_mri"), (PELVIS_CT, "thigh_ct_25d")])
def test_auto_routes_to_the_model_that_covers_the_scan(shared_data, rel, expected):
    coverage, _ = routing.choose(recognise(shared_data, rel))
    assert coverage.name == expected


@pytest.mark.parametrize("rel", [LUMBAR_MR, ABDOMEN_CT_DICOM, THIGHS])
def test_auto_rejects_what_no_shipped_model_covers(shared_data, rel):
    # MR thighs wait for lower_limb_35's weights (issue 15): refused, not segmented by a calf model
    with pytest.raises(CaseRejected, match="no shipped model fits"):
        routing.choose(recognise(shared_data, rel))


def test_a_model_without_weights_is_never_chosen(shared_data, tmp_path):
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "metadata.json").write_text(json.dumps(
        {"coverage": {"modalities": ["MR"], "regions": ["thigh"], "preference": 9}}))
    empty = routing.coverage_of(tmp_path)
    assert empty is not None and not empty.has_weights
    with pytest.raises(CaseRejected, match="no weights yet"):
        routing.choose(recognise(shared_data, THIGHS), candidates=[empty])


def test_calf_model_refuses_what_is_not_an_mr_calf(shared_data, tmp_path):
    """Done-when of issue 16: calf_mri on the lumbar MR, the pelvis CT and the abdominal DICOM CT
    ends for none of them `complete`; each has one line naming the file and what was found."""
    inputs = [shared_data / LUMBAR_MR, shared_data / PELVIS_CT, shared_data / ABDOMEN_CT_DICOM]
    results = mp.segment(inputs, tmp_path / "out", model="calf_mri", progress=False)
    assert [r.status for r in results] == ["rejected"] * 3
    reasons = {r.case_id: r.reason for r in results}
    for r in results:
        assert "\n" not in r.reason and "calf_mri segments MR calves" in r.reason
        assert r.reason.startswith(tuple(f"{path}: " for path in inputs))  # names the file (DICOM: its folder)
        assert not (tmp_path / "out" / r.case_id).exists()
    assert any(reason.count("CT, hips/pelvis") for reason in reasons.values())
    assert any("CT, no lower limb" in reason for reason in reasons.values())
    assert any("MR, no lower limb" in reason for reason in reasons.values())
    assert batch_exit_code(results) == 4


def test_force_segments_anyway_and_keeps_the_reason(shared_data, tmp_path):
    # 3 slices of the thighs keep it quick: still thighs, still not what calf_mri segments
    image = nib.load(str(shared_data / THIGHS))
    middle = image.slicer[:, :, 14:20]
    nib.save(middle, str(tmp_path / "thighs.nii.gz"))
    out = tmp_path / "out"
    (rejected,) = mp.segment([tmp_path / "thighs.nii.gz"], out, model="calf_mri", progress=False)
    assert rejected.status == "rejected" and "MR, thighs" in rejected.reason
    (forced,) = mp.segment([tmp_path / "thighs.nii.gz"], out, model="calf_mri", progress=False, force=True)
    assert forced.status == "complete"
    report = json.loads((out / forced.case_id / "report.json").read_text())
    assert any(w.startswith("forced: MR, thighs") for w in report["warnings"])
    assert report["recognition"]["regions"] == {"thigh": report["recognition"]["regions"]["thigh"]}
    assert report["model_path"] == str(routing.resolve_bundle("calf_mri"))
    assert report["model_weights_sha256"] == routing.weights_sha256(routing.resolve_bundle("calf_mri"))
    assert len(report["model_weights_sha256"]) == 64


def test_a_header_without_orientation_is_rejected_unless_forced(shared_data, tmp_path):
    image = nib.load(str(shared_data / CALVES))
    bare = nib.Nifti1Image(np.asanyarray(image.dataobj)[:, :, 12:16], image.affine)
    bare.set_qform(None, code=0)
    bare.set_sform(None, code=0)
    nib.save(bare, str(tmp_path / "no_orientation.nii.gz"))
    (result,) = mp.segment([tmp_path / "no_orientation.nii.gz"], tmp_path / "out", progress=False)
    assert result.status == "rejected"
    assert "no orientation" in result.reason and "no_orientation.nii.gz" in result.reason


def test_model_names_resolve_to_shipped_bundles_never_the_working_directory(tmp_path, monkeypatch):
    decoy = tmp_path / "calf_mri" / "configs"
    decoy.mkdir(parents=True)
    (decoy / "inference.json").write_text('{"loader": "os:system"}')
    monkeypatch.chdir(tmp_path)
    assert routing.resolve_bundle("calf_mri") != (tmp_path / "calf_mri").resolve()
    assert routing.resolve_bundle("calf_mri").parent.name == "bundles"
    assert routing.resolve_bundle("./calf_mri") == (tmp_path / "calf_mri").resolve()  # a path, given as one
    with pytest.raises(ModelError, match="no shipped bundle"):
        routing.resolve_bundle("not_a_model")


def test_far_out_of_range_volumes_warn_and_cut_muscles_are_only_checked_above():
    def volume(name, ml, cut=False):
        return StructureVolume(28, name, "left", "leg", 1, ml, cut, 3, (0.0, 0.0, 0.0))

    warnings = implausible_volumes([volume("soleus_left", 1567.0), volume("soleus_right", 450.0),
                                    volume("tibialis_anterior_left", 0.5, cut=True),
                                    volume("tibialis_anterior_right", 0.5)])
    assert len(warnings) == 2
    assert warnings[0].startswith("soleus_left 1567 mL is far above")
    assert warnings[1].startswith("tibialis_anterior_right 0.5 mL is far below")


def test_left_right_volume_mismatch_warns_when_both_sides_are_whole():
    def volume(name, ml, cut=False):
        side = "left" if name.endswith("_left") else "right"
        return StructureVolume(28, name, side, "leg", 1, ml, cut, 3, (0.0, 0.0, 0.0))

    warnings = asymmetric_volumes([
        volume("gastrocnemius_lateral_head_left", 26.6), volume("gastrocnemius_lateral_head_right", 102.8),
        volume("soleus_left", 220.0), volume("soleus_right", 179.5),  # 1.2x: healthy
        volume("fibulari_left", 10.0, cut=True), volume("fibulari_right", 60.0),  # cut: a lower bound only
        volume("tibialis_anterior_left", 70.0)])  # one side only: nothing to compare
    assert warnings == ["gastrocnemius_lateral_head: left 26.6 mL, right 102.8 mL (3.9x): check the segmentation "
                        "(healthy legs differ by about 10-15 %)"]


def test_qc_regions_follow_world_z_whatever_the_array_order():
    affine = np.diag([1.0, 1.0, -1.0, 1.0])  # array z runs inferior: RAS z index is reversed
    assert _regions_on_ras_z(["leg", None, "thigh"], affine) == {2: "leg", 0: "thigh"}
    assert _regions_on_ras_z(["leg", None, "thigh"], np.eye(4)) == {0: "leg", 2: "thigh"}


def _slices_first_and_reversed(image):
    """The same scan with its superior-inferior axis first and reversed (new index (i, j, k) is
    old (j, k, n - 1 - i)): another array layout, the same anatomy."""
    import torch
    from monai.data import MetaTensor

    n = image.shape[2]
    to_old = np.array([[0, 1, 0, 0], [0, 0, 1, 0], [-1, 0, 0, n - 1], [0, 0, 0, 1]], float)
    array = torch.flip(image.as_tensor().permute(2, 0, 1), dims=(0,)).contiguous()
    return MetaTensor(array, affine=torch.as_tensor(np.asarray(image.affine, float) @ to_old))


@pytest.mark.parametrize("rel,layout", [
    (PELVIS_CT, "as read"), (PELVIS_CT, "slices first, reversed"), (CALF_DIXON3D, "as read"),
], ids=["pelvis_ct", "pelvis_ct_relaid", "calf_dixon3d"])
def test_recognition_on_the_voting_slices_equals_the_whole_volume(shared_data, rel, layout):
    """Issue 18: recognize_scan finds the body and the legs on the slices that vote only (64 of the
    pelvis CT's 112, of the 3D Dixon's 96), not on the whole volume: the same recognition, slice
    by slice, whatever the array layout."""
    (case,) = discover([str(shared_data / rel)])
    image = read_image(case)
    if layout != "as read":
        image = _slices_first_and_reversed(image)
    fast = recognize_scan(image, dicom_modality=case.modality)
    assert fast == recognize_scan(image, dicom_modality=case.modality, full_resolution=True)
    n_slices = image.shape[leg_axes(image.affine).si]
    assert n_slices > MAX_SLICES and len(fast.per_slice) == n_slices
    assert 0.5 * MAX_SLICES < sum(v is not None for v in fast.per_slice) <= MAX_SLICES
    assert fast.lower_limb and len(fast.legs) == 2
