"""Red-team findings of issue 16 against the folder job (batch.py, outputs.py, io/discover.py).

Each test pins one finding on small inputs written here (tiny NIfTI files, or copies of the real
DICOM series with one file damaged) and a trivial per-case function, so the module needs no model.
"""
from __future__ import annotations

import csv
import errno
import json
import os
import pathlib
import shutil
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from muscle_pipeline import outputs
from muscle_pipeline.batch import in_shard, run_batch
from muscle_pipeline.cli import main
from muscle_pipeline.errors import CaseRejected, InputError, MusclePipelineError, OutputError
from muscle_pipeline.io import Case, SkippedFile, discover

DICOM_SERIES = "totalsegmentator/ct_dicom_upper_abdomen/example_ct_dicom"


def tiny_nifti(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.arange(24, dtype=np.int16).reshape(2, 3, 4), np.eye(4)), path)
    return path


def load_name(case):
    return case.case_id  # stands in for the image: batch behaviour needs no voxels


def complete_case(case, image, folder, stage):
    """What a finished case leaves: volumes.csv (for the cohort table) and a complete report."""
    (folder / "volumes.csv").write_text("value,name,volume_ml,touches_border\n70,subcutaneous_fat,1.5,false\n")
    tiny_nifti(folder / "segmentation.nii.gz")
    outputs.write_json(folder / "report.json", {"status": "complete", "case_id": case.case_id})
    return {}


def rows_of(out: Path) -> list[dict]:
    return list(csv.DictReader((out / "batch_report.csv").open()))


def status_of(out: Path) -> dict[str, str]:
    return {r["case_id"]: r["status"] for r in rows_of(out) if r["status"] != "ignored"}


def nifti_case(path: Path, case_id: str) -> Case:
    return Case(case_id=case_id, paths=(path,), format="nifti")


# ---------------------------------------------------------------------------------------------- A
def test_a_rejected_case_is_rejected_not_failed_and_is_retried(tmp_path):
    inp = tmp_path / "in"
    for name in ("good", "hand"):
        tiny_nifti(inp / f"{name}.nii.gz")
    calls: list[str] = []

    def process(case, image, folder, stage):
        calls.append(case.case_id)
        if case.case_id == "hand":
            raise CaseRejected(case.paths[0], "no lower limb in the field of view")
        return complete_case(case, image, folder, stage)

    out = tmp_path / "out"
    report = run_batch(discover(inp), out, process, load=load_name, progress=False)
    result = {r.case_id: r for r in report.results}
    assert result["hand"].status == "rejected"
    assert "no lower limb" in result["hand"].reason and "\n" not in result["hand"].reason
    assert not (out / "hand").exists() and not list(out.glob(".tmp-hand-*"))
    assert status_of(out) == {"good": "complete", "hand": "rejected"}
    assert report.exit_code == 4

    again = run_batch(discover(inp), out, process, load=load_name, progress=False)
    assert {r.case_id: r.status for r in again.results} == {"good": "skipped", "hand": "rejected"}
    assert calls.count("hand") == 2  # retried, not taken as complete

    def load_rejects(case):
        raise CaseRejected(case.paths[0], "a photo of a hand")

    tiny_nifti(inp / "bad.nii.gz")
    mixed = run_batch(discover(inp), tmp_path / "out2", process,
                      load=lambda c: 1 / 0 if c.case_id == "bad" else load_rejects(c), progress=False)
    assert {r.case_id: r.status for r in mixed.results} == {"bad": "failed", "good": "rejected", "hand": "rejected"}
    assert mixed.exit_code == 1  # any failed wins over rejected
    assert not (tmp_path / "out2" / "good").exists()


# ---------------------------------------------------------------------------------------------- B
def test_console_has_one_line_per_failed_rejected_case_and_per_warning(tmp_path, capsys):
    inp = tmp_path / "in"
    for name in ("broken", "hand", "warned"):
        tiny_nifti(inp / f"{name}.nii.gz")

    def process(case, image, folder, stage):
        if case.case_id == "broken":
            raise InputError(case.paths[0], "truncated gzip")
        if case.case_id == "hand":
            raise CaseRejected(case.paths[0], "not a lower limb")
        complete_case(case, image, folder, stage)
        return {"warnings": ["cut by the field of view", "one leg only"]}

    run_batch(discover(inp), tmp_path / "out", process, load=load_name, progress=False)
    captured = capsys.readouterr()
    err = captured.err.splitlines()
    assert [line for line in err if line.startswith("FAILED")] == [f"FAILED broken: {inp / 'broken.nii.gz'}: truncated gzip"]
    assert [line for line in err if line.startswith("REJECTED")] == [f"REJECTED hand: {inp / 'hand.nii.gz'}: not a lower limb"]
    assert [line for line in err if line.startswith("WARNING")] == [
        "WARNING warned: cut by the field of view", "WARNING warned: one leg only"]
    assert not any(word in captured.out for word in ("FAILED", "REJECTED", "WARNING"))


# ---------------------------------------------------------------------------------------------- C
def _series_with_damaged_end(shared_data: Path, folder: Path) -> tuple[Path, Path]:
    """The real CT series copied, its first and last slice (by position) cut short as an
    interrupted copy leaves them."""
    folder.mkdir(parents=True)
    z = {}
    for source in sorted((shared_data / DICOM_SERIES).iterdir()):
        shutil.copy(source, folder / source.name)
        z[source.name] = float(pydicom.dcmread(source, stop_before_pixels=True).ImagePositionPatient[2])
    first, last = (folder / min(z, key=z.get)), (folder / max(z, key=z.get))
    for path in (first, last):
        path.write_bytes(path.read_bytes()[:2000])
    return first, last


def test_a_series_that_lost_its_end_slices_fails_naming_the_damaged_files(shared_data, tmp_path):
    inp = tmp_path / "in"
    first, last = _series_with_damaged_end(shared_data, inp / "ct")
    (inp / "notes.txt").write_text("not a scan")
    tiny_nifti(inp / "other" / "leg.nii.gz")

    skipped: list[SkippedFile] = []
    cases = discover(inp, skipped)
    (series,) = [c for c in cases if c.format == "dicom"]
    assert len(series.paths) == 18
    assert {s.path for s in series.damaged_neighbours} == {first, last}
    assert not [c for c in cases if c.format == "nifti"][0].damaged_neighbours

    out = tmp_path / "out"
    report = run_batch(cases, out, complete_case, load=load_name, progress=False, skipped=skipped)
    result = {r.case_id: r for r in report.results}
    lost = result[series.case_id]
    assert lost.status == "failed" and report.exit_code == 1
    assert lost.reason.startswith("series lost slices: 2 damaged file(s) beside it: ")
    assert first.name in lost.reason and last.name in lost.reason
    assert {Path(s["path"]) for s in lost.skipped_files} == {first, last}
    assert result["other_leg"].status == "complete"

    ignored = {Path(r["sources"]): r["reason"] for r in rows_of(out) if r["status"] == "ignored"}
    assert set(ignored) == {first, last, inp / "notes.txt"}
    assert "not an image file" in ignored[inp / "notes.txt"]
    listed = json.loads((out / "batch_report.json").read_text())["skipped_files"]
    assert {Path(s["path"]) for s in listed} == set(ignored)


# ---------------------------------------------------------------------------------------------- D
def test_case_ids_stay_the_same_when_files_are_added(tmp_path):
    inp = tmp_path / "in"
    tiny_nifti(inp / "visit1" / "scan.nii.gz")
    tiny_nifti(inp / "top.nii.gz")
    out = tmp_path / "out"
    first = run_batch(discover(inp), out, complete_case, load=load_name, progress=False)
    ids = sorted(r.case_id for r in first.results)

    tiny_nifti(inp / "visit2" / "scan.nii.gz")  # same file name in another folder
    tiny_nifti(inp / "visit1" / "sub" / "scan.nii.gz")
    again = run_batch(discover(inp), out, complete_case, load=load_name, progress=False)
    status = {r.case_id: r.status for r in again.results}
    assert all(status[i] == "skipped" for i in ids), status  # resume recognises the earlier cases
    assert len(status) == 4 and sum(s == "complete" for s in status.values()) == 2
    assert all(outputs.case_dir(out, i).is_dir() for i in status)
    assert all(i == i.strip("._") and "/" not in i for i in status)
    # A file passed directly keeps its stem.
    assert [c.case_id for c in discover(inp / "visit2" / "scan.nii.gz")] == ["scan"]


def test_an_output_folder_inside_the_input_is_never_read_back(tmp_path):
    inp = tmp_path / "in"
    tiny_nifti(inp / "leg.nii.gz")
    out = inp / "results"
    run_batch(discover(inp, exclude=[out]), out, complete_case, load=load_name, progress=False)
    assert (out / "leg" / "segmentation.nii.gz").is_file()

    skipped: list[SkippedFile] = []
    assert [c.case_id for c in discover(inp, skipped, exclude=[out])] == ["leg"]
    assert [s.path for s in skipped] == [out]
    # Without being told, a folder holding a muscle_pipeline output is recognised and skipped.
    skipped.clear()
    assert [c.case_id for c in discover(inp, skipped)] == ["leg"]
    assert [s.path for s in skipped] == [out] and "output" in skipped[0].reason
    with pytest.raises(MusclePipelineError):  # an input inside the output folder: nothing to read
        discover(out / "leg", exclude=[out])
    moved = inp / "old_run"
    out.rename(moved)
    (moved / "batch_report.json").unlink()  # .locks alone marks it too
    assert [c.case_id for c in discover(inp)] == ["leg"]


def test_cohort_table_holds_only_the_cases_of_these_inputs(tmp_path):
    out = tmp_path / "out"
    tiny_nifti(tmp_path / "study1" / "a.nii.gz")
    tiny_nifti(tmp_path / "study2" / "b.nii.gz")
    run_batch(discover(tmp_path / "study1"), out, complete_case, load=load_name, progress=False)
    run_batch(discover(tmp_path / "study2"), out, complete_case, load=load_name, progress=False)
    cohort = [r["case_id"] for r in csv.DictReader((out / "cohort_volumes.csv").open())]
    assert cohort == ["b"]
    tiny_nifti(tmp_path / "study2" / "c.nii.gz")
    run_batch(discover(tmp_path / "study2"), out, complete_case, load=load_name, progress=False)
    cohort = [r["case_id"] for r in csv.DictReader((out / "cohort_volumes.csv").open())]
    assert cohort == ["b", "c"]  # b complete from the earlier run of the same input


# ---------------------------------------------------------------------------------------------- E
def test_two_shard_jobs_merge_their_batch_reports(tmp_path):
    inp = tmp_path / "in"
    names = [f"s{i:02d}" for i in range(12)]
    for name in names:
        tiny_nifti(inp / f"{name}.nii.gz")
    one = [n for n in names if in_shard(n, (1, 2))]
    two = [n for n in names if in_shard(n, (2, 2))]
    assert one and two
    bad = one[0]

    def process(case, image, folder, stage):
        if case.case_id == bad:
            raise InputError(case.paths[0], "damaged")
        return complete_case(case, image, folder, stage)

    out = tmp_path / "out"
    assert run_batch(discover(inp), out, process, load=load_name, shard=(1, 2), progress=False).exit_code == 1
    assert run_batch(discover(inp), out, process, load=load_name, shard=(2, 2), progress=False).exit_code == 0
    status = status_of(out)
    assert set(status) == set(names)
    assert status[bad] == "failed"  # shard 2's report did not wipe shard 1's failure
    assert all(status[n] == "complete" for n in names if n != bad)
    merged = {r["case_id"]: r["status"] for r in json.loads((out / "batch_report.json").read_text())["cases"]}
    assert merged == status

    # Latest row per case wins: shard 1 re-run after the file was fixed.
    run_batch(discover(inp), out, complete_case, load=load_name, shard=(1, 2), progress=False)
    status = status_of(out)
    assert status[bad] == "complete" and all(status[n] == "skipped" for n in one if n != bad)
    assert all(status[n] == "complete" for n in two)


def test_report_rebuild_waits_for_the_other_job_and_a_bad_shard_tuple_is_refused(tmp_path):
    import threading

    scan = tiny_nifti(tmp_path / "in" / "x.nii.gz")
    out = outputs.prepare_output_dir(tmp_path / "out")
    done = []
    with outputs.output_lock(out):  # another job is rebuilding the reports
        job = threading.Thread(target=lambda: done.append(
            run_batch([nifti_case(scan, "x")], out, complete_case, load=load_name, progress=False)))
        job.start()
        job.join(timeout=1.0)
        assert job.is_alive() and not (out / "batch_report.csv").exists()
    job.join(timeout=20)
    assert done and status_of(out) == {"x": "complete"}
    with pytest.raises(MusclePipelineError, match="shard"):
        run_batch([nifti_case(scan, "x")], out, complete_case, load=load_name, shard=(0, 2), progress=False)


def test_stale_temporary_cleanup_leaves_other_cases_temporaries_alone(tmp_path):
    scan = tiny_nifti(tmp_path / "in" / "x.nii.gz")
    out = tmp_path / "out"
    theirs = [out / ".tmp-a-b-1234abcd", out / ".tmp-a_1-1234abcd", out / ".tmp-a-old-1234abcd"]
    for folder in theirs:  # another job is writing cases "a-b", "a_1" and "a-old" right now
        folder.mkdir(parents=True)
        (folder / "volumes.csv").write_text("in progress")
    mine = out / ".tmp-a-dead0000"  # what a killed job left for case "a"
    mine.mkdir()
    report = run_batch([nifti_case(scan, "a")], out, complete_case, load=load_name, progress=False)
    assert report.results[0].status == "complete"
    assert all((folder / "volumes.csv").is_file() for folder in theirs)
    assert not mine.exists()


# ---------------------------------------------------------------------------------------------- F
def _cli(capsys, *argv) -> tuple[int, str]:
    try:
        code = main(["segment", *map(str, argv), "--quiet"])
    except BaseException as exc:  # a traceback reaching the user
        pytest.fail(f"{type(exc).__name__} escaped the CLI: {exc}")
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def test_output_path_that_is_a_file_is_one_clear_error(tmp_path, capsys):
    scan = tiny_nifti(tmp_path / "in" / "leg.nii.gz")
    target = tmp_path / "results.txt"
    target.write_text("not a folder")
    code, err = _cli(capsys, scan, "-o", target)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code != 0 and len(lines) == 1 and str(target) in lines[0] and "error" in lines[0]
    assert target.read_text() == "not a folder"


def test_bad_shard_is_one_clear_error(tmp_path, capsys):
    scan = tiny_nifti(tmp_path / "in" / "leg.nii.gz")
    code, err = _cli(capsys, scan, "-o", tmp_path / "out", "--shard", "0/2")
    lines = [line for line in err.splitlines() if line.strip()]
    assert code != 0 and len(lines) == 1 and "--shard" in lines[0]


def test_read_only_output_folder_is_one_clear_error(tmp_path, monkeypatch):
    scan = tiny_nifti(tmp_path / "in" / "leg.nii.gz")
    out = tmp_path / "out"
    out.mkdir()
    # Simulated (tests may run as root, for whom chmod does not forbid writing).
    real_mkdir, real_open = os.mkdir, os.open
    writes = os.O_WRONLY | os.O_RDWR | os.O_CREAT

    def inside(path) -> bool:
        return str(out) in os.fspath(path)

    def ro_mkdir(path, *args, **kwargs):
        if inside(path):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(path))
        return real_mkdir(path, *args, **kwargs)

    def ro_open(path, flags, *args, **kwargs):
        if inside(path) and flags & writes:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", ro_mkdir)
    monkeypatch.setattr(os, "open", ro_open)
    calls = []
    with pytest.raises(OutputError) as raised:
        run_batch([nifti_case(scan, "leg")], out, lambda *a: calls.append(a), load=load_name, progress=False)
    assert str(out) in str(raised.value) and "\n" not in str(raised.value)
    assert "read-only" in str(raised.value).lower() and not calls


def test_disk_full_while_writing_reports_is_one_clear_error_and_leaves_no_half_file(tmp_path, monkeypatch):
    scan = tiny_nifti(tmp_path / "in" / "leg.nii.gz")
    out = tmp_path / "out"
    real_write_text = pathlib.Path.write_text

    def disk_full(self, text, *args, **kwargs):
        if self.parent == out or self.parent.parent == out:
            real_write_text(self, text[: len(text) // 2], *args, **kwargs)  # what fitted on the disk
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        return real_write_text(self, text, *args, **kwargs)

    def process(case, image, folder, stage):
        complete_case(case, image, folder, stage)
        monkeypatch.setattr(pathlib.Path, "write_text", disk_full)  # the disk fills up after the case
        return {}

    with pytest.raises(OutputError) as raised:
        run_batch([nifti_case(scan, "leg")], out, process, load=load_name, progress=False)
    message = str(raised.value)
    assert "No space left on device" in message and str(out) in message and "\n" not in message
    monkeypatch.undo()
    assert outputs.is_complete(out, "leg")  # the finished case stays
    assert not [p for p in out.rglob("*.tmp")], "half-written temporary report left behind"
    assert not (out / "batch_report.csv").exists() and not (out / "batch_report.json").exists()


def test_scans_named_like_the_reports_do_not_clash_with_them(tmp_path):
    inp = tmp_path / "in"
    for name in ("batch_report.csv", "batch_report.json", "cohort_volumes.csv", ".locks"):
        tiny_nifti(inp / f"{name}.nii.gz")
    out = tmp_path / "out"
    cases = discover(inp)
    reserved = {"batch_report.csv", "batch_report.json", "cohort_volumes.csv", ".locks"}
    assert len(cases) == 4 and not reserved & {c.case_id for c in cases}
    report = run_batch(cases, out, complete_case, load=load_name, progress=False)
    assert {r.status for r in report.results} == {"complete"}
    assert (out / "batch_report.csv").is_file() and (out / "cohort_volumes.csv").is_file()
    assert len(status_of(out)) == 4
    # A hand-made case whose id is a report's name fails alone; the reports are still written.
    clash = run_batch([nifti_case(inp / "batch_report.csv.nii.gz", "cohort_volumes.csv")], out, complete_case,
                      load=load_name, progress=False)
    assert clash.results[0].status == "failed" and "reserved" in clash.results[0].reason
    assert (out / "cohort_volumes.csv").is_file()


def test_missing_inputs_dangling_links_and_fifos_are_recorded_without_hanging(tmp_path):
    inp = tmp_path / "in"
    tiny_nifti(inp / "leg.nii.gz")
    (inp / "gone.nii.gz").symlink_to(tmp_path / "deleted.nii.gz")
    os.mkfifo(inp / "pipe.nii.gz")
    os.mkfifo(tmp_path / "direct_pipe")
    skipped: list[SkippedFile] = []
    cases = discover([inp, tmp_path / "missing.nii.gz", tmp_path / "direct_pipe"], skipped)
    assert [c.case_id for c in cases] == ["leg"]
    reasons = {s.path: s.reason for s in skipped}
    assert reasons == {
        inp / "gone.nii.gz": "dangling symbolic link",
        inp / "pipe.nii.gz": "not a regular file (FIFO)",
        tmp_path / "missing.nii.gz": "does not exist",
        tmp_path / "direct_pipe": "not a regular file (FIFO)",
    }
    out = tmp_path / "out"
    run_batch(cases, out, complete_case, load=load_name, progress=False, skipped=skipped)
    ignored = {r["sources"]: r["reason"] for r in rows_of(out) if r["status"] == "ignored"}
    assert ignored == {str(p): why for p, why in reasons.items()}

