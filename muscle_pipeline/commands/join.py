"""``muscle-pipeline join STATION... -o OUT.nii.gz``: stack multi-station scans into one volume.

    muscle-pipeline join Join_1.nii.gz Join_2.nii.gz ... Join_7.nii.gz -o whole_leg.nii.gz

Stations are given from INFERIOR to SUPERIOR (feet first). Each consecutive pair is stacked by
the overlap (in slices) that maximises the normalised correlation between the top slices of the
lower station and the bottom slices of the upper one, and the overlap is blended (see
:mod:`muscle_pipeline.transforms.stations`). The output keeps the stations' in-plane grid, its
slices ascend in world z from the first station's lowest slice, and it is written under a
temporary name and renamed, so a killed job never leaves a half-written file. Prints one JSON
line: the overlaps found, their correlations and the joined shape.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

NIFTI_SUFFIXES = (".nii.gz", ".nii")


def register(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "join",
        help="join multi-station scans (feet first) into one volume by their overlap",
        description=__doc__.split("\n\n")[2],
    )
    parser.add_argument("stations", nargs="+", metavar="STATION", help="station scans, inferior first")
    parser.add_argument("-o", "--output", required=True, metavar="OUT.nii.gz", help="joined NIfTI to write")
    parser.add_argument("--min-overlap", type=int, default=1, metavar="N", help="smallest overlap tried (slices)")
    parser.add_argument("--max-overlap", type=int, default=None, metavar="N",
                        help="largest overlap tried (slices; default half the shorter station)")
    parser.add_argument("--overlaps", type=int, nargs="+", metavar="N",
                        help="known overlaps, one per consecutive pair, instead of searching")
    parser.add_argument("--no-normalize", action="store_true",
                        help="keep each station's intensities (default: match them in the overlap)")
    return parser


def write_image(image, path: str | Path) -> Path:
    """Write a float image (``(1, X, Y, Z)`` or ``(X, Y, Z)`` MetaTensor) as NIfTI, atomically."""
    from muscle_pipeline.io.write import write_volume

    path = Path(path)
    if not path.name.lower().endswith(NIFTI_SUFFIXES):
        raise ValueError(f"{path}: the joined image is written as NIfTI; name it *.nii.gz (or *.nii)")
    values = image.detach().cpu().numpy()
    if values.ndim == 4:
        if values.shape[0] != 1:
            raise ValueError(f"{path}: can write one channel, got {values.shape[0]}")
        values = values[0]
    return write_volume(values.astype(np.float32), image.affine, path)


def run(args) -> int:
    from muscle_pipeline.io import read_image
    from muscle_pipeline.transforms.stations import join_stations

    if len(args.stations) < 2:
        print("muscle-pipeline join: give at least two stations", file=sys.stderr)
        return 2
    if not Path(args.output).name.lower().endswith(NIFTI_SUFFIXES):
        print(f"muscle-pipeline join: {args.output}: name the output *.nii.gz or *.nii", file=sys.stderr)
        return 2
    stations = [read_image(path).unsqueeze(0) for path in args.stations]  # add the channel
    try:
        result = join_stations(stations, min_overlap=args.min_overlap, max_overlap=args.max_overlap,
                               normalize=not args.no_normalize, overlaps=args.overlaps)
    except ValueError as exc:  # bad option values (overlap counts); grid mismatches name the file
        print(f"muscle-pipeline join: {exc}", file=sys.stderr)
        return 2
    write_image(result.image, args.output)
    print(json.dumps({
        "output": str(args.output),
        "overlaps": result.overlaps,
        "correlations": [round(c, 4) for c in result.correlations],
        "shape": list(result.image.shape[1:]),
    }))
    return 0
