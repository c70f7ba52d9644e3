"""`make demo`: the main job on a bundled real scan.

Until a segmentation model ships, this reads the bundled real calf MRI and prints what the
reader found (``muscle-pipeline info``)."""
from pathlib import Path

from muscle_pipeline.cli import main

HERE = Path(__file__).resolve().parent
raise SystemExit(main(["info", str(HERE / "data" / "qmritools" / "calf_both_legs.nii.gz")]))
