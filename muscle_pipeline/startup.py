"""The garbage collector of a short-lived ``muscle-pipeline segment`` process.

Importing torch and MONAI leaves ~360 000 objects that live as long as the process. While they
are imported, Python's collector makes ~6 full passes over everything allocated so far (0.56 s
of a 7 s calf run on a 2-core CPU, measured with ``gc.callbacks``), finds nothing to free, and
the interpreter's teardown walks them all once more. None of that is work.

So the command that owns its process turns collection off while it starts
(:func:`defer_collection`), and when its first case begins (:func:`ready`) moves every object
alive then into the collector's permanent generation (``gc.freeze``: never walked again) and turns
collection back on for the cases, whose own garbage is collected as usual. In any other process,
the Python API inside a user's program or the tests, nothing here changes the collector:
:func:`own_process` is called only by the console entry point.
"""
from __future__ import annotations

import gc

__all__ = ["own_process", "defer_collection", "ready", "resume"]

_owned = False  # set by the console entry point: this process ends when the command does
_deferred = False


def own_process() -> None:
    """Mark this process as the CLI's own (``muscle_pipeline.cli.run``)."""
    global _owned
    _owned = True


def defer_collection() -> None:
    """Turn collection off until :func:`ready` (or :func:`resume`); only in the CLI's own process."""
    global _deferred
    if _owned and gc.isenabled():
        gc.disable()
        _deferred = True


def ready() -> None:
    """Start-up is over (imports done, models loaded): freeze what is alive and collect again."""
    global _deferred
    if _deferred:
        gc.freeze()
        gc.enable()
        _deferred = False


def resume() -> None:
    """Collect again without freezing (a command that ended before its first case)."""
    global _deferred
    if _deferred:
        gc.enable()
        _deferred = False
