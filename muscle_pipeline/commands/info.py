"""``muscle-pipeline info PATH...``: one JSON line per scan found (what would be segmented).

Each line: case_id, format, source (file, or the DICOM series' folder) and num_files, shape
(X, Y, Z), spacing (mm), orientation (axis codes in RAS terms, e.g. "RAS", "LPS"), modality
(DICOM Modality, else null), description, intensity_range [min, max], orientation_problem
("missing", "sheared" or null), read_warnings (list of one-line notes) and recognition (what the
segment job's ``--model auto`` sees: modality and how it was told, body regions with their slice
counts, legs present, a one-line summary). Files that are not
scans are noted on stderr; a case that cannot be read prints one error line on stderr and the
others go on. Exit status 1 when nothing could be read.
"""
from __future__ import annotations

import argparse
import json
import sys

from muscle_pipeline.errors import MusclePipelineError

PROG = "muscle-pipeline info"


def register(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "info",
        help="list the scans found in files/folders: one JSON line each (shape, spacing, orientation, ...)",
        description="Print one JSON line per scan found in the PATHs. " + __doc__.split("\n\n")[1],
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", help="image files and/or folders (searched recursively)")
    parser.add_argument(
        "--volume-index", type=int, default=None, metavar="N", help="for 4D images: which volume to read (0-based)"
    )
    return parser


def run(args) -> int:
    # imported here: building the CLI parser (--help, every other command) must not load torch/MONAI
    from muscle_pipeline.io import discover, read_image

    skipped: list = []
    try:
        cases = discover(args.paths, skipped)
    except MusclePipelineError as exc:
        _note_skipped(skipped)
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    _note_skipped(skipped)

    n_read = 0
    for case in cases:
        try:
            image = read_image(case, volume_index=args.volume_index)
        except MusclePipelineError as exc:
            print(f"{PROG}: error: {case.case_id}: {exc}", file=sys.stderr)
            continue
        print(json.dumps(case_summary(case, image)), flush=True)
        n_read += 1
    return 0 if n_read else 1


def case_summary(case, image) -> dict:
    """The JSON-ready description of one read case."""
    from muscle_pipeline.io import orientation_code, voxel_spacing

    values = image.as_tensor()
    return {
        "case_id": case.case_id,
        "format": case.format,
        "source": str(case.source),
        "num_files": len(case.paths),
        "shape": [int(n) for n in image.shape],
        "spacing": [round(v, 6) for v in voxel_spacing(image.affine)],
        "orientation": orientation_code(image.affine),
        "modality": case.modality,
        "description": case.description,
        "intensity_range": [float(values.min()), float(values.max())],
        "orientation_problem": image.meta.get("orientation_problem"),
        "read_warnings": list(image.meta.get("read_warnings", [])),
        "recognition": _recognition(case, image),
    }


def _recognition(case, image) -> dict:
    """What ``segment --model auto`` would see, without the per-slice list (``report.json`` has it)."""
    from muscle_pipeline.recognition import recognize_scan

    found = recognize_scan(image, dicom_modality=case.modality).as_dict()
    found.pop("per_slice", None)
    return found


def _note_skipped(skipped) -> None:
    for note in skipped:
        print(f"{PROG}: skipped {note}", file=sys.stderr)
