"""Public Python API; the CLI is a thin layer over these functions.

    import muscle_pipeline as mp
    results = mp.segment(["/data/scans"], "/data/out", model="calf_mri", device="cpu")
    for r in results: print(r.case_id, r.status, r.output, r.details.get("volumes_ml"))
"""
from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Iterable

import numpy as np

from muscle_pipeline import __version__
from muscle_pipeline import labels as ontology
from muscle_pipeline.batch import BatchReport, CaseResult, parse_shard, run_batch
from muscle_pipeline import routing, startup
from muscle_pipeline.errors import CaseRejected, ModelError, NoCasesFoundError
from muscle_pipeline.io.discover import discover
from muscle_pipeline.io.write import write_label_map
from muscle_pipeline.outputs import REPORT_NAME, prepare_output_dir, write_json
from muscle_pipeline.profiling import stage as profiled
from muscle_pipeline.qc import save_qc_png
from muscle_pipeline.quantify import asymmetric_volumes, implausible_volumes, measure_volumes, write_volumes_csv

# Reading, recognition and segmentation need torch and MONAI (~3 s to import on a 2-core CPU):
# they are imported where they are used, after the inputs, the model name and the output folder
# have been checked, so that a wrong argument is reported at once.

MODELS = ("auto", "calf_mri", "hip_ct", "thigh_ct_25d", "lower_limb_35")


def load_model(model: str | Path = "calf_mri", device: str = "cpu", **overrides):
    """Load a shipped model by name (``calf_mri``, ``hip_ct``, ``thigh_ct_25d``) or a bundle folder.

    :func:`muscle_pipeline.bundle.load_predictor`: the bundle's ``configs/inference.json`` may name
    its loader (``"loader": "module:function"``); cascade bundles need not. ``overrides`` set config
    ids (``n_jitter=2``) as on the bundle command line. The returned object has ``structures``,
    ``modality`` and ``predict(image (1, X, Y, Z)) -> (X, Y, Z)`` right-side ontology values on the
    same grid.
    """
    from muscle_pipeline.bundle import load_predictor

    try:
        return load_predictor(model, device=device, **overrides)
    except FileNotFoundError as exc:
        raise ModelError(f"model {model!r}: {exc}") from None
    except ValueError as exc:  # an unreadable inference.json
        raise ModelError(f"model {model!r}: cannot read its configs/inference.json ({exc})") from None


def _versions() -> dict:
    import monai
    import torch

    return {"muscle_pipeline": __version__, "monai": monai.__version__, "torch": torch.__version__,
            "python": platform.python_version()}


def segment_case_to_folder(case, image, folder: Path, stage, model, model_name: str, side: str | None = None,
                           dicom_seg: bool = True, recognition=None, provenance: dict | None = None,
                           warnings: list[str] | None = None) -> dict:
    """Segment one read case and write its output folder's files into ``folder``.

    ``recognition``: what the scan was recognised as (:class:`~muscle_pipeline.recognition.ScanRecognition`),
    stored in the report and drawn on the QC picture; ``provenance``: the model's path and weights
    hash; ``warnings``: found before segmenting (reading, routing). ``report.json`` is written last
    with ``status: complete``; the caller publishes the folder.
    """
    from muscle_pipeline.segmentation import segment_image

    t_start = time.perf_counter()
    result = segment_image(image, model, side=side, stage=stage)
    result.warnings[:0] = list(warnings or [])
    stage("write")
    t0 = time.perf_counter()
    with profiled("write"):
        report = _write_case_outputs(case, image, folder, model, model_name, result, dicom_seg, recognition)
    report.update(provenance or {})
    result.timings["write"] = time.perf_counter() - t0
    result.timings["total"] = time.perf_counter() - t_start
    report["timings_s"] = {k: round(v, 3) for k, v in result.timings.items()}
    write_json(folder / REPORT_NAME, report)  # last: its presence + status marks the case complete
    return report


def _write_case_outputs(case, image, folder: Path, model, model_name: str, result, dicom_seg: bool,
                        recognition=None) -> dict:
    """Every file of the case folder except report.json; returns the report (without timings)."""
    label_array = result.labels.numpy().astype(np.uint8)
    affine = np.asarray(image.affine, dtype=float)
    write_label_map(label_array, image, folder / "segmentation.nii.gz")
    ontology.write_label_tables(folder, values=ontology.structure_values(model.structures))
    volumes = measure_volumes(label_array, affine)
    write_volumes_csv(volumes, folder / "volumes.csv")
    title = f"{case.case_id} ({model_name})" + (f" · {recognition.summary()}" if recognition is not None else "")
    save_qc_png(image.numpy(), label_array, affine, folder / "qc.png", title=title,
                slice_regions=recognition.per_slice if recognition is not None else None,
                values=[v.value for v in volumes])
    warnings = list(result.warnings)
    cut = [v.name for v in volumes if v.touches_border]
    if cut:
        warnings.append("cut by the field of view (volume is a lower bound): " + ", ".join(cut))
    warnings += implausible_volumes(volumes) + asymmetric_volumes(volumes)
    if dicom_seg and case.format == "dicom":
        from muscle_pipeline.io.dicom_seg import write_dicom_seg
        from muscle_pipeline.io.read import ordered_series_files

        write_dicom_seg(label_array, affine, ordered_series_files(case), folder / "segmentation.dcm", notes=warnings)
    return {
        "status": "complete",
        "case_id": case.case_id,
        "sources": [str(p) for p in case.paths],
        "model": model_name,
        "device": str(getattr(model, "device", "cpu")),
        "precision": getattr(model, "precision", "fp32"),
        "versions": _versions(),
        "input": {"shape": list(label_array.shape), "affine": affine.round(6).tolist(),
                  "modality": image.meta.get("modality")},
        "recognition": recognition.as_dict() if recognition is not None else None,
        # files skipped beside this case's own (a DICOM folder's non-image files, say)
        "skipped_files": [str(s) for s in getattr(case, "skipped_beside", ()) or ()],
        "legs": result.legs,
        "timings_s": {},
        "warnings": warnings,
        "volumes_ml": {v.name: v.volume_ml for v in volumes},
    }


def segment(
    inputs: str | Path | Iterable[str | Path],
    output_dir: str | Path,
    model: str | Path = "auto",
    device: str = "cpu",
    overwrite: bool = False,
    shard: str | tuple[int, int] | None = None,
    side: str | None = None,
    dicom_seg: bool = True,
    progress: bool = True,
    memory_budget_mb: float | None = None,
    force: bool = False,
    precision: str | None = None,
) -> list[CaseResult]:
    """Segment every case found in ``inputs`` (files or folders, searched recursively) and write
    one output folder per case under ``output_dir`` (see docs/outputs.md).

    Resumable (complete cases are skipped unless ``overwrite``), failure-isolated (a bad case is
    recorded in ``batch_report.csv`` and the batch goes on), shardable (``shard="i/n"``). Returns
    one :class:`CaseResult` per case of the shard (``status`` complete/skipped/failed/locked;
    ``details`` holds the case's report, with volumes in mL and warnings). ``memory_budget_mb``
    overrides a cascade bundle's fusion working-memory budget (see docs/benchmarks.md);
    ``precision`` its networks' precision (``"auto"``: bf16 where the CPU/GPU computes it natively,
    ``"fp32"``, ``"bf16"``, ``"fp16"`` on CUDA; default: the bundle's, ``auto``).

    Each case is recognised first (modality, region per slice, legs: :mod:`muscle_pipeline.recognition`).
    ``model="auto"`` picks the shipped model that covers it; a named model (or a bundle path) is
    checked against it. A case no model fits, or one without orientation in its header, is
    ``rejected`` with a one-line reason and not segmented; ``force=True`` segments it anyway
    (the reason becomes a warning).
    """
    skipped: list = []
    cases = discover(inputs, skipped=skipped, exclude=[output_dir])  # never read our own output back
    if not cases:
        first = inputs if isinstance(inputs, (str, Path)) else next(iter(inputs), None)
        raise NoCasesFoundError(first, "no readable scan found" + (f" ({len(skipped)} files skipped)" if skipped else ""))
    shard_t = parse_shard(shard) if isinstance(shard, str) or shard is None else tuple(shard)
    models = ModelPicker(model, device=device, memory_budget_mb=memory_budget_mb, force=force, precision=precision)
    prepare_output_dir(output_dir)  # a folder that cannot be written fails the job before any model loads
    startup.import_monai()  # the CLI's own process: without the optional imports a job never uses
    models.load_named()  # a named model is loaded before any case: a broken bundle fails the job at once

    from muscle_pipeline.io.read import read_image
    from muscle_pipeline.recognition import recognize_scan

    # the CLI's own process: start-up is over, before any scan is read (what is frozen now is
    # never collected, so no case's data may be among it; see muscle_pipeline.startup)
    startup.ready()

    def process(case, image, folder, stage):
        stage("recognise")
        recognition = recognize_scan(image, dicom_modality=case.modality)
        name, net, provenance, warnings = models.pick(case, image, recognition)
        return segment_case_to_folder(case, image, folder, stage, net, name, side=side, dicom_seg=dicom_seg,
                                      recognition=recognition, provenance=provenance, warnings=warnings)

    report: BatchReport = run_batch(cases, output_dir, process, load=read_image, overwrite=overwrite,
                                    shard=shard_t, progress=progress, skipped=skipped)
    return report.results


class ModelPicker:
    """The model for each case: ``"auto"`` routes by the case's recognition, a name or a path is
    checked against it (:mod:`muscle_pipeline.routing`). A name is resolved when the picker is
    made (a model that does not exist fails at once, before torch is imported); models are loaded
    once, on first use, or all at once by :meth:`load_named`."""

    def __init__(self, model: str | Path = "auto", device: str = "cpu", memory_budget_mb: float | None = None,
                 force: bool = False, precision: str | None = None):
        self.requested, self.device, self.memory_budget_mb, self.force = model, device, memory_budget_mb, force
        self.precision = precision
        self._loaded: dict[Path, tuple] = {}
        self.fixed = None if str(model) == routing.AUTO else routing.resolve_bundle(model)

    def load_named(self) -> None:
        """Load the named model now (``auto`` loads each model on the first case it fits)."""
        if self.fixed is not None:
            self._load(self.fixed)

    def _load(self, root: Path) -> tuple:
        if root not in self._loaded:
            # cascade bundles have a "precision" config id; the 2.5D model runs fp32 whatever is asked
            overrides = {"precision": self.precision} if self.precision else {}
            net = load_model(root, device=self.device, **overrides)
            if self.memory_budget_mb is not None and hasattr(net, "memory_budget_mb"):
                net.memory_budget_mb = float(self.memory_budget_mb)
            provenance = {"model_path": str(root), "model_weights_sha256": routing.weights_sha256(root)}
            self._loaded[root] = (net, provenance)
        return self._loaded[root]

    def pick(self, case, image, recognition) -> tuple[str, object, dict, list[str]]:
        """(model name, loaded model, provenance for report.json, warnings); raises CaseRejected."""
        source = case.source
        warnings = list(image.meta.get("read_warnings") or [])
        problems = []
        if image.meta.get("orientation_problem") == "missing":
            problems.append("no orientation in the header (NIfTI qform and sform codes 0): left and right cannot "
                            "be told")
        if self.fixed is None:
            try:
                coverage, fit_warnings = routing.choose(recognition)
            except CaseRejected as exc:
                raise CaseRejected(source, exc.reason) from None
            root = coverage.root
        else:
            root = self.fixed
            coverage = routing.coverage_of(root)
            reason, fit_warnings = routing.fit(recognition, coverage) if coverage is not None else (None, [])
            if reason is not None:
                problems.append(reason)
        if problems and not self.force:
            raise CaseRejected(source, "; ".join(problems) + " (--force segments it anyway)")
        warnings += [f"forced: {p}" for p in problems] + fit_warnings
        net, provenance = self._load(root)
        return root.name, net, provenance, warnings


def batch_exit_code(results: list[CaseResult]) -> int:
    return BatchReport(results, "").exit_code


def train(bundle: str | os.PathLike, output_dir: str | os.PathLike | None = None, configs=(), **overrides) -> Path:
    """Train a bundle: its ``configs/train.json`` through MONAI's bundle runner, so every
    override works as on the ``monai.bundle run`` command line.

    ``bundle``: a shipped bundle name or a bundle folder given as a path. ``configs``: more
    config files merged after ``train.json``, by name in the bundle's ``configs/`` (``"train_atlas"``,
    ``"multi_gpu_train"``) or by path. ``overrides``: config ids and values, nested ids with ``#``
    (``**{"trainer#stage1_iterations": 500}``, ``stage=1``, ``dataset=[...]``). Weights go to
    ``output_dir`` (default ``runs/<bundle name>`` under the working directory), never into the
    shipped bundle unless it is named. Returns the output folder::

        mp.train("lower_limb_35", "runs/ll35", configs=["train_atlas"], stage=1)
    """
    from monai.bundle import run as bundle_run

    from muscle_pipeline.errors import ModelError
    from muscle_pipeline.routing import resolve_bundle

    root = resolve_bundle(bundle)
    files = [root / "configs" / "train.json"]
    for extra in [configs] if isinstance(configs, (str, os.PathLike)) else configs:
        named = root / "configs" / f"{extra}.json"
        path = named if named.is_file() else Path(extra)
        if not path.is_file():
            raise ModelError(f"bundle {root.name}: no config {extra!r} (looked for {named} and {path})")
        files.append(path)
    out = Path(output_dir if output_dir is not None else Path("runs") / root.name).resolve()
    out.mkdir(parents=True, exist_ok=True)
    bundle_run(run_id="run", config_file=[str(f) for f in files], meta_file=str(root / "configs" / "metadata.json"),
               bundle_root=str(root), output_dir=str(out), **overrides)
    return out


def evaluate(pairs, out_dir, labels=None, reference_map=None, distances=True):
    """Dice/ASD/HD95/volume error of predicted vs reference label maps; writes CSV + box plot.

    ``reference_map``: the references keep a source dataset's numbers (a dataset map name such as
    ``"totalsegmentator_total"``, or ``{value: ontology name}``): they are mapped to the ontology
    first; structures they do not label are not scored (``rows.not_scored``, ``not_scored.csv``)
    and structures they label that a prediction lacks score 0. An unknown name raises UsageError.
    """
    from muscle_pipeline.evaluation import evaluate_pairs

    return evaluate_pairs(pairs, labels, out_dir, distances=distances, reference_map=reference_map)


def summary_json(results: list[CaseResult]) -> str:
    return json.dumps([{"case_id": r.case_id, "status": r.status, "output": r.output, "reason": r.reason}
                       for r in results], indent=2)
