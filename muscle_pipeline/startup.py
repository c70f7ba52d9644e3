"""Start-up of a short-lived ``muscle-pipeline segment`` process: the garbage collector, and
three optional imports of MONAI's.

Importing torch and MONAI leaves ~360 000 objects that live as long as the process. While they
are imported, Python's collector makes ~6 full passes over everything allocated so far (0.56 s
of a 7 s calf run on a 2-core CPU, measured with ``gc.callbacks``), finds nothing to free, and
the interpreter's teardown walks them all once more. None of that is work.

MONAI's ``monai.utils.jupyter_utils`` imports ``matplotlib.pyplot`` at start-up, inside a
``try/except ImportError`` (~0.4 s with matplotlib and the figure machinery it pulls in), for
MONAI's own plotting helpers, its ultrasound confidence map and signal transforms import scipy.signal (~0.3 s with
scipy.stats), and ``monai.utils.profiling`` imports pandas where it is installed (~0.2 s); all
optional. A segment job calls none of those helpers and draws its QC picture with Pillow. (A lazy module,
``importlib.util.LazyLoader``, does not help: the import statement reads the module's
``__spec__``, which executes it.) So during start-up they are hidden: importing them raises
ModuleNotFoundError, which MONAI records as "not installed" for its helpers; from the first
case on they import as usual.

So the command that owns its process calls :func:`begin` before its imports: collection off,
those three hidden. When its first case begins, :func:`ready` moves every object alive then into the
collector's permanent generation (``gc.freeze``: never walked again) and turns collection back on
for the cases, whose own garbage is collected as usual. In any other process, the Python API
inside a user's program or the tests, nothing here changes anything: :func:`own_process` is
called only by the console entry point.
"""
from __future__ import annotations

import gc
import importlib.abc
import sys

__all__ = ["own_process", "begin", "ready", "resume"]

# what MONAI imports at start-up, each behind its optional_import or a try/except ImportError, for
# helpers a segment job never calls: matplotlib (~0.4 s with pyplot; MONAI's plots), scipy.signal
# (~0.3 s with the scipy.stats it pulls in; MONAI's ultrasound confidence map and signal
# transforms), pandas (~0.2 s where installed; MONAI's profiling tables)
HIDDEN_DURING_START_UP = ("matplotlib", "scipy.signal", "pandas")

_owned = False  # set by the console entry point: this process ends when the command does
_deferred = False


def own_process() -> None:
    """Mark this process as the CLI's own (``muscle_pipeline.cli.run``)."""
    global _owned
    _owned = True


def begin() -> None:
    """Before the command's imports, in the CLI's own process only: collection off and
    :data:`HIDDEN_DURING_START_UP` hidden, until :func:`ready` (or :func:`resume`)."""
    global _deferred
    if not _owned or _deferred:
        return
    gc.disable()
    sys.meta_path.insert(0, _HIDER)
    _deferred = True


class _Hider(importlib.abc.MetaPathFinder):
    """Makes the imports of :data:`HIDDEN_DURING_START_UP` fail while it is on ``sys.meta_path``."""

    def find_spec(self, name, path=None, target=None):
        if any(name == hidden or name.startswith(hidden + ".") for hidden in HIDDEN_DURING_START_UP):
            raise ModuleNotFoundError(f"{name} is not imported while muscle-pipeline starts", name=name)
        return None


_HIDER = _Hider()


def ready() -> None:
    """Start-up is over (imports done, models loaded): freeze what is alive and collect again;
    the hidden modules import again."""
    global _deferred
    if _deferred:
        _unhide()
        gc.freeze()
        gc.enable()
        _deferred = False


def resume() -> None:
    """Collect again without freezing (a command that ended before its first case)."""
    global _deferred
    if _deferred:
        _unhide()
        gc.enable()
        _deferred = False


def _unhide() -> None:
    if _HIDER in sys.meta_path:
        sys.meta_path.remove(_HIDER)
