"""The command line starts without torch/MONAI where it does not need them (issue 18): ``--help``,
argument errors, ``labels`` and a segment job's input, model-name and output errors answer in a
fraction of a second instead of after ~3 s of imports."""
from __future__ import annotations

import subprocess
import sys

CHECK = """
import sys
from muscle_pipeline.cli import build_parser, main
build_parser()
status = main({argv!r})
print('STATUS=' + str(status))
heavy = sorted(m for m in ('torch', 'monai', 'scipy', 'SimpleITK', 'nibabel') if m in sys.modules)
print('HEAVY=' + ','.join(heavy))
"""


def _run(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", CHECK.format(argv=argv)], capture_output=True, text=True, timeout=120)


def _heavy_modules_after(argv: list[str]) -> str:
    out = _run(argv)
    lines = [line for line in out.stdout.splitlines() if line.startswith("HEAVY=")]
    assert lines, out.stderr[-2000:]
    return lines[-1][len("HEAVY="):]


def test_building_the_parser_and_listing_labels_load_no_heavy_library():
    assert _heavy_modules_after(["labels"]) == ""
    assert _heavy_modules_after(["labels", "--list-datasets"]) == ""


def test_segment_argument_errors_come_before_torch_and_monai(tmp_path):
    """Each wrong argument: exit 1, one error line naming the culprit, and neither torch nor MONAI
    imported (the inputs, the model name and the output folder are checked first)."""
    scan = tmp_path / "in" / "scan.nii.gz"
    scan.parent.mkdir()
    scan.write_bytes(b"not read: every check below fails before any scan is read")
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    cases = {
        "missing input": (["segment", str(tmp_path / "nowhere"), "-o", str(tmp_path / "out")], "nowhere"),
        "empty folder": (["segment", str(tmp_path / "empty"), "-o", str(tmp_path / "out")], "empty"),
        "unknown model": (["segment", str(scan), "-o", str(tmp_path / "out"), "--model", "no_such_model"],
                          "no_such_model"),
        "output is a file": (["segment", str(scan), "-o", str(a_file), "--model", "calf_mri"], "a_file"),
        "bad shard": (["segment", str(scan), "-o", str(tmp_path / "out"), "--shard", "3/2"], "3/2"),
    }
    (tmp_path / "empty").mkdir()
    for what, (argv, culprit) in cases.items():
        out = _run(argv)
        assert "STATUS=1" in out.stdout, (what, out.stdout, out.stderr[-2000:])
        errors = [line for line in out.stderr.splitlines() if line.startswith("muscle-pipeline: error:")]
        assert len(errors) == 1 and culprit in errors[0], (what, out.stderr[-2000:])
        heavy = out.stdout.split("HEAVY=")[-1].split()
        assert not {"torch", "monai"} & set(heavy[0].split(",") if heavy else []), (what, heavy)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir()), "nothing written"
