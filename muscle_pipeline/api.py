"""Public Python API; the CLI is a thin layer over these functions.

    import muscle_pipeline as mp
    results = mp.segment(["/data/scans"], "/data/out", model="calf_mri", device="cpu")
    for r in results: print(r.case_id, r.status, r.output, r.details.get("volumes_ml"))
"""
from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Iterable

import numpy as np

from muscle_pipeline import __version__
from muscle_pipeline import labels as ontology
from muscle_pipeline.batch import BatchReport, CaseResult, parse_shard, run_batch
from muscle_pipeline.errors import ModelError, NoCasesFoundError
from muscle_pipeline.io import discover, ordered_series_files, read_image, write_label_map
from muscle_pipeline.outputs import REPORT_NAME, write_json
from muscle_pipeline.profiling import stage as profiled
from muscle_pipeline.qc import save_qc_png
from muscle_pipeline.quantify import measure_volumes, write_volumes_csv
from muscle_pipeline.segmentation import segment_image

MODELS = ("calf_mri", "hip_ct", "thigh_ct_25d")
DEFAULT_LOADER = "muscle_pipeline.cascade:load_cascade"


def load_model(model: str | Path = "calf_mri", device: str = "cpu"):
    """Load a shipped model by name (``calf_mri``, ``hip_ct``, ``thigh_ct_25d``) or a bundle folder.

    The bundle's ``configs/inference.json`` may name its loader (``"loader": "module:function"``);
    cascade bundles need not. The returned object has ``structures``, ``modality`` and
    ``predict(image (1, X, Y, Z)) -> (X, Y, Z)`` right-side ontology values on the same grid.
    """
    import importlib

    from muscle_pipeline.cascade.model import bundle_path

    try:
        root = bundle_path(model)
    except FileNotFoundError as exc:
        raise ModelError(f"model {model!r}: {exc}") from None
    try:
        config = json.loads((root / "configs" / "inference.json").read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"model {model!r}: cannot read {root}/configs/inference.json ({exc})") from None
    module_name, _, function = str(config.get("loader", DEFAULT_LOADER)).partition(":")
    loader = getattr(importlib.import_module(module_name), function)
    try:
        return loader(root, device=device)
    except FileNotFoundError as exc:
        raise ModelError(f"model {model!r}: {exc}") from None


def _model_values(model) -> list[int]:
    """Every label value the model can write: each structure on both sides."""
    values = []
    for name in model.structures:
        s = ontology.structure(name)
        values += [s.base, s.base + ontology.LEFT_OFFSET] if s.sided else [s.base]
    return sorted(values)


def _versions() -> dict:
    import monai
    import torch

    return {"muscle_pipeline": __version__, "monai": monai.__version__, "torch": torch.__version__,
            "python": platform.python_version()}


def segment_case_to_folder(case, image, folder: Path, stage, model, model_name: str, side: str | None = None,
                           dicom_seg: bool = True) -> dict:
    """Segment one read case and write its output folder's files into ``folder``.

    ``report.json`` is written last with ``status: complete``; the caller publishes the folder.
    """
    t_start = time.perf_counter()
    result = segment_image(image, model, side=side, stage=stage)
    stage("write")
    t0 = time.perf_counter()
    with profiled("write"):
        report = _write_case_outputs(case, image, folder, model, model_name, result, dicom_seg)
    result.timings["write"] = time.perf_counter() - t0
    result.timings["total"] = time.perf_counter() - t_start
    report["timings_s"] = {k: round(v, 3) for k, v in result.timings.items()}
    write_json(folder / REPORT_NAME, report)  # last: its presence + status marks the case complete
    return report


def _write_case_outputs(case, image, folder: Path, model, model_name: str, result, dicom_seg: bool) -> dict:
    """Every file of the case folder except report.json; returns the report (without timings)."""
    label_array = result.labels.numpy().astype(np.uint8)
    affine = np.asarray(image.affine, dtype=float)
    write_label_map(label_array, image, folder / "segmentation.nii.gz")
    ontology.write_label_tables(folder, values=_model_values(model))
    volumes = measure_volumes(label_array, affine)
    write_volumes_csv(volumes, folder / "volumes.csv")
    save_qc_png(image.numpy(), label_array, affine, folder / "qc.png", title=f"{case.case_id} ({model_name})")
    warnings = list(result.warnings)
    cut = [v.name for v in volumes if v.touches_border]
    if cut:
        warnings.append("cut by the field of view (volume is a lower bound): " + ", ".join(cut))
    if dicom_seg and case.format == "dicom":
        from muscle_pipeline.io.dicom_seg import write_dicom_seg

        write_dicom_seg(label_array, affine, ordered_series_files(case), folder / "segmentation.dcm", notes=warnings)
    return {
        "status": "complete",
        "case_id": case.case_id,
        "sources": [str(p) for p in case.paths],
        "model": model_name,
        "device": str(getattr(model, "device", "cpu")),
        "versions": _versions(),
        "input": {"shape": list(label_array.shape), "affine": affine.round(6).tolist(),
                  "modality": image.meta.get("modality")},
        "legs": result.legs,
        "timings_s": {},
        "warnings": warnings,
        "volumes_ml": {v.name: v.volume_ml for v in volumes},
    }


def segment(
    inputs: str | Path | Iterable[str | Path],
    output_dir: str | Path,
    model: str | Path = "calf_mri",
    device: str = "cpu",
    overwrite: bool = False,
    shard: str | tuple[int, int] | None = None,
    side: str | None = None,
    dicom_seg: bool = True,
    progress: bool = True,
    memory_budget_mb: float | None = None,
) -> list[CaseResult]:
    """Segment every case found in ``inputs`` (files or folders, searched recursively) and write
    one output folder per case under ``output_dir`` (see docs/outputs.md).

    Resumable (complete cases are skipped unless ``overwrite``), failure-isolated (a bad case is
    recorded in ``batch_report.csv`` and the batch goes on), shardable (``shard="i/n"``). Returns
    one :class:`CaseResult` per case of the shard (``status`` complete/skipped/failed/locked;
    ``details`` holds the case's report, with volumes in mL and warnings). ``memory_budget_mb``
    overrides a cascade bundle's fusion working-memory budget (see docs/benchmarks.md).
    """
    skipped: list = []
    cases = discover(inputs, skipped=skipped, exclude=[output_dir])  # never read our own output back
    if not cases:
        first = inputs if isinstance(inputs, (str, Path)) else next(iter(inputs), None)
        raise NoCasesFoundError(first, "no readable scan found" + (f" ({len(skipped)} files skipped)" if skipped else ""))
    shard_t = parse_shard(shard) if isinstance(shard, str) or shard is None else tuple(shard)
    net = load_model(model, device=device)
    if memory_budget_mb is not None and hasattr(net, "memory_budget_mb"):
        net.memory_budget_mb = float(memory_budget_mb)
    model_name = Path(str(model)).name

    def process(case, image, folder, stage):
        return segment_case_to_folder(case, image, folder, stage, net, model_name, side=side, dicom_seg=dicom_seg)

    report: BatchReport = run_batch(cases, output_dir, process, load=read_image, overwrite=overwrite,
                                    shard=shard_t, progress=progress, skipped=skipped)
    return report.results


def batch_exit_code(results: list[CaseResult]) -> int:
    return BatchReport(results, "").exit_code


def train(*args, **kwargs):
    """Train a cascade bundle; see ``muscle_pipeline.cascade.training`` and the bundle docs."""
    from muscle_pipeline.cascade import training

    return training.main(*args, **kwargs)


def evaluate(pairs, out_dir, labels=None):
    """Dice/ASD/HD95/volume error of predicted vs reference label maps; writes CSV + box plot."""
    from muscle_pipeline.evaluation import evaluate_pairs

    return evaluate_pairs(pairs, labels, out_dir)


def summary_json(results: list[CaseResult]) -> str:
    return json.dumps([{"case_id": r.case_id, "status": r.status, "output": r.output, "reason": r.reason}
                       for r in results], indent=2)
