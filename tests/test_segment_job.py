"""The main job end to end with the shipped calf_mri model, on the real labelled calf leg:
output folder contents, grid, Dice against the manual labels, DICOM input, SIGKILL mid-batch,
two jobs on one output folder."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from muscle_pipeline import labels as ontology
from muscle_pipeline.cli import main
from muscle_pipeline.datasets import map_labels
from muscle_pipeline.metrics import dice

REPO = Path(__file__).resolve().parents[1]
CALF = REPO / "examples" / "data" / "qmritools"
CASE_FILES = ("segmentation.nii.gz", "labels.json", "labels_itksnap.txt", "labels_slicer.ctbl", "volumes.csv",
              "qc.png", "report.json")
# Regression floor for the job on the leg the model was trained on (the model's own generalisation
# figures are in bundles/calf_mri/docs/README.md and test_cascade_*).
JOB_DICE_FLOOR = 0.93


@pytest.fixture(scope="module")
def calf_job(tmp_path_factory):
    inp = tmp_path_factory.mktemp("in")
    shutil.copy(CALF / "twoLegs_x80-160.nii.gz", inp / "calf_right.nii.gz")
    out = tmp_path_factory.mktemp("out")
    code = main(["segment", str(inp), "-o", str(out), "--model", "calf_mri", "--quiet"])
    return code, out / "calf_right", inp / "calf_right.nii.gz"


def test_job_writes_a_complete_case_folder_on_the_input_grid(calf_job):
    code, case, source = calf_job
    assert code == 0
    for name in CASE_FILES:
        assert (case / name).is_file(), name
    report = json.loads((case / "report.json").read_text())
    assert report["status"] == "complete" and report["model"] == "calf_mri"
    assert report["legs"][0]["side"] == "right"
    src, seg = nib.load(source), nib.load(case / "segmentation.nii.gz")
    assert seg.shape == src.shape
    np.testing.assert_allclose(seg.affine, src.affine, atol=1e-5)
    table = json.loads((case / "labels.json").read_text())
    names = {e["name"] for e in (table["labels"] if isinstance(table, dict) else table)}
    assert {"soleus_right", "soleus_left", "tibialis_anterior_left"} <= names


def test_job_segments_the_real_calf_with_the_right_side_and_dice(calf_job):
    _, case, _ = calf_job
    seg = np.asarray(nib.load(case / "segmentation.nii.gz").dataobj)
    truth = map_labels(np.asarray(nib.load(CALF / "labels_x80-160.nii.gz").dataobj), "qmritools_calf")
    present = sorted(int(v) for v in np.unique(truth) if v)
    assert all(ontology.label(v).side == "right" for v in present)
    assert not np.isin(seg, [v + ontology.LEFT_OFFSET for v in present]).any()  # no left label on a right leg
    scores = {ontology.name_of(v): dice(seg == v, truth == v) for v in present}
    assert np.mean(list(scores.values())) >= JOB_DICE_FLOOR, scores
    rows = (case / "volumes.csv").read_text().splitlines()
    assert len(rows) - 1 == len(np.unique(seg)) - 1


def test_a_second_run_skips_and_a_bad_file_fails_alone(calf_job, tmp_path):
    code, case, source = calf_job
    inp = source.parent
    (inp / "broken.nii.gz").write_bytes(source.read_bytes()[:5000])
    out = case.parent
    stamp = (case / "report.json").stat().st_mtime_ns
    code = main(["segment", str(inp), "-o", str(out), "--model", "calf_mri", "--quiet"])
    assert code == 1  # one case failed
    assert (case / "report.json").stat().st_mtime_ns == stamp  # finished case not redone
    report = {r["case_id"]: r for r in json.loads((out / "batch_report.json").read_text())["cases"]}
    assert report["calf_right"]["status"] == "skipped"
    assert report["broken"]["status"] == "failed" and "broken.nii.gz" in report["broken"]["reason"]
    assert not (out / "broken").exists()
    (inp / "broken.nii.gz").unlink()


def _cohort(tmp_path: Path, n: int) -> Path:
    inp = tmp_path / "cohort"
    inp.mkdir()
    for i in range(n):
        shutil.copy(CALF / "twoLegs_x80-160.nii.gz", inp / f"subject{i:02d}.nii.gz")
    return inp


def _job(inp: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "muscle_pipeline", "segment", str(inp), "-o", str(out),
                             "--model", "calf_mri", "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))


def _complete(out: Path) -> list[str]:
    done = []
    for d in sorted(p for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")):
        report = d / "report.json"
        # A visible case folder must always be whole.
        assert report.is_file(), f"{d} is visible but has no report"
        assert json.loads(report.read_text())["status"] == "complete"
        assert all((d / name).is_file() for name in CASE_FILES), d
        done.append(d.name)
    return done


def test_sigkill_mid_batch_then_rerun_finishes_every_case(tmp_path):
    inp, out = _cohort(tmp_path, 4), tmp_path / "out"
    job = _job(inp, out)
    deadline = time.time() + 240
    # kill the job as soon as its first case is finished
    while not (out.is_dir() and _complete(out)):
        assert job.poll() is None, "the job ended before it could be killed: " + job.stderr.read().decode()[-2000:]
        assert time.time() < deadline, "no case finished within 240 s"
        time.sleep(0.05)
    os.kill(job.pid, signal.SIGKILL)
    job.wait()
    cases = [f"subject{i:02d}" for i in range(4)]
    done_at_kill = _complete(out)  # each visible folder whole, checked by _complete
    # killed mid-batch, so the rerun has work left
    assert len(done_at_kill) < 4, done_at_kill
    # cases run in id order: what finished is the first cases, and the only staging folders
    # left behind are the interrupted case's (hidden, so they never look like a case)
    assert done_at_kill == cases[: len(done_at_kill)], done_at_kill
    interrupted = cases[len(done_at_kill)]
    assert all(t.name.startswith(f".tmp-{interrupted}-") for t in out.glob(".tmp-*")), list(out.glob(".tmp-*"))
    # whatever batch report is on disk (none: a run writes it at its end) claims no finished
    # case that is not
    claimed = (json.loads((out / "batch_report.json").read_text())["cases"]
               if (out / "batch_report.json").exists() else [])
    assert {r["case_id"] for r in claimed if r["status"] == "complete"} <= set(done_at_kill), claimed
    finished = {c: (out / c / "report.json").stat() for c in done_at_kill}
    rerun = _job(inp, out)
    _, err = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, err.decode()[-2000:]
    assert _complete(out) == cases
    assert not list(out.glob(".tmp-*"))
    # the rerun skips exactly the finished cases, leaving their folders as they were, and
    # does the rest, the interrupted one included
    report = {r["case_id"]: r["status"] for r in json.loads((out / "batch_report.json").read_text())["cases"]}
    assert report == {c: "skipped" if c in done_at_kill else "complete" for c in cases}, report
    for c, before in finished.items():
        after = (out / c / "report.json").stat()
        assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns), c


def test_two_jobs_on_one_output_folder_do_not_corrupt_each_other(tmp_path):
    inp, out = _cohort(tmp_path, 3), tmp_path / "out"
    jobs = [_job(inp, out), _job(inp, out)]
    for j in jobs:
        j.communicate(timeout=600)
    assert all(j.returncode in (0, 3) for j in jobs)
    assert _complete(out) == [f"subject{i:02d}" for i in range(3)]
    rows = (out / "cohort_volumes.csv").read_text().splitlines()
    assert len(rows) == 4 and rows[0].startswith("case_id,")


def test_header_and_anatomy_disagreeing_about_the_side_is_reported(tmp_path):
    """The real calf stored mirrored in the array with the header unchanged: its position says
    right leg, its bones (fibula lateral to the tibia) say left -> a warning in report.json."""
    import muscle_pipeline as mp

    img = nib.load(CALF / "twoLegs_x80-160.nii.gz")
    bad = tmp_path / "in" / "mirrored_header.nii.gz"
    bad.parent.mkdir()
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[::-1].copy(), img.affine), bad)
    good = tmp_path / "in" / "calf.nii.gz"
    shutil.copy(CALF / "twoLegs_x80-160.nii.gz", good)
    results = {r.case_id: r for r in mp.segment([bad.parent], tmp_path / "out", model="calf_mri", progress=False)}
    flagged = json.loads((tmp_path / "out" / "mirrored_header" / "report.json").read_text())
    assert any("anatomy" in w and "looks left" in w for w in flagged["warnings"])
    assert flagged["legs"][0]["anatomical_side"] == "left"
    clean = results["calf"].details
    assert clean["legs"][0]["anatomical_side"] == "right"
    assert not any("anatomy" in w for w in clean["warnings"])


def test_dicom_input_gets_a_dicom_seg_matching_the_label_map(tmp_path):
    """The real calf written as a DICOM series: the job reads it, writes the NIfTI label map on
    the series' grid and a DICOM-SEG whose frames (read back with highdicom) carry the same
    labels on the right source images."""
    import highdicom as hd
    import pydicom

    import muscle_pipeline as mp
    from orientations import write_dicom_series

    img = nib.load(CALF / "twoLegs_x80-160.nii.gz")
    files = write_dicom_series(np.asarray(img.dataobj).round().astype(np.int16), img.affine, tmp_path / "in" / "calf")
    (result,) = mp.segment([tmp_path / "in"], tmp_path / "out", model="calf_mri", progress=False)
    assert result.status == "complete", result.reason
    case = Path(result.output)
    seg_nii = np.asarray(nib.load(case / "segmentation.nii.gz").dataobj)
    seg = hd.seg.segread(str(case / "segmentation.dcm"))
    names = {d.SegmentNumber: d.SegmentLabel for d in seg.SegmentSequence}
    values = {n: ontology.value_of(label) for n, label in names.items()}
    assert set(values.values()) == set(np.unique(seg_nii)) - {0}
    uids = [pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files]  # slice k = file k
    frames = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=sorted(values),
                                               assert_missing_frames_are_empty=True)
    for k in range(seg_nii.shape[2]):
        expected = np.stack([(seg_nii[:, :, k] == values[n]).T for n in sorted(values)], axis=-1)
        np.testing.assert_array_equal(frames[k], expected)
