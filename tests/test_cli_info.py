"""``muscle-pipeline info``: one JSON line per case on stdout, notes and errors on stderr."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

from muscle_pipeline.cli import main

DICOM_SERIES = "totalsegmentator/ct_dicom_upper_abdomen/example_ct_dicom"
MR = "totalsegmentator/mr_upper_abdomen/example_mr_sm.nii.gz"
REPO = Path(__file__).resolve().parents[1]


def _json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


def test_info_on_real_dicom_and_nifti(shared_data, capsys):
    status = main(["info", str(shared_data / DICOM_SERIES), str(shared_data / MR)])
    out, err = capsys.readouterr()

    assert status == 0
    lines = {line["case_id"]: line for line in _json_lines(out)}
    assert len(lines) == 2
    (dicom_id,) = [case_id for case_id in lines if case_id.startswith("CT_Body_3.0_")]
    dicom = lines[dicom_id]
    assert dicom["format"] == "dicom"
    assert dicom["source"] == str(shared_data / DICOM_SERIES) and dicom["num_files"] == 20
    assert dicom["shape"] == [512, 512, 20]
    np.testing.assert_allclose(dicom["spacing"], [0.9765625, 0.9765625, 2.0], atol=1e-5)
    assert dicom["orientation"] == "LPS"
    assert dicom["modality"] == "CT" and dicom["description"] == "CT Body 3.0"
    assert dicom["intensity_range"] == [-1024.0, 1839.0]

    mr = lines["example_mr_sm"]
    assert (mr["format"], mr["source"], mr["num_files"]) == ("nifti", str(shared_data / MR), 1)
    assert (mr["shape"], mr["spacing"], mr["orientation"]) == ([117, 91, 20], [3.0, 3.0, 3.0], "LPS")
    assert mr["modality"] is None
    assert mr["intensity_range"] == [-47.0, 833.0]  # SOURCES.md: int16 from -47 to 833
    assert err == ""

    # Recognition as segment --model auto sees it: the DICOM tag says CT, the MR is told from its
    # intensities; neither upper abdomen holds a lower limb.
    assert dicom["recognition"]["modality"] == "CT"
    assert dicom["recognition"]["modality_source"] == "DICOM Modality tag"
    assert mr["recognition"]["modality"] == "MR" and mr["recognition"]["modality_source"].startswith("intensities")
    for line in (dicom, mr):
        assert line["recognition"]["region"] is None and set(line["recognition"]["regions"]) == {"none"}
        assert line["recognition"]["legs"] == [] and "per_slice" not in line["recognition"]


def test_one_failing_case_does_not_stop_the_others(shared_data, tmp_path, capsys):
    shutil.copy(shared_data / MR, tmp_path / "good.nii.gz")
    image = nib.load(shared_data / MR)
    voxels = np.asanyarray(image.dataobj).astype(np.float32)
    voxels[10, 10, 10] = np.nan
    nib.save(nib.Nifti1Image(voxels, image.affine), tmp_path / "has_nan.nii.gz")
    (tmp_path / "readme.txt").write_text("not a scan")

    status = main(["info", str(tmp_path)])
    out, err = capsys.readouterr()

    assert status == 0
    assert [line["case_id"] for line in _json_lines(out)] == ["good"]
    err_lines = err.strip().splitlines()
    assert len(err_lines) == 2
    assert "skipped" in err_lines[0] and "readme.txt" in err_lines[0]
    assert "error" in err_lines[1] and "has_nan.nii.gz" in err_lines[1] and "NaN" in err_lines[1]


def test_nothing_readable_exits_non_zero(tmp_path, capsys):
    (tmp_path / "readme.txt").write_text("not a scan")
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"\x1f\x8b\x08\x00garbage")

    assert main(["info", str(tmp_path)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert "broken.nii.gz" in err and "readme.txt" in err

    assert main(["info", str(tmp_path / "empty_or_missing")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_console_output_is_only_json(shared_data):
    """Through a real process: ITK, GDCM and MONAI must not print anything on stdout."""
    result = subprocess.run(
        [sys.executable, "-m", "muscle_pipeline", "info", str(shared_data / "qmritools/calf_dti_labeled_half")],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    lines = _json_lines(result.stdout)
    assert sorted(line["case_id"] for line in lines) == ["labels_x80-160", "twoLegs_x80-160"]
    assert all(line["shape"] == [80, 160, 25] and line["orientation"] == "RAS" for line in lines)
    assert "Traceback" not in result.stderr
