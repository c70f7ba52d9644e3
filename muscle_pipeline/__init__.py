"""muscle_pipeline: segmentation of individual skeletal muscles in lower-limb MRI/CT and in
exercise photos, built on MONAI.

Public API (imported lazily so that ``import muscle_pipeline`` stays fast)::

    segment(inputs, output_dir, model="calf_mri", device="cpu")  # batch job, per-case results
    train(...), evaluate(...), load_model(name_or_path)
"""
from __future__ import annotations

import os as _os

from muscle_pipeline._lazy import lazy_getattr

# Measured on our 2-core machine: with torch's 2 OpenMP threads and any other busy process,
# libgomp's spin-waiting made the cascade on one calf leg take 11.8 s instead of 0.45 s.
# Sleeping waits remove that cliff. libgomp reads this once, when torch is first imported, so
# it must be set here, before anything imports torch; a user's own setting wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"

_LAZY = {
    "segment": "muscle_pipeline.api",
    "train": "muscle_pipeline.api",
    "evaluate": "muscle_pipeline.api",
    "load_model": "muscle_pipeline.api",
}


__getattr__ = lazy_getattr(__name__, _LAZY)


__all__ = list(_LAZY) + ["__version__"]
