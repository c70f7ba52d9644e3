"""The command line starts without torch/MONAI where it does not need them (issue 18): ``--help``,
argument errors, ``labels`` and a segment job's input, model-name and output errors answer in a
fraction of a second instead of after ~3 s of imports."""
from __future__ import annotations

import json
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


GC_CHECK = """
import gc, sys
from muscle_pipeline import startup
from muscle_pipeline.cli import main
if {owned!r}:
    startup.own_process()
full_passes_before_first_case = []
gc.callbacks.append(lambda phase, info: phase == 'start' and info['generation'] == 2
                    and full_passes_before_first_case.append(gc.get_freeze_count() == 0))
status = main({argv!r})
print('STATUS=' + str(status), 'ENABLED=' + str(gc.isenabled()), 'FROZEN=' + str(gc.get_freeze_count()),
      'FULL_PASSES_BEFORE_FIRST_CASE=' + str(sum(full_passes_before_first_case)), 'TORCH=' + str('torch' in sys.modules),
      'PYPLOT=' + type(sys.modules.get('matplotlib.pyplot')).__name__,
      'MATPLOTLIB=' + type(sys.modules.get('matplotlib')).__name__,
      'PANDAS=' + type(sys.modules.get('pandas')).__name__,
      'SIGNAL=' + type(sys.modules.get('scipy.signal')).__name__, end=' ')
import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt  # a lazy pyplot works once touched
print('PYPLOT_FIGURE=' + type(plt.figure()).__name__)
"""


def _gc_run(argv: list[str], owned: bool) -> dict:
    out = subprocess.run([sys.executable, "-c", GC_CHECK.format(argv=argv, owned=owned)], capture_output=True,
                         text=True, timeout=600)
    line = [x for x in out.stdout.splitlines() if x.startswith("STATUS=")]
    assert line, out.stderr[-3000:]
    return dict(item.split("=") for item in line[-1].split())


def test_segment_as_its_own_process_starts_without_collecting_and_collects_its_cases(tmp_path, shared_data):
    """The CLI's own segment process: no full garbage-collection pass while torch and MONAI are
    imported (they cost ~0.56 s of a calf run), collection on again, with the start-up's objects
    frozen, before the first scan is read; matplotlib, which MONAI would import, never imported (the QC
    picture is Pillow's) yet importable afterwards; the case completes. The same command called
    from another program (the tests, a user's script) leaves that program's collector and
    modules alone."""
    calf = shared_data / "qmritools" / "thigh_calf_unlabeled" / "test_low.nii.gz"
    owned = _gc_run(["segment", str(calf), "-o", str(tmp_path / "owned"), "--model", "calf_mri", "--quiet"], owned=True)
    assert owned["STATUS"] == "0" and owned["TORCH"] == "True", owned
    assert owned["ENABLED"] == "True" and int(owned["FROZEN"]) > 100_000, owned
    assert owned["FULL_PASSES_BEFORE_FIRST_CASE"] == "0", owned
    assert owned["PYPLOT"] == "NoneType" and owned["PYPLOT_FIGURE"] == "Figure", owned
    assert owned["MATPLOTLIB"] == owned["PANDAS"] == owned["SIGNAL"] == "NoneType", owned  # (pandas: installed by the test extra)
    assert (next((tmp_path / "owned").glob("*/qc.png"))).stat().st_size > 10_000
    report = json.loads(next((tmp_path / "owned").glob("*/report.json")).read_text())
    assert report["status"] == "complete"

    failed = _gc_run(["segment", str(tmp_path / "nowhere"), "-o", str(tmp_path / "out")], owned=True)
    assert failed["STATUS"] == "1" and failed["ENABLED"] == "True" and failed["FROZEN"] == "0", failed

    guest = _gc_run(["segment", str(calf), "-o", str(tmp_path / "guest"), "--model", "calf_mri", "--quiet"],
                    owned=False)
    assert guest["STATUS"] == "0" and guest["ENABLED"] == "True" and guest["FROZEN"] == "0", guest
    assert guest["PYPLOT"] == guest["PANDAS"] == guest["SIGNAL"] == "module", guest


def test_monai_imported_without_its_unused_optional_imports_which_import_as_usual_right_after():
    """startup.import_monai (the CLI's own process only): MONAI comes in without matplotlib,
    scipy.signal and pandas (its plotting/profiling helpers then report them missing), and they
    import normally right after, e.g. for a bundle config's "$import pandas"."""
    code = """
import sys
from muscle_pipeline import startup
startup.import_monai()
print('GUEST_MONAI=' + str('monai' in sys.modules))
startup.own_process()
startup.import_monai()
import monai.utils.jupyter_utils as ju
hidden_while_monai = [m for m in startup.HIDDEN_FROM_MONAI if m in sys.modules]
import scipy.signal, pandas, matplotlib.pyplot
print('MONAI=' + str('monai' in sys.modules), 'HIDDEN_WHILE_MONAI=' + ','.join(hidden_while_monai),
      'MONAI_SAW_MATPLOTLIB=' + str(ju.has_matplotlib), 'HILBERT=' + str(callable(scipy.signal.hilbert)))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert "GUEST_MONAI=False" in out.stdout, out.stderr[-2000:]
    assert "MONAI=True HIDDEN_WHILE_MONAI= MONAI_SAW_MATPLOTLIB=False HILBERT=True" in out.stdout, out.stderr[-2000:]
