"""Post-processing and case outputs, before/after issue 18's speed-up, in one process.

Usage: .venv/bin/python benchmarks/bench_outputs.py [--repeats 3] [--ct-labels PATH]

Times the implementation of ``REFERENCE_COMMIT`` (the modules ``postprocess``, ``quantify`` and
``qc`` as they were there, loaded from git into this process) against the working tree's, median
of ``--repeats`` runs each, alternating, on two label maps:

* the 512x512x400 synthetic CT's finished label map (both legs, 43 structures; made with
  ``muscle-pipeline segment benchmarks/work/synthetic_ct_512x512x400.nii.gz --model
  ./runs/ll35_bundle --force`` when ``--ct-labels`` is missing);
* the real labelled calf (qMRI-tools DTI, 80x160x25, 3x3x6 mm; its hand labels).

1. ``clean_label_map`` (largest component, 3 mm closing as the bundles use, hole filling) on the
   whole map; the two results must be identical voxel for voxel, and its peak traced memory.
2. The case outputs ``api._write_case_outputs`` (label map NIfTI, label tables, volumes table,
   QC picture; no DICOM SEG), with the reference ``measure_volumes`` / ``save_qc_png`` swapped in
   for "before"; ``volumes.csv`` must be byte-identical and ``qc.png`` pixel-identical (until the
   QC picture was drawn with Pillow instead of matplotlib, a new layout: its pixels now differ from
   the reference's by design, and the table says so).
3. The NIfTI label map's gzip level (nibabel's default, and the time/size of a few levels).

Results: benchmarks/results/bench_outputs.{md,json}.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
import types
from pathlib import Path

import nibabel as nib
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from bench_segment import DATA, RESULTS, WORK, machine  # noqa: E402

# the last commit with the previous post-processing, volumes and QC code
REFERENCE_COMMIT = "b20914400be1ca7ea4918c224697db94ab16af7f"
CT_IMAGE = WORK / "synthetic_ct_512x512x400.nii.gz"
CT_LABELS = WORK / "bench_outputs" / "synthetic_ct_512x512x400" / "segmentation.nii.gz"
CALF = DATA / "qmritools" / "calf_dti_labeled_half"
CLOSING_MM = 3.0  # what the cascade bundles' inference.json sets


def _reference(module: str):
    """``muscle_pipeline.<module>`` as it was at REFERENCE_COMMIT, loaded as a private module."""
    source = subprocess.run(["git", "show", f"{REFERENCE_COMMIT}:muscle_pipeline/{module}.py"], cwd=REPO,
                            check=True, capture_output=True, text=True).stdout
    name = f"_reference_{module}"
    spec = importlib.util.spec_from_loader(name, loader=None)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up
    exec(compile(source, f"{REFERENCE_COMMIT[:7]}:muscle_pipeline/{module}.py", "exec"), mod.__dict__)
    return mod


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _ensure_ct_labels(path: Path) -> Path:
    if path.exists():
        return path
    from muscle_pipeline.api import segment

    print(f"making {path} (segmenting the synthetic CT with ./runs/ll35_bundle)", flush=True)
    segment([CT_IMAGE], path.parent.parent, model=str(REPO / "runs" / "ll35_bundle"), force=True, progress=False)
    return path


def _alternating(functions: dict, repeats: int) -> tuple[dict[str, list[float]], dict]:
    """Run each function ``repeats`` times, alternating; seconds per run and the last results."""
    seconds: dict[str, list[float]] = {k: [] for k in functions}
    results = {}
    for _ in range(repeats):
        for key, function in functions.items():
            t0 = time.perf_counter()
            results[key] = function()
            seconds[key].append(time.perf_counter() - t0)
    return seconds, results


def _peak_mb(function) -> float:
    tracemalloc.start()
    try:
        function()
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def bench_clean(name: str, labels: np.ndarray, spacing, repeats: int, reference) -> dict:
    from muscle_pipeline import postprocess

    runs = {"before": lambda: reference.clean_label_map(labels, spacing, closing_mm=CLOSING_MM),
            "after": lambda: postprocess.clean_label_map(labels, spacing, closing_mm=CLOSING_MM)}
    seconds, results = _alternating(runs, repeats)
    identical = bool(np.array_equal(results["before"], results["after"]) and results["before"].dtype == results["after"].dtype)
    return {
        "map": name, "shape": list(labels.shape), "spacing_mm": [round(float(s), 4) for s in spacing],
        "labels": int(len(np.unique(labels)) - 1), "closing_mm": CLOSING_MM,
        "seconds": {k: statistics.median(v) for k, v in seconds.items()}, "runs_s": seconds,
        "peak_traced_mb": {k: round(_peak_mb(f), 1) for k, f in runs.items()},
        "changed_voxels": int(np.count_nonzero(results["after"] != labels)),
        "identical": identical,
    }


def bench_outputs(name: str, image_path: Path, labels_path: Path, repeats: int, references: dict) -> dict:
    """``api._write_case_outputs`` before (reference volumes and QC) and after, with per-step times."""
    import torch

    from muscle_pipeline import api
    from muscle_pipeline import labels as ontology
    from muscle_pipeline.io import read_image

    image = read_image(str(image_path))
    label_array = np.ascontiguousarray(np.asarray(nib.load(labels_path).dataobj).astype(np.uint8))
    values = [int(v) for v in np.unique(label_array) if v]
    names = sorted({ontology.label(v).name.removesuffix("_left").removesuffix("_right") for v in values})
    case = types.SimpleNamespace(case_id=name, paths=[image_path], format="nifti", modality=None, skipped_beside=())
    model = types.SimpleNamespace(structures=names, device="cpu")
    result = types.SimpleNamespace(labels=torch.from_numpy(label_array), warnings=[], legs=[], timings={})
    steps = {"write_label_map": api.write_label_map, "measure_volumes": api.measure_volumes,
             "save_qc_png": api.save_qc_png}
    variants = {
        "before": {"measure_volumes": references["quantify"].measure_volumes,
                   # the reference takes no values= (it finds them itself)
                   "save_qc_png": lambda *a, values=None, **k: references["qc"].save_qc_png(*a, **k)},
        "after": {},
    }
    step_seconds: dict[str, dict[str, list[float]]] = {v: {s: [] for s in steps} for v in variants}
    work = Path(tempfile.mkdtemp(prefix="bench_outputs_"))

    def timed(variant, step, function):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                step_seconds[variant][step].append(time.perf_counter() - t0)
        return wrapper

    def run(variant):
        folder = work / variant
        folder.mkdir(exist_ok=True)
        originals = {s: getattr(api, s) for s in steps}
        try:
            for step, function in steps.items():
                setattr(api, step, timed(variant, step, variants[variant].get(step, function)))
            return api._write_case_outputs(case, image, folder, model, "bench", result, False, None)
        finally:
            for step, function in originals.items():
                setattr(api, step, function)

    # one untimed run each first: the first QC picture of a process imports matplotlib
    run("before"), run("after")
    for variant in step_seconds.values():
        for times in variant.values():
            times.clear()
    seconds, reports = _alternating({v: (lambda v=v: run(v)) for v in variants}, repeats)

    from PIL import Image

    def pixels(variant):
        with Image.open(work / variant / "qc.png") as im:
            return np.asarray(im)

    checks = {
        "volumes_csv_identical": (work / "before" / "volumes.csv").read_bytes() == (work / "after" / "volumes.csv").read_bytes(),
        "qc_png_pixels_identical": bool(np.array_equal(pixels("before"), pixels("after"))),
        "segmentation_identical": _sha256(work / "before" / "segmentation.nii.gz") == _sha256(work / "after" / "segmentation.nii.gz"),
        "report_identical": reports["before"] == reports["after"],
    }
    sizes = {v: {f: (work / v / f).stat().st_size for f in ("segmentation.nii.gz", "qc.png", "volumes.csv")} for v in variants}
    return {
        "case": name, "image": str(image_path), "labels": str(labels_path), "shape": list(label_array.shape),
        "structures": len(values),
        "seconds": {k: statistics.median(v) for k, v in seconds.items()}, "runs_s": seconds,
        "step_seconds": {v: {s: statistics.median(t) for s, t in d.items()} for v, d in step_seconds.items()},
        "file_bytes": sizes, **checks,
    }


def nifti_levels(labels_path: Path, image_path: Path) -> dict:
    """nibabel's default gzip level, and write time / size of the label map at a few levels."""
    from nibabel.openers import Opener

    from muscle_pipeline.io import read_image, write_label_map

    reference = read_image(str(image_path))
    labels = np.ascontiguousarray(np.asarray(nib.load(labels_path).dataobj).astype(np.uint8))
    default = Opener.default_compresslevel
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            for level in (1, 3, 6, 9):
                Opener.default_compresslevel = level
                t0 = time.perf_counter()
                path = write_label_map(labels, reference, Path(tmp) / f"level{level}.nii.gz")
                rows.append({"level": level, "seconds": time.perf_counter() - t0, "bytes": path.stat().st_size})
        finally:
            Opener.default_compresslevel = default
    return {"nibabel_default_compresslevel": default, "levels": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ct-image", type=Path, default=CT_IMAGE)
    parser.add_argument("--ct-labels", type=Path, default=CT_LABELS)
    parser.add_argument("--calf-image", type=Path, default=CALF / "twoLegs_x80-160.nii.gz")
    parser.add_argument("--calf-labels", type=Path, default=CALF / "labels_x80-160.nii.gz")
    args = parser.parse_args()

    info = machine()
    references = {m: _reference(m) for m in ("postprocess", "quantify", "qc")}
    maps = {"synthetic CT 512x512x400 (ll35 segmentation)": (args.ct_image, _ensure_ct_labels(args.ct_labels)),
            "real calf DTI 80x160x25 (hand labels)": (args.calf_image, args.calf_labels)}
    clean, outputs = [], []
    for name, (image_path, labels_path) in maps.items():
        img = nib.load(labels_path)
        labels = np.ascontiguousarray(np.asarray(img.dataobj).astype(np.uint8))
        spacing = tuple(float(s) for s in np.linalg.norm(img.affine[:3, :3], axis=0))
        clean.append(bench_clean(name, labels, spacing, args.repeats, references["postprocess"]))
        print(json.dumps(clean[-1]), flush=True)
        outputs.append(bench_outputs(name, image_path, labels_path, args.repeats, references))
        print(json.dumps(outputs[-1]), flush=True)
    levels = nifti_levels(maps["synthetic CT 512x512x400 (ll35 segmentation)"][1], args.ct_image)
    result = {"benchmark": "benchmarks/bench_outputs.py", "reference_commit": REFERENCE_COMMIT,
              "repeats": args.repeats, "machine": info, "load_average_at_end": list(os.getloadavg()),
              "ct_labels_sha256": _sha256(maps["synthetic CT 512x512x400 (ll35 segmentation)"][1]),
              "clean_label_map": clean, "case_outputs": outputs, "nifti_gzip": levels}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "bench_outputs.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "bench_outputs.md").write_text(markdown(result))
    print((RESULTS / "bench_outputs.md").read_text())


def markdown(r: dict) -> str:
    m = r["machine"]
    lines = [
        "# Post-processing and case outputs, before/after (benchmarks/bench_outputs.py)",
        "",
        f"Before: the code of `{r['reference_commit'][:7]}` (`postprocess`, `quantify`, `qc` loaded from git into the "
        f"same process); after: the working tree. Median of {r['repeats']} alternating runs. {m['cpu']}, "
        f"{m['logical_cpus']} logical CPUs, Python {m['python']}; load average {m['load_average_at_start'][0]:.1f} at the "
        f"start, {r['load_average_at_end'][0]:.1f} at the end (a shared machine: compare rows of one run).",
        "",
        f"## clean_label_map (largest component, {CLOSING_MM:g} mm closing, hole filling), whole map",
        "",
        "| map | shape | labels | before s | after s | speed-up | peak traced MB before / after | identical |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in r["clean_label_map"]:
        s = c["seconds"]
        lines.append(f"| {c['map']} | {'x'.join(map(str, c['shape']))} | {c['labels']} | {s['before']:.3f} | "
                     f"{s['after']:.3f} | {s['before'] / max(s['after'], 1e-9):.1f}x | "
                     f"{c['peak_traced_mb']['before']:.0f} / {c['peak_traced_mb']['after']:.0f} | "
                     f"{'yes' if c['identical'] else '**NO**'} |")
    lines += [
        "",
        "## Case outputs (`api._write_case_outputs`: NIfTI, label tables, volumes.csv, qc.png)",
        "",
        "| case | before s | after s | write_label_map | measure_volumes before / after | save_qc_png before / after | "
        "volumes.csv | qc.png pixels | qc.png KB before / after |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for o in r["case_outputs"]:
        s, st, fb = o["seconds"], o["step_seconds"], o["file_bytes"]
        lines.append(
            f"| {o['case']} | {s['before']:.3f} | {s['after']:.3f} | {st['after']['write_label_map']:.3f} | "
            f"{st['before']['measure_volumes']:.3f} / {st['after']['measure_volumes']:.3f} | "
            f"{st['before']['save_qc_png']:.3f} / {st['after']['save_qc_png']:.3f} | "
            f"{'identical' if o['volumes_csv_identical'] else '**differs**'} | "
            f"{'identical' if o['qc_png_pixels_identical'] else '**differ**'} | "
            f"{fb['before']['qc.png'] / 1024:.0f} / {fb['after']['qc.png'] / 1024:.0f} |")
    g = r["nifti_gzip"]
    lines += [
        "",
        "qc.png is written with zlib level 3 instead of Pillow's default 6: the same pixels, a slightly larger file.",
        "",
        f"## NIfTI label map gzip level (CT map; nibabel's default level is {g['nibabel_default_compresslevel']}, "
        "which the pipeline uses)",
        "",
        "| level | write s | MB |",
        "|---|---|---|",
        *[f"| {x['level']} | {x['seconds']:.2f} | {x['bytes'] / 2**20:.2f} |" for x in g["levels"]],
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
