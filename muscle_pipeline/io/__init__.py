"""Scan input/output: find cases, read them as MONAI MetaTensors, write results on their grid.

    discover(paths, skipped=None) -> list[Case]
    read_image(case_or_path, volume_index=None) -> MetaTensor   # (X, Y, Z) float32, RAS+ affine
    write_label_map(labels, reference, path) -> Path             # NIfTI on the reference grid

Discovery needs only pydicom; reading and writing need torch and MONAI, so they are imported on
first use: a job whose inputs are missing or unreadable says so at once.
"""
from muscle_pipeline._lazy import lazy_getattr
from muscle_pipeline.io.discover import Case, SkippedFile, discover, image_format

_LAZY = {
    "DicomSeriesITKReader": "muscle_pipeline.io.read",
    "ordered_series_files": "muscle_pipeline.io.read",
    "orientation_code": "muscle_pipeline.io.read",
    "read_image": "muscle_pipeline.io.read",
    "voxel_spacing": "muscle_pipeline.io.read",
    "write_label_map": "muscle_pipeline.io.write",
}


__getattr__ = lazy_getattr(__name__, _LAZY)


__all__ = [
    "Case",
    "SkippedFile",
    "discover",
    "image_format",
    "read_image",
    "write_label_map",
    "voxel_spacing",
    "orientation_code",
    "ordered_series_files",
    "DicomSeriesITKReader",
]
