"""bf16 inference (``muscle_pipeline.precision``): the choice of dtype, and the shipped calf cascade
in bf16 against fp32 and against the real labels."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from muscle_pipeline.cascade import load_cascade
from muscle_pipeline.cascade.model import right_value
from muscle_pipeline.cascade.training import load_side_cases
from muscle_pipeline.metrics import dice
from muscle_pipeline.precision import native_bf16, resolve_precision

torch.set_num_threads(2)


def test_resolve_precision():
    assert resolve_precision("fp32") is None
    assert resolve_precision("bf16") is torch.bfloat16
    # "auto" takes bf16 only where the CPU computes it natively (emulated bf16 is slower than fp32)
    assert resolve_precision("auto") is (torch.bfloat16 if native_bf16("cpu") else None)
    with pytest.raises(ValueError, match="CUDA"):
        resolve_precision("fp16", "cpu")
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision("int4")


def test_bundles_default_to_auto_and_the_override_reaches_the_networks():
    assert load_cascade("calf_mri").refiner.autocast_dtype is resolve_precision("auto")
    model = load_cascade("calf_mri", precision="bf16")
    assert model.refiner.autocast_dtype is torch.bfloat16 and model.localizer.autocast_dtype is torch.bfloat16
    assert load_cascade("calf_mri", precision="fp32").localizer.autocast_dtype is None


def test_bf16_calf_agrees_with_fp32_and_keeps_its_dice(shared_data):
    folder = shared_data / "qmritools" / "calf_dti_labeled_half"
    (image, labels), = load_side_cases({"image": str(folder / "twoLegs_x80-160.nii.gz"),
                                        "label": str(folder / "labels_x80-160.nii.gz"), "label_map": "qmritools_calf"})
    preds = {p: np.asarray(load_cascade("calf_mri", precision=p).predict(image)) for p in ("fp32", "bf16")}
    structures = load_cascade("calf_mri").structures
    agreement = [float(dice(preds["bf16"], preds["fp32"], right_value(m))) for m in structures]
    # measured (benchmarks/results/bench_precision.md): 0.9998 mean, 0.999 worst
    assert min(agreement) > 0.98, agreement
    ref = np.asarray(labels[0])
    scores = {p: np.mean([float(dice(pred, ref, right_value(m))) for m in structures]) for p, pred in preds.items()}
    assert scores["bf16"] >= 0.93 and abs(scores["bf16"] - scores["fp32"]) < 0.01, scores


def test_segment_precision_option_reaches_the_model_and_the_report(shared_data, tmp_path):
    import json

    import muscle_pipeline as mp

    scan = shared_data / "qmritools" / "calf_dti_labeled_half" / "twoLegs_x80-160.nii.gz"
    for precision in ("fp32", "bf16"):
        (result,) = mp.segment(scan, tmp_path / precision, model="calf_mri", precision=precision, progress=False,
                               force=True)
        assert result.status == "complete", result
        report = json.loads((Path(result.output) / "report.json").read_text())
        assert report["precision"] == precision
