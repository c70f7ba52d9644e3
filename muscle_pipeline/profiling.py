"""Wall time and peak memory per pipeline stage, for benchmarks and reports.

The pipeline marks its stages with ``with stage("stage2"): ...``. Outside a :class:`StageProfile`
that costs one context-variable lookup; inside one, each stage's seconds and the process's peak
resident memory during it (MB, sampled every ``interval_s`` by a background thread) are recorded.
A stage entered several times (two legs, several muscles) accumulates its seconds and keeps its
highest peak.

    with StageProfile() as profile:
        segment_image(image, model)
    profile.table()  # [{"stage": "stage1", "seconds": 0.21, "peak_rss_mb": 612.0, "calls": 2}, ...]
"""
from __future__ import annotations

import contextvars
import os
import resource
import sys
import threading
import time
from contextlib import contextmanager

__all__ = ["StageProfile", "stage", "current_rss_mb", "peak_rss_mb"]

_active: contextvars.ContextVar["StageProfile | None"] = contextvars.ContextVar("muscle_pipeline_profile", default=None)
_PAGE_MB = os.sysconf("SC_PAGE_SIZE") / 2**20 if hasattr(os, "sysconf") else 4096 / 2**20


def current_rss_mb() -> float:
    """Resident memory of this process now (MB); 0 where /proc is unavailable."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE_MB
    except OSError:
        return 0.0


def peak_rss_mb() -> float:
    """Highest resident memory of this process so far (MB), from the kernel."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024  # bytes on macOS, KiB on Linux


@contextmanager
def stage(name: str):
    """Mark a pipeline stage; recorded only while a :class:`StageProfile` is active."""
    profile = _active.get()
    if profile is None:
        yield
        return
    profile._enter(name)
    try:
        yield
    finally:
        profile._exit(name)


class StageProfile:
    """Collects per-stage wall time and peak RSS while active (a context manager)."""

    def __init__(self, interval_s: float = 0.005):
        self.interval_s = interval_s
        self.stages: dict[str, dict] = {}
        self._open: list[tuple[str, float]] = []
        self._window_peak: list[float] = []  # one running peak per open stage
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._token = None

    # --- sampling -------------------------------------------------------------------------------
    def _sample(self) -> None:
        rss = current_rss_mb()
        with self._lock:
            self._window_peak = [max(p, rss) for p in self._window_peak]

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def __enter__(self) -> "StageProfile":
        self._token = _active.set(self)
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        _active.reset(self._token)

    # --- stages -----------------------------------------------------------------------------------
    def _enter(self, name: str) -> None:
        rss = current_rss_mb()
        with self._lock:
            self._open.append((name, time.perf_counter()))
            self._window_peak.append(rss)

    def _exit(self, name: str) -> None:
        self._sample()  # a short stage may fall between two samples
        with self._lock:
            opened, t0 = self._open.pop()
            peak = self._window_peak.pop()
            assert opened == name, f"stage {name!r} closed while {opened!r} was open"
            entry = self.stages.setdefault(name, {"stage": name, "seconds": 0.0, "peak_rss_mb": 0.0, "calls": 0})
            entry["seconds"] += time.perf_counter() - t0
            entry["peak_rss_mb"] = max(entry["peak_rss_mb"], peak)
            entry["calls"] += 1

    def table(self) -> list[dict]:
        """One row per stage in first-entered order: stage, seconds, peak_rss_mb, calls."""
        return [dict(v, seconds=round(v["seconds"], 4), peak_rss_mb=round(v["peak_rss_mb"], 1))
                for v in self.stages.values()]
