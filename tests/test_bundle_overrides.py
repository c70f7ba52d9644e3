"""A value given on the ``monai.bundle run`` command line is what the built model uses, for every
bundle that ships weights (gym_photo's training overrides are checked in test_photo_train.py,
lower_limb_35's, which ships no weights, by the train command in test_cascade_training.py).

The bundle's ``run`` item is replaced by one that prints the built model's settings: the model
is built from the parsed config exactly as a normal run builds it, then nothing is segmented.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BUNDLES = Path(__file__).resolve().parents[1] / "bundles"

CASES = {
    "calf_mri": ("[@cascade.refiner.n_jitter, @cascade.threshold, @cascade.postprocess]",
                 ["--n_jitter", "2", "--fusion_threshold", "0.3", "--postprocess", "False"], "[2, 0.3, False]",
                 "[6, 0.5, True]"),
    "hip_ct": ("[@cascade.refiner.n_jitter, @cascade.localizer.margin_mm]",
               ["--n_jitter", "3", "--box_margin_mm", "1.5"], "[3, 1.5]", "[6, 9.0]"),
    "thigh_ct_25d": ("[sorted(@model.networks), @model.preprocess.spacing_mm]",
                     ["--views", "['axial']", "--spacing_mm", "3.0"], "[['axial'], 3.0]",
                     "[['axial', 'coronal', 'sagittal'], 2.0]"),
}


def built(bundle: str, expression: str, overrides: list[str]) -> str:
    configs = BUNDLES / bundle / "configs"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(configs / "inference.json"),
           "--meta_file", str(configs / "metadata.json"), "--run", f"['$print(\"BUILT\", {expression})']", *overrides]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(line for line in proc.stdout.splitlines() if line.startswith("BUILT"))
    return line[len("BUILT "):]


@pytest.mark.parametrize("bundle", sorted(CASES))
def test_a_command_line_override_changes_the_built_model(bundle):
    expression, overrides, expected, default = CASES[bundle]
    assert built(bundle, expression, []) == default
    assert built(bundle, expression, overrides) == expected
