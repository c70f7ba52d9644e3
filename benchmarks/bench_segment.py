"""Per-stage wall time and peak memory of the segment job, side by side with nnU-Net v2.

Usage:
    .venv/bin/python benchmarks/bench_segment.py [--threads 2] [--repeats 3] [--cases test_low,calf_dixon3d,ct_512x512x400]
                                                 [--no-nnunet] [--n4]

Each case runs in a fresh process (so its peak RSS is its own): import, model load, then the
job's per-case work ``repeats`` times (read → split legs → side check → preprocess [→ N4] →
stage 1 → stage 2 with box TTA → fusion → postprocess → write the whole output folder), each
stage timed by ``muscle_pipeline.profiling``. Run 1 is the cold case a one-scan user waits for;
the median of the later runs is what each further case of a cohort costs.

Cases: the real calves ``qmritools/thigh_calf_unlabeled/test_low.nii.gz`` (320×320×31) and
``swastling_musclemap/calf_dixon3d_unlabeled`` (448×210×96) with ``calf_mri``, and a synthetic
512×512×400 CT hip phantom with ``hip_ct`` (written once to ``benchmarks/work``).
``--n4`` adds our fast N4 on the stage-2 grid to the calf cascade (the shipped calf_mri was
trained without it), to see its share of the total.

nnU-Net v2 (``benchmarks/nnunet_baseline.py``, its own venv): a 2d model trained here on the
same labelled calf leg predicts test_low with and without mirroring TTA at the same thread
count. Dice of both methods is measured on the labelled calf leg (the only labels we have:
in-sample for both, since both were trained on it) and on simulated other legs that neither has
seen (``benchmarks/heldout_proxy.py``: warped, re-contrasted, mirrored copies of that leg).

Results are printed and written to ``benchmarks/results/bench_segment.{md,json}`` with the
machine's details.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tools/ (development tooling, not installed) is imported from the repository root
DATA = Path(os.environ.get("MUSCLE_PIPELINE_SHARED_DATA", REPO.parent / "shared" / "data"))
WORK = REPO / "benchmarks" / "work"
RESULTS = REPO / "benchmarks" / "results"
CASES = {
    "test_low": ("calf_mri", DATA / "qmritools" / "thigh_calf_unlabeled" / "test_low.nii.gz"),
    "calf_dixon3d": ("calf_mri", DATA / "swastling_musclemap" / "calf_dixon3d_unlabeled"),
    "ct_512x512x400": ("hip_ct", WORK / "synthetic_ct_512x512x400.nii.gz"),
}
LABELLED_CALF = (DATA / "qmritools" / "calf_dti_labeled_half" / "twoLegs_x80-160.nii.gz",
                 DATA / "qmritools" / "calf_dti_labeled_half" / "labels_x80-160.nii.gz")
# N4 on the cascade's stage-2 grid (3 x 3 x 6 mm leg crops). ITK's N4 costs ~20-50 ms per iteration
# on a leg crop at 6 mm, scaling with the voxels fitted: shrink x4 (12 mm in-plane) and ONE level of
# 7 control points x 20 iterations take 0.15-0.3 s per leg. Low-frequency non-uniformity per leg
# (before -> SimpleITK-style 3 levels x 50 at shrink 2 -> these settings): test_low 0.061 -> 0.029
# -> 0.036 and 0.060 -> 0.030 -> 0.031; calf 3D Dixon 0.121 -> 0.086 -> 0.108 and 0.116 -> 0.082 ->
# 0.099; test_up 0.100 -> 0.065 -> 0.069 (measured 2026-11-21; docs/benchmarks.md).
CASCADE_N4 = {"shrink_factor": 4, "num_fitting_levels": 1, "iterations_per_level": 20, "num_control_points": 7,
              "num_threads": 1}
STAGE_ORDER = ["read", "split_legs", "side_check", "preprocess", "n4", "stage1", "stage2", "fusion", "postprocess",
               "mirror_merge", "write"]


def machine() -> dict:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem_gb = int(Path("/proc/meminfo").read_text().split()[1]) / 2**20
    except OSError:
        mem_gb = None
    import monai
    import torch

    return {"cpu": cpu, "logical_cpus": os.cpu_count(), "memory_gb": round(mem_gb, 1) if mem_gb else None,
            "python": platform.python_version(), "torch": torch.__version__, "monai": monai.__version__,
            "platform": platform.platform(), "load_average_at_start": list(os.getloadavg())}


def ensure_synthetic_ct(path: Path, shape=(512, 512, 400)) -> Path:
    """The synthetic CT hip phantom, generated once (int16 HU, slab-wise, ~1 GB peak)."""
    if path.exists():
        return path
    import nibabel as nib
    import numpy as np

    from tools.phantoms import make_phantom

    path.parent.mkdir(parents=True, exist_ok=True)
    phantom = make_phantom("hip", "ct", shape=shape, seed=3)
    image = np.clip(np.rint(np.asarray(phantom.image)), -1024, 3071).astype(np.int16)
    tmp = path.with_name(path.name + ".partial.nii.gz")
    nib.save(nib.Nifti1Image(image, np.asarray(phantom.info["affine"], float)), tmp)
    tmp.replace(path)
    return path


# --- one case in this process (started by main in a fresh interpreter) -----------------------------
def run_case(name: str, model_name: str, source: Path, threads: int, repeats: int, n4: bool) -> dict:
    t0 = time.perf_counter()
    import torch

    from muscle_pipeline import api
    from muscle_pipeline.io import discover, read_image
    from muscle_pipeline.profiling import StageProfile, peak_rss_mb, stage

    torch.set_num_threads(threads)
    import_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    model = api.load_model(model_name)
    if n4:
        from muscle_pipeline.transforms.bias import N4BiasFieldCorrection

        model.bias_correction = N4BiasFieldCorrection(**CASCADE_N4)
    load_s = time.perf_counter() - t1
    case = discover([source])[0]
    runs = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as out, StageProfile() as profile:
            start = time.perf_counter()
            with stage("read"):
                image = read_image(case)
            report = api.segment_case_to_folder(case, image, Path(out), lambda s: None, model, model_name)
            total = time.perf_counter() - start
        runs.append({"total_s": total, "stages": profile.table(), "legs": len(report["legs"])})
        del image
    return {"case": name, "model": model_name, "source": str(source), "shape": report["input"]["shape"],
            "threads": threads, "n4": n4, "import_s": import_s, "model_load_s": load_s, "runs": runs,
            "peak_rss_mb": peak_rss_mb()}


def dice_on_labelled_calf(threads: int, nnunet_model: Path | None) -> dict:
    """Per-muscle Dice of calf_mri (through the segment job) and nnU-Net on the labelled calf leg."""
    import nibabel as nib
    import numpy as np
    import torch

    from muscle_pipeline import api
    from muscle_pipeline.datasets import map_labels
    from muscle_pipeline.io import discover, read_image
    from muscle_pipeline.metrics import dice

    torch.set_num_threads(threads)
    image_path, label_path = LABELLED_CALF
    truth = np.asarray(map_labels(np.asarray(nib.load(label_path).dataobj).astype(np.int64), "qmritools_calf"))
    model = api.load_model("calf_mri")
    case = discover([image_path])[0]
    with tempfile.TemporaryDirectory() as out:
        api.segment_case_to_folder(case, read_image(case), Path(out), lambda s: None, model, "calf_mri", side="right")
        ours = np.asarray(nib.load(Path(out) / "segmentation.nii.gz").dataobj)
    values = {m: v for m, v in model.values.items()}
    result = {"calf_mri": {m: float(dice(ours == v, truth == v)) for m, v in values.items()}}
    if nnunet_model is not None:
        sys.path.insert(0, str(REPO / "benchmarks"))
        import nnunet_baseline

        with tempfile.TemporaryDirectory() as out:
            dst = Path(out) / "calf.nii.gz"
            nnunet_baseline.predict(image_path, dst, mirroring=True, threads=threads, model=nnunet_model)
            index = np.asarray(nib.load(dst).dataobj)
        lut = nnunet_baseline.nnunet_labels_to_ontology()
        theirs = np.zeros_like(index, dtype=np.uint8)
        for i, v in lut.items():
            theirs[index == i] = v
        result["nnunet_2d"] = {m: float(dice(theirs == v, truth == v)) for m, v in values.items()}
    for method in list(result):
        result[method]["mean"] = float(np.mean(list(result[method].values())))
    return result


def nnunet_timings(source: Path, threads: int, repeats: int) -> dict | None:
    sys.path.insert(0, str(REPO / "benchmarks"))
    import nnunet_baseline

    try:
        model = nnunet_baseline.model_folder()
    except FileNotFoundError as exc:
        print(f"nnU-Net skipped: {exc}")
        return None
    rows = {}
    for mirroring in (True, False):
        runs = []
        for _ in range(repeats):
            with tempfile.TemporaryDirectory() as out:
                runs.append(nnunet_baseline.predict(source, Path(out) / "pred.nii.gz", mirroring, threads, model))
        rows["mirroring" if mirroring else "no_mirroring"] = {
            "predict_s_median": statistics.median(r["predict_s"] for r in runs),
            "predict_s": [r["predict_s"] for r in runs], "import_s": runs[0]["import_s"], "load_s": runs[0]["load_s"],
            "peak_rss_mb": max(max(r["peak_rss_mb"], r["peak_rss_children_mb"]) for r in runs)}
    return {"model": str(model.relative_to(REPO)), "epochs": model.name.split("_")[1].replace("epochs", ""), "checkpoint": runs[0]["checkpoint"],
            "training_log": _nnunet_training_summary(model), **rows}


def _nnunet_training_summary(model: Path) -> dict:
    """Epochs actually run and seconds per epoch, from nnU-Net's own training log."""
    import re

    logs = sorted((model / "fold_all").glob("training_log_*.txt"))
    if not logs:
        return {}
    text = logs[-1].read_text()
    epochs = [int(e) for e in re.findall(r"Epoch (\d+)\s*$", text, re.M)]
    times = [float(t) for t in re.findall(r"Epoch time: ([0-9.]+) s", text)]
    return {"epochs_run": len(times), "last_epoch": max(epochs) if epochs else None,
            "median_epoch_s": statistics.median(times) if times else None}


# --- report ------------------------------------------------------------------------------------------
def summarise(result: dict) -> dict:
    runs = result["runs"]
    later = runs[1:] or runs
    stages = {}
    for name in STAGE_ORDER:
        cold = next((s["seconds"] for s in runs[0]["stages"] if s["stage"] == name), None)
        warm = [next((s["seconds"] for s in r["stages"] if s["stage"] == name), 0.0) for r in later]
        peak = max((s["peak_rss_mb"] for r in runs for s in r["stages"] if s["stage"] == name), default=None)
        if cold is not None:
            stages[name] = {"cold_s": cold, "warm_s": statistics.median(warm), "peak_rss_mb": peak}
    return {"cold_total_s": runs[0]["total_s"], "warm_total_s": statistics.median(r["total_s"] for r in later),
            "stages": stages}


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = ["# Segment job: time and memory per stage (benchmarks/bench_segment.py)", "",
             f"Machine: {m['cpu']}, {m['logical_cpus']} logical CPUs, {m['memory_gb']} GB; torch {m['torch']}, "
             f"MONAI {m['monai']}, Python {m['python']}. Threads: {report['threads']}. Load average at start "
             f"{m['load_average_at_start'][0]:.2f}, at end {report['load_average_at_end'][0]:.2f} "
             "(other processes on the machine slow every row alike; compare rows of one run).", "",
             "Cold = the first case in a fresh process (what a one-scan user waits for, after the import and "
             "model load shown separately); warm = median of the later cases (what each further case of a cohort "
             "costs). Peak RSS = the process's highest resident memory during that stage.", ""]
    for r in report["cases"]:
        s = r["summary"]
        lines += [f"## {r['case']} ({' x '.join(map(str, r['shape']))}, {r['model']}{', with N4' if r['n4'] else ''})", "",
                  f"Import {r['import_s']:.1f} s, model load {r['model_load_s']:.2f} s (once per process). "
                  f"Process peak RSS **{r['peak_rss_mb']:.0f} MB**. Legs: {r['runs'][0]['legs']}.", "",
                  "| stage | cold s | warm s | share of warm | peak RSS MB |", "|---|---|---|---|---|"]
        for name, st in s["stages"].items():
            lines.append(f"| {name} | {st['cold_s']:.2f} | {st['warm_s']:.2f} | {100 * st['warm_s'] / s['warm_total_s']:.0f} % "
                         f"| {st['peak_rss_mb']:.0f} |")
        other_cold = s["cold_total_s"] - sum(v["cold_s"] for v in s["stages"].values())
        other_warm = s["warm_total_s"] - sum(v["warm_s"] for v in s["stages"].values())
        lines += [f"| (untimed glue) | {other_cold:.2f} | {other_warm:.2f} | | |",
                  f"| **total** | **{s['cold_total_s']:.2f}** | **{s['warm_total_s']:.2f}** | | |", ""]
    nn = report.get("nnunet")
    if nn:
        ours = next((r for r in report["cases"] if r["case"] == "test_low"), None)
        lines += ["## Side by side on test_low: calf_mri cascade vs nnU-Net v2 2d", "",
                  f"nnU-Net model: `{nn['model']}` ({nn['training_log'].get('epochs_run')} of {nn['epochs']} planned epochs "
                  f"on the labelled calf leg, CPU, median {nn['training_log'].get('median_epoch_s') or 0:.0f} s per epoch; "
                  f"`{nn['checkpoint']}`). "
                  f"nnU-Net's time is `predict_from_files` (read, preprocess, sliding window, export), in a fresh "
                  f"process at {report['threads']} threads; ours is the whole case (read to output folder incl. "
                  f"QC picture).", "",
                  "| method | seconds | peak RSS MB | mean Dice, labelled leg (in-sample) "
                  "| mean Dice, simulated other legs (unseen) |", "|---|---|---|---|---|"]
        dice_rows = report.get("dice", {})
        proxy = report.get("heldout_proxy", {}).get("mirrored", {})

        def proxy_mean(method):
            return f"{proxy[method]['mean']:.3f}" if method in proxy else "-"

        if ours:
            os_ = ours["summary"]
            lines.append(f"| calf_mri cascade, 6-box TTA (cold / warm) | {os_['cold_total_s']:.2f} / {os_['warm_total_s']:.2f} "
                         f"| {ours['peak_rss_mb']:.0f} | {dice_rows.get('calf_mri', {}).get('mean', float('nan')):.3f} "
                         f"| {proxy_mean('calf_mri')} |")
        for key, label in (("mirroring", "nnU-Net 2d, mirroring TTA"), ("no_mirroring", "nnU-Net 2d, no TTA")):
            row = nn[key]
            nn_dice = dice_rows.get("nnunet_2d", {}).get("mean") if key == "mirroring" else None
            lines.append(f"| {label} | {row['predict_s_median']:.2f} | {row['peak_rss_mb']:.0f} "
                         f"| {'-' if nn_dice is None else f'{nn_dice:.3f}'} | {proxy_mean('nnunet_2d') if key == 'mirroring' else '-'} |")
        if ours:
            ratio = nn["mirroring"]["predict_s_median"] / ours["summary"]["warm_total_s"]
            ratio_cold = nn["mirroring"]["predict_s_median"] / ours["summary"]["cold_total_s"]
            lines += ["", f"Speed ratio nnU-Net (mirroring) / calf_mri: **{ratio:.1f}x** warm, {ratio_cold:.1f}x cold."]
        if dice_rows.get("nnunet_2d"):
            lines += [f"Dice ratio calf_mri / nnU-Net: in-sample **{dice_rows['calf_mri']['mean'] / dice_rows['nnunet_2d']['mean']:.3f}**"
                      + (f", on simulated other legs **{proxy['calf_mri']['mean'] / proxy['nnunet_2d']['mean']:.3f}**"
                         if "nnunet_2d" in proxy else "") + "."]
        if proxy:
            lines += ["", f"Simulated other legs: {report['heldout_proxy_legs']} warped, re-contrasted copies of the labelled "
                      "leg flipped into the scan's left half (`benchmarks/heldout_proxy.py`, per muscle in "
                      "`benchmarks/results/heldout_proxy.md`); neither method has seen them."]
        lines.append("")
    if report.get("dice"):
        muscles = [k for k in report["dice"]["calf_mri"] if k != "mean"]
        lines += ["### Dice per muscle on the labelled calf leg (in-sample for both methods)", "",
                  "| method | " + " | ".join(muscles) + " | mean |", "|---" * (len(muscles) + 2) + "|"]
        for method, row in report["dice"].items():
            lines.append(f"| {method} | " + " | ".join(f"{row[m]:.3f}" for m in muscles) + f" | {row['mean']:.3f} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--n4", action="store_true")
    parser.add_argument("--no-nnunet", action="store_true")
    parser.add_argument("--proxy-legs", type=int, default=6,
                        help="simulated other legs for the unseen-data Dice (benchmarks/heldout_proxy.py); 0: skip")
    parser.add_argument("--output", type=Path, default=RESULTS / "bench_segment")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one case in this process
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if args.one:
        model_name, source = CASES[args.one]
        print(json.dumps(run_case(args.one, model_name, source, args.threads, args.repeats, args.n4)))
        return 0

    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads), OMP_WAIT_POLICY="PASSIVE")
    report = {"machine": machine(), "threads": args.threads, "repeats": args.repeats, "cases": []}
    for name in args.cases.split(","):
        model_name, source = CASES[name]
        if name.startswith("ct_"):
            ensure_synthetic_ct(source)
        cmd = [sys.executable, __file__, "--one", name, "--threads", str(args.threads), "--repeats", str(args.repeats)]
        cmd += ["--n4"] if args.n4 and model_name == "calf_mri" else []
        print(f"{name}: {model_name} ...", flush=True)
        out = subprocess.run(cmd, check=True, env=env, capture_output=True, text=True)
        result = json.loads(out.stdout.strip().splitlines()[-1])
        result["summary"] = summarise(result)
        report["cases"].append(result)
        print(f"  cold {result['summary']['cold_total_s']:.2f} s, warm {result['summary']['warm_total_s']:.2f} s, "
              f"peak {result['peak_rss_mb']:.0f} MB", flush=True)
    if not args.no_nnunet:
        report["nnunet"] = nnunet_timings(CASES["test_low"][1], args.threads, args.repeats)
    sys.path.insert(0, str(REPO / "benchmarks"))
    nnunet_model = None
    if report.get("nnunet"):
        import nnunet_baseline

        nnunet_model = nnunet_baseline.model_folder()
    report["dice"] = dice_on_labelled_calf(args.threads, nnunet_model)
    if args.proxy_legs > 0:
        import heldout_proxy

        proxy = heldout_proxy.run(args.proxy_legs, 0, args.threads, "calf_mri", nnunet_model is not None)
        heldout_proxy.save(proxy, RESULTS / "heldout_proxy")
        report["heldout_proxy"], report["heldout_proxy_legs"] = proxy["summary"], args.proxy_legs
    report["load_average_at_end"] = list(os.getloadavg())
    text = markdown(report)
    print(text)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.with_suffix(".json").write_text(json.dumps(report, indent=1, default=str))
    args.output.with_suffix(".md").write_text(text)
    print(f"written: {args.output.with_suffix('.md')} and .json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
