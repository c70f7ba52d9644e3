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
JOB_DICE_FLOOR = 0.80


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
    while time.time() < deadline and job.poll() is None:
        if out.is_dir() and len(_complete(out)) >= 1:
            break
        time.sleep(0.05)
    assert job.poll() is None, "the job ended before it could be killed: " + job.stderr.read().decode()[-2000:]
    os.kill(job.pid, signal.SIGKILL)
    job.wait()
    done_at_kill = _complete(out)
    assert 1 <= len(done_at_kill) < 4
    rerun = _job(inp, out)
    _, err = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, err.decode()[-2000:]
    assert _complete(out) == [f"subject{i:02d}" for i in range(4)]
    assert not list(out.glob(".tmp-*"))
    report = {r["case_id"]: r["status"] for r in json.loads((out / "batch_report.json").read_text())["cases"]}
    assert all(report[c] == "skipped" for c in done_at_kill)


def test_two_jobs_on_one_output_folder_do_not_corrupt_each_other(tmp_path):
    inp, out = _cohort(tmp_path, 3), tmp_path / "out"
    jobs = [_job(inp, out), _job(inp, out)]
    for j in jobs:
        j.communicate(timeout=600)
    assert all(j.returncode in (0, 3) for j in jobs)
    assert _complete(out) == [f"subject{i:02d}" for i in range(3)]
    rows = (out / "cohort_volumes.csv").read_text().splitlines()
    assert len(rows) == 4 and rows[0].startswith("case_id,")
