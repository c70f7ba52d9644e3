"""Start-up of a short-lived ``muscle-pipeline segment`` process: the garbage collector, and
three optional imports of MONAI's.

Importing torch and MONAI leaves ~360 000 objects that live as long as the process. While they
are imported, Python's collector makes ~6 full passes over everything allocated so far (0.56 s
of a 7 s calf run on a 2-core CPU, measured with ``gc.callbacks``), finds nothing to free, and
the interpreter's teardown walks them all once more. None of that is work.

MONAI's ``__init__`` imports all its submodules, and they probe optional packages at import
time (``optional_import`` or ``try/except ImportError``): ``monai.utils.jupyter_utils`` imports
matplotlib's pyplot (~0.4 s with matplotlib and its figure machinery) for MONAI's plots, the
ultrasound confidence map and signal transforms import scipy.signal (~0.3 s with the scipy.stats
it pulls in), ``monai.utils.profiling`` imports pandas where installed (~0.2 s). A segment job
calls none of those helpers, and draws its QC picture with Pillow. (A lazy module,
``importlib.util.LazyLoader``, does not help: the import statement reads the module's
``__spec__``, which executes it.)

So, in the process the CLI owns (:func:`own_process`, called only by the console entry point):

* :func:`begin`, before the command's imports: collection off;
* :func:`import_monai`, once the arguments are checked: MONAI (and torch) imported with those
  three hidden from its probes (importing them raises ModuleNotFoundError, which MONAI records
  as "not installed" for its own helpers), and visible again as soon as MONAI is in, so a
  bundle's configs or anything else may import them as usual;
* :func:`ready`, when the imports are done and before the first scan is read: every object
  alive then moves into the collector's permanent generation (``gc.freeze``: never walked again,
  so no case's data may be among it) and collection is back on for the cases, whose own garbage
  is collected as usual; :func:`resume` if the command ends before that.

In any other process, the Python API inside a user's program or the tests, these functions
change nothing. The one cost: in the CLI's own process, MONAI's plotting, profiling, ultrasound
and signal helpers report their package missing; a bundle that calls them runs through
``python -m monai.bundle run`` or the Python API.
"""
from __future__ import annotations

import gc
import importlib.abc
import sys

__all__ = ["own_process", "begin", "import_monai", "ready", "resume", "HIDDEN_FROM_MONAI"]

# MONAI's optional imports that a segment job never uses (see the module docstring)
HIDDEN_FROM_MONAI = ("matplotlib", "scipy.signal", "pandas")

_owned = False  # set by the console entry point: this process ends when the command does
_deferred = False


def own_process() -> None:
    """Mark this process as the CLI's own (``muscle_pipeline.cli.run``)."""
    global _owned
    _owned = True


def begin() -> None:
    """Before the command's imports, in the CLI's own process only: collection off until
    :func:`ready` (or :func:`resume`)."""
    global _deferred
    if _owned and not _deferred and gc.isenabled():
        gc.disable()
        _deferred = True


class _Hider(importlib.abc.MetaPathFinder):
    """Makes the imports of :data:`HIDDEN_FROM_MONAI` fail while it is on ``sys.meta_path``."""

    def find_spec(self, name, path=None, target=None):
        if any(name == hidden or name.startswith(hidden + ".") for hidden in HIDDEN_FROM_MONAI):
            raise ModuleNotFoundError(f"{name} is not imported while MONAI starts in muscle-pipeline", name=name)
        return None


def import_monai() -> None:
    """In the CLI's own process: import MONAI now, with :data:`HIDDEN_FROM_MONAI` hidden from
    its import-time probes and visible again right after. Elsewhere: nothing (MONAI is imported
    where it is used)."""
    if not _owned or "monai" in sys.modules:
        return
    hider = _Hider()
    sys.meta_path.insert(0, hider)
    try:
        import monai  # noqa: F401  (its __init__ imports every submodule)
    finally:
        sys.meta_path.remove(hider)


def ready() -> None:
    """Start-up is over (imports done, a named model loaded, no scan read yet): freeze what is
    alive and collect again."""
    global _deferred
    if _deferred:
        gc.freeze()
        gc.enable()
        _deferred = False


def resume() -> None:
    """Collect again without freezing (a command that ended before its start-up did)."""
    global _deferred
    if _deferred:
        gc.enable()
        _deferred = False
