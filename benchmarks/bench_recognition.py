"""Issue 18: scan recognition (``recognize_scan``) on its voting slices vs. on the whole volume.

Usage:
    .venv/bin/python benchmarks/bench_recognition.py [--repeats 3] [--threads 2] [--cases ct_512x512x400,...]
                                                     [--baseline DIR]

Per case, in one process: the scan is read once, then ``recognize_scan`` runs ``repeats`` times
on the voting slices (the default) and ``repeats`` times with ``full_resolution=True`` (the body
mask and leg split of the whole volume, as before issue 18); the median seconds of each are
reported, and whether the two results are identical (modality, region, regions, ``per_slice``
slice by slice, legs). The script exits with 1 if any case differs.

``--baseline DIR``: also time a copy of an older revision's package (e.g.
``git archive <rev> muscle_pipeline | tar -x -C DIR``) in a subprocess with ``PYTHONPATH=DIR``
just before each case's own runs, and check that the new results equal that code's too.

Cases: the synthetic 512x512x400 CT hip phantom (``bench_segment.py`` writes it once), the seven
whole-leg stations joined (``bench_whole_volume.py`` writes it once), and every real scan of
``shared/data`` that the recognition tests use. Results: ``benchmarks/results/bench_recognition.md``
and ``.json``, with the machine's details.
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
WORK = REPO / "benchmarks" / "work"
RESULTS = REPO / "benchmarks" / "results"
STATIONS = DATA / "qmritools" / "wholeleg_stations_unlabeled"
CASES = {
    "ct_512x512x400": WORK / "synthetic_ct_512x512x400.nii.gz",
    "whole_leg_joined": WORK / "whole_leg_joined.nii.gz",
    "pelvis_ct": DATA / "totalsegmentator" / "ct_abdomen_pelvis" / "example_ct.nii.gz",
    "abdomen_ct_dicom": DATA / "totalsegmentator" / "ct_dicom_upper_abdomen" / "example_ct_dicom",
    "abdomen_mr": DATA / "totalsegmentator" / "mr_upper_abdomen" / "example_mr_sm.nii.gz",
    "lumbar_mr": DATA / "musclemap" / "lumbar_mr_labeled" / "image.nii.gz",
    "thighs_test_up": DATA / "qmritools" / "thigh_calf_unlabeled" / "test_up.nii.gz",
    "calves_test_low": DATA / "qmritools" / "thigh_calf_unlabeled" / "test_low.nii.gz",
    "dixon_fat": DATA / "qmritools" / "thigh_calf_unlabeled" / "dixon_fat.nii.gz",
    "dixon_water": DATA / "qmritools" / "thigh_calf_unlabeled" / "dixon_water.nii.gz",
    "calf_dti_one_leg": DATA / "qmritools" / "calf_dti_labeled_half" / "twoLegs_x80-160.nii.gz",
    "calf_dixon3d": DATA / "swastling_musclemap" / "calf_dixon3d_unlabeled" / "0026-dix3d_TR23_448m_fa05_345.nii.gz",
    "thigh_dixon": DATA / "swastling_musclemap" / "thigh_dixon_unlabeled" / "0006-Dixon_TE_345_th.nii.gz",
    **{f"station_join_{i}": STATIONS / f"Join_{i}.nii.gz" for i in range(1, 8)},
}


def _read(name: str):
    from muscle_pipeline.io import discover, read_image

    (case,) = discover([CASES[name]])
    return read_image(case), case.modality


def _timed(fn, repeats: int) -> tuple[list[float], object]:
    seconds, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        seconds.append(time.perf_counter() - start)
    return seconds, result


def time_baseline(names: list[str], repeats: int) -> dict:
    """Seconds and result per case of whatever ``muscle_pipeline`` is importable (run by
    :func:`main` in a subprocess with ``PYTHONPATH`` set to an older revision's copy)."""
    import muscle_pipeline
    from muscle_pipeline.recognition import recognize_scan

    out = {"package": str(Path(muscle_pipeline.__file__).parent), "cases": {}}
    for name in names:
        image, modality = _read(name)
        seconds, result = _timed(lambda: recognize_scan(image, dicom_modality=modality), repeats)
        out["cases"][name] = {"seconds": seconds, "result": result.as_dict()}
    return out


def run(name: str, repeats: int) -> dict:
    """Both paths of this checkout's ``recognize_scan`` on one case, in this process."""
    import numpy as np

    from muscle_pipeline.recognition import MAX_SLICES, recognize_scan
    from muscle_pipeline.transforms.legs import leg_axes, voxel_spacing
    from muscle_pipeline.transforms.region import voting_slices

    image, modality = _read(name)
    affine = np.asarray(image.affine, dtype=float)
    n_slices = image.shape[-3 + leg_axes(affine).si]
    fast_s, fast = _timed(lambda: recognize_scan(image, dicom_modality=modality), repeats)
    full_s, full = _timed(lambda: recognize_scan(image, dicom_modality=modality, full_resolution=True), repeats)
    differs = [k for k, v in full.as_dict().items() if fast.as_dict()[k] != v]
    print(f"{name}: full {statistics.median(full_s):.2f} s, voting slices {statistics.median(fast_s):.2f} s, "
          f"{'identical' if not differs else 'DIFFERENT: ' + ', '.join(differs)} ({fast.summary()})", flush=True)
    return {"case": name, "shape": list(image.shape[-3:]), "spacing_mm": np.round(voxel_spacing(affine), 3).tolist(),
            "slices": int(n_slices), "voting_slices": int(voting_slices(n_slices, MAX_SLICES).size),
            "full_resolution_s": full_s, "voting_slices_s": fast_s, "identical": not differs, "differs": differs,
            "summary": fast.summary(), "result": fast.as_dict()}


def write(report: dict) -> None:
    m = report["machine"]
    baseline = report.get("baseline")
    lines = ["# Issue 18: scan recognition on the voting slices (benchmarks/bench_recognition.py)", "",
             f"* {m['cpu']}, {m['logical_cpus']} logical CPUs, {m['memory_gb']} GB; Python {m['python']}, "
             f"torch {m['torch']}, MONAI {m['monai']}; {report['threads']} threads; HEAD {report['commit']}; "
             f"load average at start {m['load_average_at_start'][0]:.2f}, at end {report['load_average_at_end'][0]:.2f}",
             f"* `recognize_scan` per case, median of {report['repeats']} runs in one process (reading the scan not "
             "included). **full resolution**: `full_resolution=True`, the body mask and the leg split of the whole "
             "volume; **voting slices**: the default, both found on the (at most 64) slices that vote. Other "
             "engineers share the CPU: compare within a row.",
             ]
    if baseline:
        lines.append(f"* **before**: the package in `{baseline['package']}` (an older revision) in a subprocess, "
                     "case by case just before the new code's runs, same repeats; its results compared with the "
                     "new ones too")
    lines += ["", "| case | shape | slices (voting) | " + ("before s | " if baseline else "")
              + "full resolution s | voting slices s | speed-up vs full | " + ("vs before | " if baseline else "")
              + "identical | recognition |",
              "|---|---|---|" + ("---|" if baseline else "") + "---|---|---|" + ("---|" if baseline else "") + "---|---|"]
    for row in report["cases"]:
        full, fast = statistics.median(row["full_resolution_s"]), statistics.median(row["voting_slices_s"])
        before = vs_before = ""
        if baseline:
            b = statistics.median(baseline["cases"][row["case"]]["seconds"])
            before, vs_before = f"{b:.2f} | ", f"{b / fast:.1f}x | "
        same = "yes" if row["identical"] else "**no**: " + ", ".join(row["differs"])
        if baseline:
            same += ", also to before" if row.get("identical_to_before") else " (**differs from before**)"
        lines.append(f"| {row['case']} | {'x'.join(map(str, row['shape']))} | {row['slices']} ({row['voting_slices']}) | "
                     f"{before}{full:.2f} | {fast:.2f} | {full / fast:.1f}x | {vs_before}{same} | {row['summary']} |")
    text = "\n".join(lines) + "\n"
    (RESULTS / "bench_recognition.md").write_text(text)
    (RESULTS / "bench_recognition.json").write_text(json.dumps(report, indent=1))
    print(text)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cases", default=",".join(CASES), help=f"of {', '.join(CASES)}")
    parser.add_argument("--baseline", type=Path, help="folder holding an older revision's muscle_pipeline package")
    parser.add_argument("--baseline-only", action="store_true", help=argparse.SUPPRESS)  # the subprocess
    args = parser.parse_args(argv)
    names = args.cases.split(",")
    import torch

    torch.set_num_threads(args.threads)
    if args.baseline_only:
        print(json.dumps(time_baseline(names, args.repeats)))
        return 0

    from bench_segment import ensure_synthetic_ct, machine
    from bench_whole_volume import ensure_whole_leg

    if "ct_512x512x400" in names:
        ensure_synthetic_ct(CASES["ct_512x512x400"])
    if "whole_leg_joined" in names:
        ensure_whole_leg(CASES["whole_leg_joined"])
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    report = {"machine": machine(), "threads": args.threads, "repeats": args.repeats, "commit": commit, "cases": []}
    for name in names:
        if args.baseline:
            # case by case, just before the new code's runs: both under the same load from others
            env = dict(os.environ, PYTHONPATH=str(args.baseline.resolve()))
            cmd = [sys.executable, __file__, "--baseline-only", "--cases", name, "--repeats", str(args.repeats),
                   "--threads", str(args.threads)]
            out = subprocess.run(cmd, check=True, env=env, capture_output=True, text=True, cwd="/")
            before = json.loads(out.stdout.strip().splitlines()[-1])
            report.setdefault("baseline", {"package": before["package"], "cases": {}})["cases"].update(before["cases"])
        report["cases"].append(run(name, args.repeats))
        if args.baseline:
            report["cases"][-1]["identical_to_before"] = before["cases"][name]["result"] == report["cases"][-1]["result"]
    rows = report["cases"]
    report["load_average_at_end"] = list(os.getloadavg())
    write(report)
    ok = all(r["identical"] and r.get("identical_to_before", True) for r in rows)
    print("all results identical" if ok else "SOME RESULTS DIFFER")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
