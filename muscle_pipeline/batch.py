"""Folder jobs over cohorts: resumable, failure-isolated, shardable, with overlapped loading.

``run_batch`` takes discovered cases and a per-case function. For each case of this shard it
takes the case's lock, skips it if already complete (unless ``overwrite``), loads the scan (the
next case is read in a background thread while the current one computes), calls the function
inside a staged temporary folder and renames the folder into place when it returns. A failing
case is recorded with its reason and the batch goes on. At the end ``batch_report.csv/json``
and the cohort table ``cohort_volumes.csv`` (every complete case × structure, mL) are written.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from muscle_pipeline import outputs
from muscle_pipeline.errors import MusclePipelineError

log = logging.getLogger(__name__)

BATCH_REPORT_COLUMNS = ["case_id", "status", "seconds", "output", "reason", "warnings", "sources"]


@dataclass
class CaseResult:
    case_id: str
    status: str  # "complete" | "skipped" (already complete) | "failed" | "locked"
    output: str | None = None
    reason: str | None = None
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    details: dict = field(default_factory=dict)  # what the per-case function returned


@dataclass
class BatchReport:
    results: list[CaseResult]
    output_dir: str

    @property
    def failed(self) -> list[CaseResult]:
        return [r for r in self.results if r.status == "failed"]

    @property
    def exit_code(self) -> int:
        """0 when every case of the shard is complete; 1 when any failed; 3 when only locked
        (another job is running them) remain."""
        if self.failed:
            return 1
        return 3 if any(r.status == "locked" for r in self.results) else 0


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"i/n"`` (1-based i, as SLURM/Kubernetes array indices are usually given +1) or None."""
    if not text:
        return None
    try:
        i, n = (int(p) for p in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard must look like i/n (e.g. 2/8), got {text!r}") from None
    if not (n >= 1 and 1 <= i <= n):
        raise ValueError(f"--shard {text}: need 1 <= i <= n")
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
) -> BatchReport:
    """Run ``process(case, image, folder, stage) -> dict`` for every case of the shard.

    ``load(case)`` reads the scan (run one case ahead in a thread). ``folder`` is the staged
    temporary case folder to write into; ``stage(name)`` reports the current stage for the
    progress bar. The dict returned may hold ``warnings`` (list of str) and anything else; it is
    kept in ``CaseResult.details``.
    """
    from tqdm.auto import tqdm

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    mine = [c for c in cases if in_shard(c.case_id, shard)]
    results: list[CaseResult] = []
    todo = []
    for case in mine:
        if not overwrite and outputs.is_complete(output_dir, case.case_id):
            results.append(CaseResult(case.case_id, "skipped", str(outputs.case_dir(output_dir, case.case_id)),
                                      "already complete", sources=[str(p) for p in case.paths]))
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
            status = results[-1]
            if status.status == "failed":
                tqdm.write(f"FAILED {case.case_id}: {status.reason}")
            bar.update(1)
    bar.close()
    report = BatchReport(results, str(output_dir))
    if write_reports:
        write_batch_report(report, output_dir)
        write_cohort_table(output_dir)
    return report


def _safe_load(load: Callable, case):
    try:
        return ("ok", load(case))
    except Exception as exc:  # reported for this case only; the batch goes on
        return ("error", exc)


def _run_one(case, loaded, output_dir: Path, process: Callable, stage: Callable, overwrite: bool) -> CaseResult:
    sources = [str(p) for p in case.paths]
    start = time.perf_counter()
    try:
        with outputs.case_lock(output_dir, case.case_id):
            # Re-check under the lock: another job may have finished it meanwhile.
            if not overwrite and outputs.is_complete(output_dir, case.case_id):
                return CaseResult(case.case_id, "skipped", str(outputs.case_dir(output_dir, case.case_id)),
                                  "already complete", sources=sources)
            outputs.remove_stale_temporaries(output_dir, case.case_id)
            kind, value = loaded
            if kind == "error":
                raise value
            with outputs.staged_case_dir(output_dir, case.case_id, overwrite=overwrite) as folder:
                details = process(case, value, folder, stage) or {}
            return CaseResult(case.case_id, "complete", str(outputs.case_dir(output_dir, case.case_id)),
                              seconds=round(time.perf_counter() - start, 3),
                              warnings=list(details.get("warnings", [])), sources=sources, details=details)
    except outputs.CaseLocked as exc:
        return CaseResult(case.case_id, "locked", None, str(exc), sources=sources)
    except MusclePipelineError as exc:
        return CaseResult(case.case_id, "failed", None, str(exc), round(time.perf_counter() - start, 3),
                          sources=sources)
    except Exception as exc:  # an unexpected bug must not stop a cohort: record it in full
        log.debug("case %s failed:\n%s", case.case_id, traceback.format_exc())
        return CaseResult(case.case_id, "failed", None, f"{type(exc).__name__}: {exc}",
                          round(time.perf_counter() - start, 3), sources=sources)


def write_batch_report(report: BatchReport, output_dir: Path) -> None:
    rows = [asdict(r) for r in report.results]
    for row in rows:
        row.pop("details", None)
    outputs.write_json(output_dir / "batch_report.json", {"output_dir": report.output_dir, "cases": rows})
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(BATCH_REPORT_COLUMNS)
    for row in rows:
        writer.writerow([row["case_id"], row["status"], row["seconds"], row["output"] or "", row["reason"] or "",
                         " | ".join(row["warnings"]), " | ".join(row["sources"])])
    outputs.write_text_atomic(output_dir / "batch_report.csv", buf.getvalue())


def write_cohort_table(output_dir: Path) -> Path:
    """``cohort_volumes.csv``: one row per complete case, one column per structure (mL), plus
    ``<name>__cut`` flags for structures touching the scan's first/last slice."""
    per_case: dict[str, dict[str, str]] = {}
    names: dict[str, int] = {}
    for case_folder in sorted(p for p in output_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if not outputs.is_complete(output_dir, case_folder.name):
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
    return outputs.write_text_atomic(output_dir / "cohort_volumes.csv", buf.getvalue())


def results_as_json(report: BatchReport) -> str:
    return json.dumps([asdict(r) for r in report.results], indent=2, default=str)
