"""The command line starts without torch/MONAI where it does not need them (issue 18): ``--help``,
argument errors and ``labels`` answer in a fraction of a second instead of ~3 s of imports."""
from __future__ import annotations

import subprocess
import sys

CHECK = """
import sys
from muscle_pipeline.cli import build_parser, main
build_parser()
status = main({argv!r})
heavy = sorted(m for m in ('torch', 'monai', 'scipy', 'SimpleITK', 'nibabel') if m in sys.modules)
print('HEAVY=' + ','.join(heavy))
"""


def _heavy_modules_after(argv: list[str]) -> str:
    out = subprocess.run([sys.executable, "-c", CHECK.format(argv=argv)], capture_output=True, text=True, timeout=120)
    lines = [line for line in out.stdout.splitlines() if line.startswith("HEAVY=")]
    assert lines, out.stderr[-2000:]
    return lines[-1][len("HEAVY="):]


def test_building_the_parser_and_listing_labels_load_no_heavy_library():
    assert _heavy_modules_after(["labels"]) == ""
    assert _heavy_modules_after(["labels", "--list-datasets"]) == ""
