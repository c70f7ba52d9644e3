"""The output folder of one case, written so that a half-written case never looks finished.

Layout (see docs/outputs.md)::

    <out>/<case_id>/segmentation.nii.gz   labels on the input's own grid and orientation
                    labels.json (+ labels_itksnap.txt, labels_slicer.ctbl)
                    volumes.csv           one row per structure (mL, coverage flag)
                    qc.png                axial montage + coronal view with labels and legend
                    segmentation.dcm      DICOM-SEG, when the input was a DICOM series
                    report.json           versions, model, timings, warnings — written last

Everything is written into a hidden temporary sibling folder and renamed into place with one
``os.rename`` once complete, so ``<out>/<case_id>`` exists only when the case is whole. A per-case
``flock`` keeps two jobs that share an output folder from working on the same case; the kernel
releases it when a process dies, even by SIGKILL.

Names the job itself uses at the top of the output folder (``batch_report.csv/json``,
``cohort_volumes.csv``, hidden ``.locks``/``.batch_reports``/``.tmp-*``) are never case ids
(:func:`case_id_problem`).
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path

from muscle_pipeline.errors import OutputError

REPORT_NAME = "report.json"
LOCK_DIR = ".locks"
TMP_PREFIX = ".tmp-"
REPORT_PARTS_DIR = ".batch_reports"  # one part per run / shard, merged into batch_report.csv/json
BATCH_REPORT_CSV = "batch_report.csv"
BATCH_REPORT_JSON = "batch_report.json"
COHORT_TABLE = "cohort_volumes.csv"
RESERVED_NAMES = frozenset({BATCH_REPORT_CSV, BATCH_REPORT_JSON, COHORT_TABLE, LOCK_DIR, REPORT_PARTS_DIR})
_TMP_SUFFIX = r"-[0-9a-f]{8}(\.old)?"  # .tmp-<case_id>-<8 hex>, or -<8 hex>.old for a replaced folder


def case_id_problem(case_id: str) -> str | None:
    """Why ``case_id`` cannot name a case folder, or None when it can."""
    if not case_id or case_id.startswith(".") or "/" in case_id or "\0" in case_id:
        return f"case id {case_id!r} is not a plain visible folder name"
    if case_id.lower() in RESERVED_NAMES:
        return f"case id {case_id!r} is reserved for the job's own files in the output folder"
    return None


def prepare_output_dir(output_dir: str | Path) -> Path:
    """Create the output folder (and its lock folder) and check that it can be written; raise
    :class:`OutputError` naming it otherwise (a file in its place, read-only, no permission)."""
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise OutputError(output_dir, "exists and is not a folder (the output must be a folder)")
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(output_dir, f"cannot create the output folder ({_why(exc)})") from None
    try:
        (output_dir / LOCK_DIR).mkdir(exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=output_dir)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(output_dir, f"the output folder cannot be written ({_why(exc)})") from None
    return output_dir


def _why(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


@contextmanager
def output_lock(output_dir: str | Path, name: str = "batch_report"):
    """Blocking exclusive lock over the whole output folder, held while the shared reports are
    rebuilt so that two jobs do not interleave (lock files of cases never start with '.')."""
    fd = os.open(Path(output_dir) / LOCK_DIR / f".{name}.lock", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def case_dir(output_dir: str | Path, case_id: str) -> Path:
    return Path(output_dir) / case_id


def is_complete(output_dir: str | Path, case_id: str) -> bool:
    """A case is complete when its folder exists (it only appears by atomic rename) and its
    report says it finished."""
    report = case_dir(output_dir, case_id) / REPORT_NAME
    if not report.is_file():
        return False
    try:
        return json.loads(report.read_text()).get("status") == "complete"
    except (OSError, ValueError):
        return False


class CaseLocked(RuntimeError):
    """Another live process holds this case."""


@contextmanager
def case_lock(output_dir: str | Path, case_id: str):
    """Exclusive, non-blocking lock for one case; raises :class:`CaseLocked` if taken."""
    lock_dir = Path(output_dir) / LOCK_DIR
    lock_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_dir / f"{case_id}.lock", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise CaseLocked(f"case {case_id} is being processed by another job") from None
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)  # closing releases the flock


def remove_stale_temporaries(output_dir: str | Path, case_id: str) -> None:
    """Delete temporary folders a killed job left for this case (call while holding its lock).

    Only this case's own names match (``.tmp-<case_id>-<8 hex>[.old]``): case ``a`` must not
    delete the folder another job is writing for case ``a-b``."""
    own = re.compile(re.escape(TMP_PREFIX + case_id) + _TMP_SUFFIX)
    for tmp in Path(output_dir).glob(f"{TMP_PREFIX}*"):
        if own.fullmatch(tmp.name):
            shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def staged_case_dir(output_dir: str | Path, case_id: str, overwrite: bool = False):
    """Yield a temporary folder to fill; on success rename it to ``<output_dir>/<case_id>``.

    On an exception the temporary folder is removed and nothing appears under the case's name.
    With ``overwrite`` an existing finished folder is replaced (moved aside, then deleted).
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    final = case_dir(output_dir, case_id)
    tmp = output_dir / f"{TMP_PREFIX}{case_id}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        _fsync_tree(tmp)
        if final.exists():
            if not overwrite:
                raise FileExistsError(f"{final} exists (use overwrite)")
            old = output_dir / f"{TMP_PREFIX}{case_id}-{uuid.uuid4().hex[:8]}.old"
            os.rename(final, old)
            os.rename(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, final)
        _fsync_dir(output_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_json(path: str | Path, data) -> Path:
    return write_text_atomic(path, json.dumps(data, indent=2, default=str) + "\n")


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write a file so readers see either the old or the new whole content, never a part
    (two jobs sharing an output folder both rewrite the batch reports)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:6]}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # e.g. disk full: no half-written temporary left behind
        raise
    return path


def _fsync_tree(folder: Path) -> None:
    # Data must be on disk before the rename publishes the folder; otherwise a power cut could
    # leave a "finished" folder with empty files.
    for p in folder.rglob("*"):
        if p.is_file():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
