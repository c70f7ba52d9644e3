"""Issue 18: the whole-volume steps of the segment job (leg split, side check, fusion, postprocess)
before and after moving them onto coarse grids / per-label boxes, on the same machine.

Usage:
    .venv/bin/python benchmarks/bench_whole_volume.py process [--repeats 3] [--old /path/to/old/checkout]
    .venv/bin/python benchmarks/bench_whole_volume.py run --label before [--repeats 3] [--cases ...]
    .venv/bin/python benchmarks/bench_whole_volume.py run --label after  [--repeats 3]
    .venv/bin/python benchmarks/bench_whole_volume.py compare [--before before --label after]  # table + Dice

To run the old code again later (same load as the new run), copy the old revision's
``muscle_pipeline`` and ``bundles`` to a folder and run ``run --label before_rerun`` from outside
the repository with ``PYTHONPATH`` set to that folder (``package`` in the result says which ran).

A script cannot run the old and the new code path side by side once the code has changed, so
``run --label before`` was run on the unchanged tree first (its per-stage seconds and its label
maps kept in ``benchmarks/results/bench_whole_volume_before.json`` and
``benchmarks/work/whole_volume/before/``), then ``run --label after`` on the new one. ``compare``
writes ``benchmarks/results/bench_whole_volume.md/.json``: median seconds per stage of each run and
the Dice between the old and the new label map per structure.

Each case runs in a fresh process at 2 threads: read + ``segment_image`` ``repeats`` times, each
stage timed by ``muscle_pipeline.profiling`` (writing the output folder is not part of this).
Cases: a synthetic 512x512x400 CT hip phantom (``bench_segment.py`` writes it once), the real pelvis
CT of TotalSegmentator's example (hip_ct) and two real calf scans of qMRITools (calf_mri).

``process`` times what a user waits for: the whole ``muscle-pipeline segment CASE --model ... -o OUT``
command (Python start-up, imports, loading 36 networks, recognition, the job, every output file)
under ``/usr/bin/time`` (wall seconds, max RSS), ``repeats`` times per case, on the issue's two
targets through lower_limb_35 (the 7 joined stations, the 512^2 CT) and the real calf. With
``--old DIR`` the same commands run from an old checkout's ``muscle_pipeline`` (``PYTHONPATH``),
alternating with the current code, so both see the same machine load; the old code gets the
bundle configs of its own revision (``runs/ll35_bundle_old``). lower_limb_35's weights are not
shipped: ``runs/ll35_bundle`` is the bundle with atlas-trained weights in ``models/`` (e.g. from
``lower_limb_35_atlas.py``); without them it is left out. On the calf test_low, calf_mri and
nnU-Net v2's 2d and 3d_fullres predictors with their default mirroring TTA (``.venv-nnunet``,
models trained by ``nnunet_baseline.py``; a configuration without a model is left out) are timed
the same way, whole process each. Results:
``benchmarks/results/bench_whole_process.{md,json}`` (``--process-output`` renames them).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
DATA = Path(os.environ.get("MUSCLE_PIPELINE_SHARED_DATA", REPO.parent / "shared" / "data"))
WORK = REPO / "benchmarks" / "work" / "whole_volume"
RESULTS = REPO / "benchmarks" / "results"
CASES = {
    "ct_512x512x400": ("hip_ct", REPO / "benchmarks" / "work" / "synthetic_ct_512x512x400.nii.gz"),
    "pelvis_ct": ("hip_ct", DATA / "totalsegmentator" / "ct_abdomen_pelvis" / "example_ct.nii.gz"),
    "calf_test_low": ("calf_mri", DATA / "qmritools" / "thigh_calf_unlabeled" / "test_low.nii.gz"),
    "calf_twolegs": ("calf_mri", DATA / "qmritools" / "calf_dti_labeled_half" / "twoLegs_x80-160.nii.gz"),
}
# 35 structures (the title): lower_limb_35 with the weights of runs/ll35_v01 (not shipped,
# so not in the default cases) on the real calf and thigh
LL35_WEIGHTS = REPO / "runs" / "ll35_v01"
CASES.update({
    "ll35_test_low": ("lower_limb_35", DATA / "qmritools" / "thigh_calf_unlabeled" / "test_low.nii.gz"),
    "ll35_test_up": ("lower_limb_35", DATA / "qmritools" / "thigh_calf_unlabeled" / "test_up.nii.gz"),
})
# issue 18's targets through lower_limb_35: the 7 whole-leg stations joined (both legs) and the 512^2 CT
WHOLE_LEG = REPO / "benchmarks" / "work" / "whole_leg_joined.nii.gz"
CASES.update({
    "ll35_whole_leg": ("lower_limb_35", WHOLE_LEG),
    "ll35_ct_512x512x400": ("lower_limb_35", REPO / "benchmarks" / "work" / "synthetic_ct_512x512x400.nii.gz"),
})
DEFAULT_CASES = ["ct_512x512x400", "pelvis_ct", "calf_test_low", "calf_twolegs"]


def ensure_whole_leg(path: Path = WHOLE_LEG) -> Path:
    """The 7 qMRITools stations joined foot to hip (what ``muscle-pipeline join`` writes), once."""
    if path.is_file():
        return path
    import nibabel as nib
    import numpy as np

    from muscle_pipeline.io import read_image
    from muscle_pipeline.transforms.stations import join_stations

    folder = DATA / "qmritools" / "wholeleg_stations_unlabeled"
    joined = join_stations([read_image(folder / f"Join_{i}.nii.gz") for i in range(1, 8)]).image
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(joined).squeeze().astype(np.float32), np.asarray(joined.affine, float)), path)
    return path


def summary(label: str) -> Path:
    """``bench_whole_volume_<label>.md``: per case the median total, the peak memory and the stages."""
    report = json.loads((RESULTS / f"bench_whole_volume_{label}.json").read_text())
    lines = [f"# Segment job per case ({label}): benchmarks/bench_whole_volume.py", "",
             f"* {report['machine']}; {report['threads']} threads, {report['repeats']} repeats (median), "
             f"commit {report['commit']}; load average at end {report['load_average_at_end']}",
             "* read + segment_image in a fresh process (Python and model loading not included); lower_limb_35 "
             f"with the weights of {LL35_WEIGHTS.relative_to(REPO)} (trained from the atlas here, NOT shipped: "
             "speed does not depend on their quality, the boxes they find do)", "",
             "| case | model | shape | total s | peak RSS MB | " + " | ".join(STAGES) + " |",
             "|---|---|---|---|---|" + "---|" * len(STAGES)]
    for case in report["cases"]:
        med = median_stages(case)
        peak = max(r["peak_rss_mb"] for r in case["runs"])
        lines.append(f"| {case['case']} | {case['model']} | {'x'.join(map(str, case['shape']))} | {med['total']:.1f} | "
                     f"{peak:.0f} | " + " | ".join(f"{med.get(s, 0.0):.2f}" for s in STAGES) + " |")
    out = RESULTS / f"bench_whole_volume_{label}.md"
    out.write_text("\n".join(lines) + "\n")
    print(out.read_text())
    return out
STAGES = ["read", "split_legs", "side_check", "preprocess", "n4", "stage1", "stage2", "fusion", "postprocess",
          "mirror_merge"]


def run_case(name: str, label: str, threads: int, repeats: int) -> dict:
    import nibabel as nib
    import numpy as np
    import torch

    import muscle_pipeline
    from muscle_pipeline import api
    from muscle_pipeline.io import discover, read_image
    from muscle_pipeline.profiling import StageProfile, stage
    from muscle_pipeline.segmentation import segment_image

    torch.set_num_threads(threads)
    model_name, source = CASES[name]
    model = api.load_model(model_name, **({"models_dir": str(LL35_WEIGHTS)} if model_name == "lower_limb_35" else {}))
    case = discover([source])[0]
    runs = []
    for _ in range(repeats):
        with StageProfile() as profile:
            start = time.perf_counter()
            with stage("read"):
                image = read_image(case)
            result = segment_image(image, model)
            total = time.perf_counter() - start
        runs.append({"total_s": total, "stages": {r["stage"]: r["seconds"] for r in profile.table()},
                     "peak_rss_mb": max(r["peak_rss_mb"] for r in profile.table())})
    out = WORK / label
    out.mkdir(parents=True, exist_ok=True)
    labels = np.asarray(result.labels).astype(np.uint8)
    nib.save(nib.Nifti1Image(labels, np.asarray(result.labels.affine, float)), out / f"{name}.nii.gz")
    return {"case": name, "model": model_name, "shape": list(labels.shape), "runs": runs,
            "legs": [{k: leg.get(k) for k in ("side", "roi_start", "roi_end", "anatomical_side")} for leg in result.legs],
            "warnings": result.warnings, "package": str(Path(muscle_pipeline.__file__).parent)}


def median_stages(case: dict) -> dict:
    names = sorted({s for r in case["runs"] for s in r["stages"]})
    med = {s: statistics.median(r["stages"].get(s, 0.0) for r in case["runs"]) for s in names}
    med["total"] = statistics.median(r["total_s"] for r in case["runs"])
    return med


def dice_per_structure(a, b) -> dict:
    import numpy as np

    out = {}
    for v in sorted(set(np.unique(a).tolist()) | set(np.unique(b).tolist()) - {0}):
        if v == 0:
            continue
        x, y = a == v, b == v
        s = int(x.sum()) + int(y.sum())
        out[int(v)] = 1.0 if s == 0 else 2.0 * int((x & y).sum()) / s
    return out


def compare(before_label: str = "before", after_label: str = "after", output: Path = RESULTS / "bench_whole_volume") -> int:
    import nibabel as nib
    import numpy as np

    before = json.loads((RESULTS / f"bench_whole_volume_{before_label}.json").read_text())
    after = json.loads((RESULTS / f"bench_whole_volume_{after_label}.json").read_text())
    lines = ["# Issue 18: whole-volume steps before / after (benchmarks/bench_whole_volume.py)", ""]
    for tag, rep in ((f"before ({before_label})", before), (f"after ({after_label})", after)):
        m = rep["machine"]
        lines.append(f"* {tag}: {m['cpu']}, {m['logical_cpus']} logical CPUs, {m['memory_gb']} GB; torch {m['torch']}, "
                     f"MONAI {m['monai']}, {rep['threads']} threads, {rep['repeats']} repeats (median shown); "
                     f"load average at start {m['load_average_at_start'][0]:.2f}, at end {rep['load_average_at_end'][0]:.2f}; "
                     f"HEAD {rep.get('commit', '?')}, code from `{rep['cases'][0].get('package', '?')}`")
    lines += ["", "Seconds are medians of the repeats in one fresh process per case (read + segment_image; writing the "
              "output folder is not included). Other engineers share the CPU: compare within a row. A run from a "
              "copy of the old code (`/tmp/...`) records the HEAD of the day, not that copy's revision "
              "(issue 18: e5013f4).", ""]
    summary = {"cases": {}}
    for name in [c["case"] for c in after["cases"]]:
        b = next((c for c in before["cases"] if c["case"] == name), None)
        a = next(c for c in after["cases"] if c["case"] == name)
        if b is None:
            continue
        mb, ma = median_stages(b), median_stages(a)
        lines += [f"## {name} ({' x '.join(map(str, a['shape']))}, {a['model']})", "",
                  "| stage | before s | after s | speed-up |", "|---|---|---|---|"]
        for s in STAGES + ["total"]:
            if s not in mb and s not in ma:
                continue
            x, y = mb.get(s, 0.0), ma.get(s, 0.0)
            sp = f"{x / y:.1f}x" if y > 0.005 else "-"
            bold = "**" if s == "total" else ""
            lines.append(f"| {bold}{s}{bold} | {x:.2f} | {y:.2f} | {sp} |")
        la = nib.load(WORK / after_label / f"{name}.nii.gz").get_fdata().astype(np.uint8)
        lb = nib.load(WORK / before_label / f"{name}.nii.gz").get_fdata().astype(np.uint8)
        dice = dice_per_structure(lb, la)
        low = {k: v for k, v in dice.items() if v < 0.99}
        lines += ["", f"Dice old vs new over {len(dice)} structures: min **{min(dice.values()):.4f}**, "
                  f"mean {statistics.mean(dice.values()):.4f}; voxels that differ: {int((la != lb).sum())} of {la.size}"
                  + (f"; below 0.99: {low}" if low else "") + ".",
                  f"Legs before: {b['legs']}", "", f"Legs after: {a['legs']}", ""]
        summary["cases"][name] = {"before": mb, "after": ma, "dice": dice}
    text = "\n".join(lines) + "\n"
    print(text)
    output.with_suffix(".md").write_text(text)
    output.with_suffix(".json").write_text(json.dumps(summary, indent=1))
    return 0


PROCESS_CASES = {"ll35_whole_leg": WHOLE_LEG, "ll35_ct_512x512x400": CASES["ll35_ct_512x512x400"][1],
                 "ll35_test_low": CASES["ll35_test_low"][1]}


def time_process(source: Path, bundle: Path, pythonpath: str | None, threads: int) -> dict:
    """One ``muscle-pipeline segment`` command: wall seconds and max RSS (``/usr/bin/time``) and the
    case's own timings from its report.json."""
    import tempfile

    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    env.pop("PYTHONPATH", None)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    with tempfile.TemporaryDirectory() as out:
        cmd = ["/usr/bin/time", "-f", "TIME %e %M", sys.executable, "-m", "muscle_pipeline", "segment", str(source),
               "--model", str(bundle), "--force", "--quiet", "-o", out]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=out)
        line = [x for x in done.stderr.splitlines() if x.startswith("TIME ")][-1].split()
        reports = list(Path(out).glob("*/report.json"))
        report = json.loads(reports[0].read_text()) if reports else {}
    return {"wall_s": float(line[1]), "max_rss_mb": int(line[2]) / 1024, "returncode": done.returncode,
            "status": report.get("status"), "timings_s": report.get("timings_s", {}),
            "precision": report.get("precision", "fp32")}


def time_nnunet_process(source: Path, threads: int, configuration: str = "2d") -> dict:
    """nnU-Net v2's predictor (``configuration`` 2d or 3d_fullres) with its default mirroring TTA, the
    whole process (Python start-up, imports, model load, read, predict, export) under
    ``/usr/bin/time``, as for ours."""
    import tempfile

    import nnunet_baseline

    model = nnunet_baseline.model_folder(configuration)
    with tempfile.TemporaryDirectory() as out:
        cmd = ["/usr/bin/time", "-f", "TIME %e %M", str(nnunet_baseline.VENV / "bin" / "python"), "-c",
               nnunet_baseline.PREDICT_SCRIPT, str(model), str(source), str(Path(out) / "pred"), "1", str(threads)]
        done = subprocess.run(cmd, env=nnunet_baseline.environment(threads), capture_output=True, text=True)
    line = [x for x in done.stderr.splitlines() if x.startswith("TIME ")][-1].split()
    return {"wall_s": float(line[1]), "max_rss_mb": int(line[2]) / 1024, "returncode": done.returncode,
            "status": "complete" if done.returncode == 0 else "failed", "timings_s": {}, "precision": "fp32",
            "model": model.name}


def process(repeats: int, threads: int, old: str | None, cases: list[str], output: str = "bench_whole_process") -> int:
    from bench_segment import ensure_synthetic_ct, machine

    if "ll35_whole_leg" in cases:
        ensure_whole_leg()
    if "ll35_ct_512x512x400" in cases:
        ensure_synthetic_ct(PROCESS_CASES["ll35_ct_512x512x400"])
    # lower_limb_35 needs weights that are not shipped (runs/ll35_bundle/models); without them the
    # race runs the other codes only
    codes = {"current": (None, REPO / "runs" / "ll35_bundle")} if (REPO / "runs" / "ll35_bundle" / "models").is_dir() else {}
    if not codes:
        print("runs/ll35_bundle has no models: lower_limb_35 is left out of this run", flush=True)
    old_rev = None
    if old:
        old_rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=old, capture_output=True,
                                 text=True).stdout.strip()
        if codes:
            codes[f"old ({old_rev})"] = (old, REPO / "runs" / "ll35_bundle_old")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    report = {"machine": machine(), "threads": threads, "repeats": repeats, "commit": commit, "cases": {}}
    for name in cases:
        case_codes = dict(codes)
        if name == "ll35_test_low":  # the calf race: our calf model and nnU-Net 2d, whole process each
            case_codes["calf_mri (current)"] = (None, "calf_mri")
            if old:
                case_codes[f"calf_mri (old, {old_rev})"] = (old, "calf_mri")
            if (REPO / ".venv-nnunet" / "bin" / "python").is_file():
                import nnunet_baseline

                for configuration in nnunet_baseline.CONFIGURATIONS:
                    try:
                        nnunet_baseline.model_folder(configuration)
                    except FileNotFoundError as missing:
                        print(missing, flush=True)
                        continue
                    case_codes[f"nnU-Net v2 {configuration}, mirroring TTA"] = ("nnunet", configuration)
        runs = {label: [] for label in case_codes}
        for _ in range(repeats):
            for label, (pythonpath, bundle) in case_codes.items():  # alternating: the same load for all
                if pythonpath == "nnunet":
                    runs[label].append(time_nnunet_process(PROCESS_CASES[name], threads, bundle))
                else:
                    runs[label].append(time_process(PROCESS_CASES[name], bundle, pythonpath, threads))
                print(name, label, {k: v for k, v in runs[label][-1].items() if k != "timings_s"}, flush=True)
        report["cases"][name] = runs
    report["load_average_at_end"] = list(os.getloadavg())
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{output}.json").write_text(json.dumps(report, indent=1, default=str))
    lines = ["# Whole process: `muscle-pipeline segment CASE --model lower_limb_35-with-atlas-weights -o OUT` "
             "(benchmarks/bench_whole_volume.py process)", "",
             f"* {report['machine']}; {threads} threads; {repeats} runs per code, alternating; commit {commit}; "
             f"load average at end {report['load_average_at_end']}",
             ("* lower_limb_35 with the weights of runs/ll35_bundle (trained from the atlas here, not shipped: speed "
              "does not depend on their quality, the boxes they find do)." if "current" in codes else
              "* lower_limb_35 left out: no weights in runs/ll35_bundle (none are shipped).")
             + " Wall = everything a user waits for: start-up and imports, loading the networks, recognition, "
             "the job, all outputs. nnU-Net models are trained by nnunet_baseline.py for speed only.", "",
             "| case | code | precision | wall s (median) | runs | max RSS MB | the case's own timings (median, s) |",
             "|---|---|---|---|---|---|---|"]
    for name, runs in report["cases"].items():
        for label, rs in runs.items():
            keys = sorted({k for r in rs for k in r["timings_s"]})
            med = {k: statistics.median(r["timings_s"].get(k, 0.0) for r in rs) for k in keys}
            walls = [r["wall_s"] for r in rs]
            lines.append(f"| {name} | {label} | {rs[0]['precision']} | **{statistics.median(walls):.1f}** | "
                         f"{', '.join(f'{w:.1f}' for w in walls)} | {max(r['max_rss_mb'] for r in rs):.0f} | "
                         + ", ".join(f"{k} {v:.2f}" for k, v in med.items()) + " |")
    (RESULTS / f"{output}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["run", "compare", "one", "process"])
    parser.add_argument("--old", default=None, help="process: an old checkout to time side by side")
    parser.add_argument("--process-output", default="bench_whole_process", help="process: result file name")
    parser.add_argument("--label", default="after")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cases", default=",".join(DEFAULT_CASES), help=f"of {', '.join(CASES)}")
    parser.add_argument("--case")
    parser.add_argument("--before", default="before", help="compare: label of the old code's run")
    parser.add_argument("--output", type=Path, default=RESULTS / "bench_whole_volume")
    args = parser.parse_args(argv)
    if args.command == "compare":
        return compare(args.before, args.label, args.output)
    if args.command == "process":
        names = [c for c in args.cases.split(",") if c in PROCESS_CASES] or list(PROCESS_CASES)
        return process(args.repeats, args.threads, args.old, names, args.process_output)
    if args.command == "one":
        print(json.dumps(run_case(args.case, args.label, args.threads, args.repeats)))
        return 0
    from bench_segment import ensure_synthetic_ct, machine

    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads),
               OMP_WAIT_POLICY="PASSIVE")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    report = {"machine": machine(), "threads": args.threads, "repeats": args.repeats, "label": args.label,
              "commit": commit, "cases": []}
    for name in args.cases.split(","):
        if "ct_512" in name:
            ensure_synthetic_ct(CASES[name][1])
        if name == "ll35_whole_leg":
            ensure_whole_leg()
        cmd = [sys.executable, __file__, "one", "--case", name, "--label", args.label, "--threads", str(args.threads),
               "--repeats", str(args.repeats)]
        print(f"{name} ...", flush=True)
        out = subprocess.run(cmd, check=True, env=env, capture_output=True, text=True)
        result = json.loads(out.stdout.strip().splitlines()[-1])
        report["cases"].append(result)
        print(f"  {json.dumps({k: round(v, 2) for k, v in median_stages(result).items()})}", flush=True)
    report["load_average_at_end"] = list(os.getloadavg())
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"bench_whole_volume_{args.label}.json").write_text(json.dumps(report, indent=1, default=str))
    summary(args.label)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
