"""Folder jobs over cohorts: resumable, failure-isolated, shardable, with overlapped loading.

``run_batch`` takes discovered cases and a per-case function. For each case of this shard it
takes the case's lock, skips it if already complete (unless ``overwrite``), loads the scan (the
next case is read in a background thread while the current one computes), calls the function
inside a staged temporary folder and renames the folder into place when it returns. A failing
case is recorded with its reason and the batch goes on; a case the function rejects
(:class:`~muscle_pipeline.errors.CaseRejected`: no model fits it) is recorded as ``rejected``.
The console gets one line per failed or rejected case and per warning of a finished case.

At the end ``batch_report.csv/json`` and the cohort table ``cohort_volumes.csv`` (the complete
cases of these inputs × structure, mL) are written. Each run (shard) first writes its rows to its
own part file under ``.batch_reports/``; the reports are then rebuilt from every part, latest row
per case winning, under a lock over the output folder, so shard jobs sharing an output folder
add up instead of overwriting each other. Problems with the output folder itself (a file in its
place, read-only, disk full) raise :class:`~muscle_pipeline.errors.OutputError` naming the path.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import sys
import time
import traceback
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from muscle_pipeline import outputs
from muscle_pipeline.errors import CaseRejected, CorruptFileError, MusclePipelineError, OutputError, UsageError

log = logging.getLogger(__name__)

BATCH_REPORT_COLUMNS = ["case_id", "status", "seconds", "output", "reason", "warnings", "sources"]


@dataclass
class CaseResult:
    case_id: str
    status: str  # "complete" | "skipped" (already complete) | "failed" | "rejected" | "locked"
    output: str | None = None
    reason: str | None = None
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    # Files discovery skipped in the folders of the case's DICOM series ({"path", "reason"}).
    skipped_files: list[dict] = field(default_factory=list)
    details: dict = field(default_factory=dict)  # what the per-case function returned


@dataclass
class BatchReport:
    results: list[CaseResult]
    output_dir: str

    @property
    def failed(self) -> list[CaseResult]:
        return [r for r in self.results if r.status == "failed"]

    @property
    def rejected(self) -> list[CaseResult]:
        return [r for r in self.results if r.status == "rejected"]

    @property
    def exit_code(self) -> int:
        """0 when every case of the shard is complete; 1 when any failed; else 4 when any was
        rejected (no model fits it); else 3 when only locked (another job is running them) remain."""
        if self.failed:
            return 1
        if self.rejected:
            return 4
        return 3 if any(r.status == "locked" for r in self.results) else 0


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"i/n"`` (1-based i, as SLURM/Kubernetes array indices are usually given +1) or None."""
    if not text:
        return None
    try:
        i, n = (int(p) for p in text.split("/"))
    except ValueError:
        raise UsageError(f"--shard must look like i/n (e.g. 2/8), got {text!r}") from None
    if not (n >= 1 and 1 <= i <= n):
        raise UsageError(f"--shard {text}: need 1 <= i <= n (i counts from 1)")
    return i, n


def in_shard(case_id: str, shard: tuple[int, int] | None) -> bool:
    """Stable assignment by a hash of the case id, so every node computes the same split from
    its own discovery, whatever the listing order, and shards never overlap."""
    if shard is None:
        return True
    i, n = shard
    digest = int(hashlib.sha1(case_id.encode()).hexdigest()[:12], 16)
    return digest % n == i - 1


def run_batch(
    cases: Sequence,
    output_dir: str | Path,
    process: Callable,
    load: Callable,
    overwrite: bool = False,
    shard: tuple[int, int] | None = None,
    progress: bool = True,
    write_reports: bool = True,
    skipped: Sequence = (),
) -> BatchReport:
    """Run ``process(case, image, folder, stage) -> dict`` for every case of the shard.

    ``load(case)`` reads the scan (run one case ahead in a thread). ``folder`` is the staged
    temporary case folder to write into; ``stage(name)`` reports the current stage for the
    progress bar. The dict returned may hold ``warnings`` (list of str) and anything else; it is
    kept in ``CaseResult.details``. ``process`` or ``load`` raising
    :class:`~muscle_pipeline.errors.CaseRejected` makes the case ``rejected`` (no folder; tried
    again on the next run). A case with damaged DICOM files beside its series
    (``case.damaged_neighbours``) fails without being read.

    ``skipped``: the :class:`~muscle_pipeline.io.SkippedFile` notes of discovery; they become
    ``ignored`` rows of ``batch_report.csv`` and ``skipped_files`` of ``batch_report.json``.
    ``cases`` should be every case of the inputs (not only this shard's): the merged batch report
    and the cohort table cover exactly those. Raises :class:`OutputError` when the output folder
    cannot be created or written.
    """
    from tqdm.auto import tqdm

    if shard is not None and not (len(shard) == 2 and 1 <= shard[0] <= shard[1]):
        raise UsageError(f"shard {shard!r}: need (i, n) with 1 <= i <= n (i counts from 1)")
    output_dir = outputs.prepare_output_dir(output_dir)
    mine = [c for c in cases if in_shard(c.case_id, shard)]
    results: list[CaseResult] = []
    todo = []
    for case in mine:
        if not overwrite and not outputs.case_id_problem(case.case_id) and outputs.is_complete(output_dir, case.case_id):
            results.append(CaseResult(case.case_id, "skipped", str(outputs.case_dir(output_dir, case.case_id)),
                                      "already complete", sources=[str(p) for p in case.paths],
                                      skipped_files=_notes_beside(case)))
        else:
            todo.append(case)

    bar = tqdm(total=len(todo), desc="cases", unit="case", disable=not progress)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch") as pool:
        pending = pool.submit(_safe_load, load, todo[0]) if todo else None
        for k, case in enumerate(todo):
            loaded = pending.result()
            pending = pool.submit(_safe_load, load, todo[k + 1]) if k + 1 < len(todo) else None
            bar.set_postfix_str(f"{case.case_id}: start")

            def stage(name: str, _case=case) -> None:
                bar.set_postfix_str(f"{_case.case_id}: {name}")

            results.append(_run_one(case, loaded, output_dir, process, stage, overwrite))
            for line in _console_lines(results[-1]):
                tqdm.write(line, file=sys.stderr)
            bar.update(1)
    bar.close()
    report = BatchReport(results, str(output_dir))
    if write_reports:
        ids = [c.case_id for c in cases]
        try:
            write_batch_report(report, output_dir, case_ids=ids, skipped=skipped)
            write_cohort_table(output_dir, case_ids=ids)
        except OSError as exc:  # e.g. the lock or parts folder cannot be created
            raise OutputError(exc.filename or output_dir, f"cannot write the batch reports ({_why(exc)})") from None
    return report


def _console_lines(result: CaseResult) -> list[str]:
    """One line per failed or rejected case, one per warning of a finished case."""
    if result.status == "failed":
        return [f"FAILED {result.case_id}: {_one_line(result.reason)}"]
    if result.status == "rejected":
        return [f"REJECTED {result.case_id}: {_one_line(result.reason)}"]
    if result.status == "complete":
        return [f"WARNING {result.case_id}: {_one_line(w)}" for w in result.warnings]
    return []


def _one_line(text) -> str:
    return " ".join(str(text).split())


def _why(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__


def _notes_beside(case) -> list[dict]:
    return [_note(n) for n in getattr(case, "skipped_beside", ())]


def _note(note) -> dict:
    if isinstance(note, dict):
        return {"path": str(note["path"]), "reason": str(note["reason"])}
    return {"path": str(note.path), "reason": str(note.reason)}


def _lost_slices(case) -> MusclePipelineError | None:
    """A series with damaged DICOM files beside it most likely lost those slices (an interrupted
    copy cuts the first or last ones): reading it would silently give a shorter scan."""
    damaged = getattr(case, "damaged_neighbours", ())
    if not damaged:
        return None
    listed = ", ".join(f"{n.path.name} ({n.reason})" for n in damaged)
    return CorruptFileError(None, f"series lost slices: {len(damaged)} damaged file(s) beside it: {listed}")


def _safe_load(load: Callable, case):
    try:
        lost = _lost_slices(case)
        if lost is not None:
            return ("error", lost)  # not read at all
        return ("ok", load(case))
    except Exception as exc:  # reported for this case only; the batch goes on
        return ("error", exc)


def _run_one(case, loaded, output_dir: Path, process: Callable, stage: Callable, overwrite: bool) -> CaseResult:
    sources = [str(p) for p in case.paths]
    beside = _notes_beside(case)
    start = time.perf_counter()
    problem = outputs.case_id_problem(case.case_id)
    if problem:
        return CaseResult(case.case_id, "failed", None, problem, sources=sources, skipped_files=beside)
    try:
        with outputs.case_lock(output_dir, case.case_id):
            # Re-check under the lock: another job may have finished it meanwhile.
            if not overwrite and outputs.is_complete(output_dir, case.case_id):
                return CaseResult(case.case_id, "skipped", str(outputs.case_dir(output_dir, case.case_id)),
                                  "already complete", sources=sources, skipped_files=beside)
            outputs.remove_stale_temporaries(output_dir, case.case_id)
            kind, value = loaded
            if kind == "error":
                raise value
            with outputs.staged_case_dir(output_dir, case.case_id, overwrite=overwrite) as folder:
                details = process(case, value, folder, stage) or {}
            return CaseResult(case.case_id, "complete", str(outputs.case_dir(output_dir, case.case_id)),
                              seconds=round(time.perf_counter() - start, 3),
                              warnings=list(details.get("warnings", [])), sources=sources, skipped_files=beside,
                              details=details)
    except outputs.CaseLocked as exc:
        return CaseResult(case.case_id, "locked", None, str(exc), sources=sources, skipped_files=beside)
    except CaseRejected as exc:  # reads fine, but no chosen model fits it: not segmented
        return CaseResult(case.case_id, "rejected", None, _one_line(exc), round(time.perf_counter() - start, 3),
                          sources=sources, skipped_files=beside)
    except MusclePipelineError as exc:
        return CaseResult(case.case_id, "failed", None, _one_line(exc), round(time.perf_counter() - start, 3),
                          sources=sources, skipped_files=beside)
    except Exception as exc:  # an unexpected bug must not stop a cohort: record it in full
        log.debug("case %s failed:\n%s", case.case_id, traceback.format_exc())
        return CaseResult(case.case_id, "failed", None, _one_line(f"{type(exc).__name__}: {exc}"),
                          round(time.perf_counter() - start, 3), sources=sources, skipped_files=beside)


def write_batch_report(report: BatchReport, output_dir: Path, case_ids: Sequence[str] | None = None,
                       skipped: Sequence = ()) -> None:
    """Record this run's rows and rebuild ``batch_report.csv/json`` from every run's rows.

    This run's rows go to a new part file under ``.batch_reports/``; the reports then hold, for
    each id of ``case_ids`` (default: this run's cases), the latest row any run or shard wrote
    (a ``locked`` row never hides another job's row), plus one ``ignored`` row per file in
    ``skipped``. Parts no longer holding any case's latest row are deleted. All of it happens
    under a lock over the output folder, so jobs sharing it do not interleave.
    """
    output_dir = Path(output_dir)
    rows = [_report_row(r) for r in report.results]
    ids = sorted(set(case_ids if case_ids is not None else (r["case_id"] for r in rows)))
    notes = [_note(n) for n in skipped]
    parts_dir = output_dir / outputs.REPORT_PARTS_DIR
    (output_dir / outputs.LOCK_DIR).mkdir(exist_ok=True)
    with outputs.output_lock(output_dir):
        parts_dir.mkdir(exist_ok=True)
        part = parts_dir / f"{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:6]}.json"
        _write_out(part, json.dumps({"output_dir": report.output_dir, "cases": rows}, default=str) + "\n")
        latest = _merge_parts(parts_dir, keep=part)
        merged = [latest[i] for i in ids if i in latest]
        _write_out(output_dir / outputs.BATCH_REPORT_JSON,
                   json.dumps({"output_dir": report.output_dir, "cases": merged, "skipped_files": notes},
                              indent=2, default=str) + "\n")
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(BATCH_REPORT_COLUMNS)
        for row in merged:
            writer.writerow([row["case_id"], row["status"], row["seconds"], row["output"] or "", row["reason"] or "",
                             " | ".join(row["warnings"]), " | ".join(row["sources"])])
        for note in notes:
            writer.writerow(["", "ignored", "", "", note["reason"], "", note["path"]])
        _write_out(output_dir / outputs.BATCH_REPORT_CSV, buf.getvalue())


def _report_row(result: CaseResult) -> dict:
    row = asdict(result)
    row.pop("details", None)
    return row


def _merge_parts(parts_dir: Path, keep: Path) -> dict[str, dict]:
    """Latest row per case id over the part files (named so that names sort by time); deletes
    parts that hold no case's latest row any more (``keep`` apart)."""
    latest: dict[str, dict] = {}
    owner: dict[str, Path] = {}
    parts = sorted(parts_dir.glob("*.json"))
    for part in parts:
        try:
            rows = json.loads(part.read_text())["cases"]
        except (OSError, ValueError, KeyError, TypeError):
            continue  # unreadable part: ignored (and removed below)
        for row in rows:
            case_id = row.get("case_id")
            if not case_id or (row.get("status") == "locked" and case_id in latest):
                continue  # "locked" means another job has it: that job's row tells the outcome
            latest[case_id] = row
            owner[case_id] = part
    needed = set(owner.values()) | {keep}
    for part in parts:
        if part not in needed:
            part.unlink(missing_ok=True)
    return latest


def _write_out(path: Path, text: str) -> Path:
    try:
        return outputs.write_text_atomic(path, text)
    except OSError as exc:
        raise OutputError(path, f"cannot be written ({_why(exc)})") from None


def write_cohort_table(output_dir: Path, case_ids: Sequence[str] | None = None) -> Path:
    """``cohort_volumes.csv``: one row per complete case, one column per structure (mL), plus
    ``<name>__cut`` flags for structures touching the scan's first/last slice. With ``case_ids``
    only those cases (the inputs of this run, finished now or earlier) are listed; without,
    every complete case folder under ``output_dir``."""
    output_dir = Path(output_dir)
    if case_ids is None:
        candidates = sorted(p.name for p in output_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    else:
        candidates = sorted(set(case_ids))
    per_case: dict[str, dict[str, str]] = {}
    names: dict[str, int] = {}
    for case_id in candidates:
        case_folder = outputs.case_dir(output_dir, case_id)
        if outputs.case_id_problem(case_id) or not outputs.is_complete(output_dir, case_id):
            continue
        vol_csv = case_folder / "volumes.csv"
        if not vol_csv.is_file():
            continue
        with vol_csv.open() as f:
            row = {}
            for r in csv.DictReader(f):
                row[r["name"]] = r["volume_ml"]
                row[r["name"] + "__cut"] = r["touches_border"]
                names[r["name"]] = int(r["value"])
            per_case[case_folder.name] = row
    ordered = sorted(names, key=names.get)
    columns = [c for n in ordered for c in (n, n + "__cut")]
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["case_id"] + columns)
    for case_id, row in per_case.items():
        writer.writerow([case_id] + [row.get(c, "") for c in columns])
    return _write_out(output_dir / outputs.COHORT_TABLE, buf.getvalue())


def results_as_json(report: BatchReport) -> str:
    return json.dumps([asdict(r) for r in report.results], indent=2, default=str)
