"""Peak memory of the segment job on a huge CT (512×512×1200), per stage, with and without a budget.

Usage:
    .venv/bin/python benchmarks/bench_memory.py [--budgets none,256] [--threads 2] [--slices 1200]

The volume is a synthetic whole-lower-limb CT: calf, thigh and hip phantoms (512×512×400 each,
0.8×0.8×1.0 mm, HU) stacked along z into one 512×512×1200 int16 NIfTI (written once to
``benchmarks/work``). Each budget runs the real job (``hip_ct``: read → split legs → cascade →
fusion → postprocess → write the output folder) in a fresh process, with
``muscle_pipeline.profiling`` recording the peak resident memory of every stage. The budget is the
cascade's ``memory_budget_mb`` (working memory of one fusion block; ``none`` resamples each
muscle's box at once). Results: ``benchmarks/results/bench_memory.{md,json}``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tools/ (development tooling, not installed) is imported from the repository root
WORK = REPO / "benchmarks" / "work"
RESULTS = REPO / "benchmarks" / "results"


def ensure_whole_limb_ct(slices: int = 1200) -> Path:
    """Stacked calf/thigh/hip CT phantoms, 512×512×``slices`` int16 (generated once)."""
    path = WORK / f"synthetic_ct_512x512x{slices}.nii"
    if path.exists():
        return path
    import nibabel as nib
    import numpy as np

    from tools.phantoms import make_phantom

    WORK.mkdir(parents=True, exist_ok=True)
    per_region = slices // 3
    volume = np.empty((512, 512, per_region * 3), np.int16)
    affine = None
    for k, region in enumerate(("calf", "thigh", "hip")):  # inferior → superior along +z
        phantom = make_phantom(region, "ct", shape=(512, 512, per_region), spacing=(0.8, 0.8, 1.0), seed=10 + k)
        volume[:, :, k * per_region:(k + 1) * per_region] = np.clip(np.rint(np.asarray(phantom.image)), -1024, 3071)
        if affine is None:
            affine = np.asarray(phantom.info["affine"], float)
        del phantom
    tmp = path.with_name(path.name + ".partial.nii")
    nib.save(nib.Nifti1Image(volume, affine), tmp)
    tmp.replace(path)
    return path


def run_one(source: Path, budget: float | None, threads: int) -> dict:
    import torch

    from muscle_pipeline import api
    from muscle_pipeline.io import discover, read_image
    from muscle_pipeline.profiling import StageProfile, current_rss_mb, peak_rss_mb, stage

    torch.set_num_threads(threads)
    model = api.load_model("hip_ct")
    model.memory_budget_mb = budget
    baseline = current_rss_mb()
    case = discover([source])[0]
    with tempfile.TemporaryDirectory() as out, StageProfile() as profile:
        start = time.perf_counter()
        with stage("read"):
            image = read_image(case)
        report = api.segment_case_to_folder(case, image, Path(out), lambda s: None, model, "hip_ct")
        total = time.perf_counter() - start
    return {"budget_mb": budget, "shape": report["input"]["shape"], "total_s": total, "stages": profile.table(),
            "rss_after_imports_mb": baseline, "peak_rss_mb": peak_rss_mb(),
            "input_float32_mb": 4 * float(__import__("numpy").prod(report["input"]["shape"])) / 2**20,
            "volumes_ml": report["volumes_ml"]}


def markdown(rows: list[dict], machine: dict) -> str:
    lines = ["# Peak memory on a 512×512×1200 CT (benchmarks/bench_memory.py)", "",
             f"Machine: {machine['cpu']}, {machine['logical_cpus']} logical CPUs, {machine['memory_gb']} GB. "
             f"Synthetic whole-lower-limb CT, hip_ct cascade, {rows[0]['shape']} voxels "
             f"(input as float32: {rows[0]['input_float32_mb']:.0f} MB).", "",
             "| stage | " + " | ".join(f"peak RSS MB, budget {r['budget_mb'] or 'none'}" for r in rows) + " |",
             "|---" * (len(rows) + 1) + "|"]
    names = [s["stage"] for s in rows[0]["stages"]]
    for name in names:
        cells = []
        for r in rows:
            st = next((s for s in r["stages"] if s["stage"] == name), None)
            cells.append(f"{st['peak_rss_mb']:.0f} ({st['seconds']:.1f} s)" if st else "-")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("| **process peak** | " + " | ".join(f"**{r['peak_rss_mb']:.0f}**" for r in rows) + " |")
    lines.append("| total seconds | " + " | ".join(f"{r['total_s']:.1f}" for r in rows) + " |")
    lines.append("")
    same = all(r["volumes_ml"] == rows[0]["volumes_ml"] for r in rows)
    lines.append(f"Muscle volumes identical across budgets: {'yes' if same else 'NO'}.")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", default="none,256")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--slices", type=int, default=1200)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one is not None:
        budget = None if args.one == "none" else float(args.one)
        print(json.dumps(run_one(ensure_whole_limb_ct(args.slices), budget, args.threads), default=float))
        return 0
    sys.path.insert(0, str(REPO / "benchmarks"))
    from bench_segment import machine

    ensure_whole_limb_ct(args.slices)  # once, before the timed processes
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), OMP_WAIT_POLICY="PASSIVE")
    rows = []
    for budget in args.budgets.split(","):
        print(f"budget {budget} ...", flush=True)
        out = subprocess.run([sys.executable, __file__, "--one", budget, "--threads", str(args.threads),
                              "--slices", str(args.slices)], check=True, env=env, capture_output=True, text=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"  peak {rows[-1]['peak_rss_mb']:.0f} MB, {rows[-1]['total_s']:.1f} s", flush=True)
    text = markdown(rows, machine())
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "bench_memory.json").write_text(json.dumps({"machine": machine(), "runs": rows}, indent=1, default=float))
    (RESULTS / "bench_memory.md").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
