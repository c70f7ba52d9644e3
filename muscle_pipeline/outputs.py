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
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path

REPORT_NAME = "report.json"
LOCK_DIR = ".locks"
TMP_PREFIX = ".tmp-"


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
    """Delete temporary folders a killed job left for this case (call while holding its lock)."""
    for tmp in Path(output_dir).glob(f"{TMP_PREFIX}{case_id}-*"):
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
            old = output_dir / f"{TMP_PREFIX}{case_id}-old-{uuid.uuid4().hex[:8]}"
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
    tmp.write_text(text)
    os.replace(tmp, path)
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
