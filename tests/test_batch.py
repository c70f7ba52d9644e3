"""Folder-job mechanics on real files: resumable, failure-isolated, shardable, locked, cohort table.

The per-case work here is a real but cheap computation (an Otsu body mask written as a label map
with its volumes), so these tests pin the batch semantics without a model; the end-to-end job
with the shipped model is tested in test_segment_job.py.
"""
from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
from skimage.filters import threshold_otsu

from muscle_pipeline import outputs
from muscle_pipeline.batch import in_shard, parse_shard, run_batch
from muscle_pipeline.io import discover, read_image, write_label_map
from muscle_pipeline.quantify import measure_volumes, write_volumes_csv

SUBCUT = 70  # ontology value of subcutaneous_fat: any valid value will do for the body mask


def body_mask_case(case, image, folder, stage):
    stage("threshold")
    arr = image.numpy()
    mask = (arr > threshold_otsu(arr)).astype(np.uint8) * SUBCUT
    write_label_map(mask, image, folder / "segmentation.nii.gz")
    write_volumes_csv(measure_volumes(mask, image.affine.numpy()), folder / "volumes.csv")
    outputs.write_json(folder / "report.json", {"status": "complete", "case_id": case.case_id})
    return {"warnings": ["cheap test job"]}


@pytest.fixture()
def cohort(shared_data, tmp_path):
    root = tmp_path / "in"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    shutil.copy(shared_data / "qmritools/calf_dti_labeled_half/twoLegs_x80-160.nii.gz", root / "a/calf_half.nii.gz")
    shutil.copy(shared_data / "musclemap/lumbar_mr_labeled/image.nii.gz", root / "b/lumbar.nii.gz")
    data = (shared_data / "qmritools/thigh_calf_unlabeled/test_low.nii.gz").read_bytes()
    (root / "b/truncated.nii.gz").write_bytes(data[: len(data) // 3])  # corrupt gzip
    return root


def test_batch_goes_on_after_a_bad_case_and_reports_it(cohort, tmp_path):
    out = tmp_path / "out"
    cases = discover(cohort)
    report = run_batch(cases, out, body_mask_case, load=read_image, progress=False)
    status = {r.case_id: r.status for r in report.results}
    assert status.pop("b_truncated") == "failed"
    assert set(status.values()) == {"complete"} and len(status) == 2
    assert report.exit_code == 1
    failed = report.failed[0]
    assert "truncated.nii.gz" in failed.reason  # one clear line naming the file
    assert not (out / "b_truncated").exists() and not list(out.glob(".tmp-b_truncated-*"))
    rows = list(csv.DictReader((out / "batch_report.csv").open()))
    assert {r["case_id"]: r["status"] for r in rows}["b_truncated"] == "failed"
    assert json.loads((out / "batch_report.json").read_text())["cases"]
    cohort_rows = list(csv.DictReader((out / "cohort_volumes.csv").open()))
    assert sorted(r["case_id"] for r in cohort_rows) == sorted(status)
    assert all(float(r["subcutaneous_fat"]) > 10 for r in cohort_rows)


def test_batch_resumes_and_overwrites(cohort, tmp_path):
    out = tmp_path / "out"
    cases = [c for c in discover(cohort) if c.case_id != "b_truncated"]
    first = run_batch(cases, out, body_mask_case, load=read_image, progress=False)
    assert {r.status for r in first.results} == {"complete"}
    stamp = (out / "a_calf_half" / "report.json").stat().st_mtime_ns
    again = run_batch(cases, out, body_mask_case, load=read_image, progress=False)
    assert {r.status for r in again.results} == {"skipped"} and again.exit_code == 0
    assert (out / "a_calf_half" / "report.json").stat().st_mtime_ns == stamp
    redo = run_batch(cases, out, body_mask_case, load=read_image, overwrite=True, progress=False)
    assert {r.status for r in redo.results} == {"complete"}
    assert (out / "a_calf_half" / "report.json").stat().st_mtime_ns != stamp


def test_a_half_written_case_is_redone(cohort, tmp_path):
    out = tmp_path / "out"
    cases = [c for c in discover(cohort) if c.case_id == "a_calf_half"]
    # What a killed job leaves: a temporary folder, and a case folder without a complete report.
    (out / ".tmp-a_calf_half-dead0000").mkdir(parents=True)
    (out / ".tmp-a_calf_half-dead0000" / "segmentation.nii.gz").write_bytes(b"partial")
    report = run_batch(cases, out, body_mask_case, load=read_image, progress=False)
    assert report.results[0].status == "complete"
    assert not list(out.glob(".tmp-a_calf_half-*"))
    assert outputs.is_complete(out, "a_calf_half")


def test_shards_partition_a_cohort_without_overlap(cohort, tmp_path):
    ids = [f"case{i:04d}" for i in range(400)]
    for n in (1, 3, 8):
        owners = [[i for i in range(1, n + 1) if in_shard(c, (i, n))] for c in ids]
        assert all(len(o) == 1 for o in owners)  # every case in exactly one shard
        if n > 1:
            sizes = np.bincount([o[0] for o in owners])[1:]
            assert sizes.min() > 0.5 * len(ids) / n
    assert parse_shard("2/8") == (2, 8)
    for bad in ("0/3", "4/3", "x", "1-3"):
        with pytest.raises(ValueError):
            parse_shard(bad)
    cases = [c for c in discover(cohort) if c.case_id != "b_truncated"]
    done = []
    for i in (1, 2):
        rep = run_batch(cases, tmp_path / "out", body_mask_case, load=read_image, shard=(i, 2), progress=False)
        done += [r.case_id for r in rep.results]
    assert sorted(done) == sorted(c.case_id for c in cases)


def test_a_case_locked_by_another_job_is_left_alone(cohort, tmp_path):
    out = tmp_path / "out"
    cases = [c for c in discover(cohort) if c.case_id == "a_calf_half"]
    with outputs.case_lock(out, "a_calf_half"):
        report = run_batch(cases, out, body_mask_case, load=read_image, progress=False)
    assert report.results[0].status == "locked" and report.exit_code == 3
    assert not (out / "a_calf_half").exists()
