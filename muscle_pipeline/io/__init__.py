"""Scan input/output: find cases, read them as MONAI MetaTensors, write results on their grid.

    discover(paths, skipped=None) -> list[Case]
    read_image(case_or_path, volume_index=None) -> MetaTensor   # (X, Y, Z) float32, RAS+ affine
    write_label_map(labels, reference, path) -> Path             # NIfTI on the reference grid
"""
from muscle_pipeline.io.discover import Case, SkippedFile, discover, image_format
from muscle_pipeline.io.read import (
    DicomSeriesITKReader,
    ordered_series_files,
    orientation_code,
    read_image,
    voxel_spacing,
)
from muscle_pipeline.io.write import write_label_map

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
