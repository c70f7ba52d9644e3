"""`make demo`: the main job on a bundled real scan.

Segments the bundled real MRI of both calves (QMRITools, BSD-3-Clause; 320x320x31, 1.5x1.5x6 mm)
with `--model auto` (the segment job's default: the scan is recognised as an MR of the calves and
routed to the shipped `calf_mri` model), then prints what was recognised, the volume table and
where the QC picture is.
Output goes to ./demo_output (a re-run redoes the case).
"""
from __future__ import annotations

import csv
import sys
from pathlib import Path

import muscle_pipeline as mp

HERE = Path(__file__).resolve().parent
SCAN = HERE / "data" / "qmritools" / "calf_both_legs.nii.gz"
OUT = Path.cwd() / "demo_output"


def main() -> int:
    print(f"Segmenting {SCAN.relative_to(HERE.parent)} with the model that fits it (CPU) ...")
    (result,) = mp.segment([SCAN], OUT, model="auto", device="cpu", overwrite=True)
    if result.status != "complete":
        print(f"demo failed: {result.reason}", file=sys.stderr)
        return 1
    case = Path(result.output)
    with (case / "volumes.csv").open() as f:
        rows = list(csv.DictReader(f))
    width = max(len(r["name"]) for r in rows)
    print(f"\n{'structure':<{width}}  {'volume (mL)':>11}  cut by field of view")
    for r in rows:
        print(f"{r['name']:<{width}}  {float(r['volume_ml']):>11.1f}  {'yes' if r['touches_border'] == 'True' else ''}")
    report = result.details
    print(f"\nrecognised: {report['recognition']['summary']} -> model {report['model']}")
    print(f"\nlegs found: {', '.join(leg['side'] for leg in report['legs'])};"
          f" time {report['timings_s']['total']:.1f} s")
    for w in report["warnings"]:
        print(f"warning: {w}")
    print(f"\nlabel map : {case / 'segmentation.nii.gz'}")
    print(f"QC picture: {case / 'qc.png'}")
    print(f"all files : {case}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
