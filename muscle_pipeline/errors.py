"""Exception types of muscle_pipeline.

Every problem with a user's input surfaces as one of these, with the offending file in the
message, so that a batch job can log one clear line and go on with the next case instead of
printing a traceback from inside ITK or nibabel.
"""
from __future__ import annotations

from pathlib import Path


class MusclePipelineError(Exception):
    """Base class of all errors raised on purpose by muscle_pipeline."""


class InputError(MusclePipelineError):
    """An input file or folder cannot be used. ``path`` names it; the message says why."""

    def __init__(self, path: str | Path | None, reason: str):
        self.path = None if path is None else Path(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}" if path is not None else reason)


class CorruptFileError(InputError):
    """The file exists but cannot be decoded (truncated gzip, broken header, bad DICOM)."""


class UnsupportedImageError(InputError):
    """The file decodes but is not a usable 3D scan (2D, 4D without a volume index, non-image)."""


class InvalidGeometryError(InputError):
    """Spacing is zero/negative/non-finite, or a DICOM series has missing slices or mixed orientation."""


class InvalidIntensityError(InputError):
    """The voxel values cannot be used (NaN or infinite voxels)."""


class NoCasesFoundError(InputError):
    """A folder holds no readable scan."""


class ModelError(MusclePipelineError):
    """A model bundle or its weights are missing or inconsistent."""


class CaseRejected(InputError):
    """The scan reads fine but no chosen model fits it (wrong modality, no lower limb, a region
    the model does not cover). The case is not segmented: status ``rejected``, with this reason."""


class OutputError(MusclePipelineError):
    """The output folder or a file in it cannot be written (not a folder, read-only, disk full).
    ``path`` names it; the message says why."""

    def __init__(self, path: str | Path | None, reason: str):
        self.path = None if path is None else Path(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}" if path is not None else reason)


class UsageError(MusclePipelineError, ValueError):
    """A command-line option or API argument has an invalid value (e.g. ``--shard 0/2``)."""
