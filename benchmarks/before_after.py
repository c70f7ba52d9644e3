"""The segment job at an earlier revision and now, side by side in one run (same machine, same load).

Usage:
    .venv/bin/python benchmarks/before_after.py --before b3c9854 [--repeats 3] [--threads 2]

The earlier revision is checked out as a git worktree under ``benchmarks/work`` and imported
through PYTHONPATH (ahead of the editable install), with the same ``.venv``. For each real calf
scan and each revision, a fresh process imports the package, loads ``calf_mri`` and runs the
job's per-case work (read → segment → write the output folder) ``repeats`` times: run 1 is
the cold case, the median of the others the warm one; ``report.json``'s own stage timings and the
process's peak RSS come along. Results: ``benchmarks/results/before_after.{md,json}``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "benchmarks" / "work"
RESULTS = REPO / "benchmarks" / "results"
sys.path.insert(0, str(REPO / "benchmarks"))
from bench_segment import CASES, machine  # noqa: E402

RUN_CASE = r"""
import json, resource, sys, tempfile, time
from pathlib import Path
t0 = time.perf_counter()
import torch
from muscle_pipeline import api
from muscle_pipeline.io import discover, read_image
source, repeats, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(threads)
import_s = time.perf_counter() - t0
model = api.load_model("calf_mri")
case = discover([source])[0]
runs = []
for _ in range(repeats):
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        image = read_image(case)
        read_s = time.perf_counter() - start
        report = api.segment_case_to_folder(case, image, Path(out), lambda s: None, model, "calf_mri")
        runs.append({"total_s": time.perf_counter() - start, "read_s": read_s, "timings": report["timings_s"]})
print(json.dumps({"module": api.__file__, "import_s": import_s, "runs": runs,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def worktree(revision: str) -> Path:
    path = WORK / f"rev_{revision}"
    if not path.exists():
        WORK.mkdir(parents=True, exist_ok=True)
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(path), revision], check=True,
                       capture_output=True)
    return path


def run_revision(tree: Path, source: Path, repeats: int, threads: int) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree), OMP_NUM_THREADS=str(threads), OMP_WAIT_POLICY="PASSIVE")
    out = subprocess.run([sys.executable, "-c", RUN_CASE, str(source), str(repeats), str(threads)], check=True,
                         env=env, cwd=str(tree), capture_output=True, text=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert Path(result["module"]).resolve().is_relative_to(tree.resolve()), result["module"]  # the right code ran
    later = result["runs"][1:] or result["runs"]
    result["cold_s"] = result["runs"][0]["total_s"]
    result["warm_s"] = statistics.median(r["total_s"] for r in later)
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="git revision to compare with the working tree")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cases", default="test_low,calf_dixon3d")
    args = parser.parse_args(argv)
    before = worktree(args.before)
    rows = []
    for name in args.cases.split(","):
        source = CASES[name][1]
        for label, tree in ((f"before ({args.before})", before), ("now", REPO)):
            print(f"{name}: {label} ...", flush=True)
            result = run_revision(tree, source, args.repeats, args.threads)
            rows.append({"case": name, "revision": label, **result})
            print(f"  cold {result['cold_s']:.2f} s, warm {result['warm_s']:.2f} s, peak {result['peak_rss_mb']:.0f} MB",
                  flush=True)
    info = machine()
    lines = ["# Segment job before and after the speed work (benchmarks/before_after.py)", "",
             f"Machine: {info['cpu']}, {info['logical_cpus']} logical CPUs; {args.threads} threads; load average at "
             f"start {info['load_average_at_start'][0]:.2f}, at end {os.getloadavg()[0]:.2f}. Same .venv, same run; "
             "each row a fresh process (import + model load not included in the seconds).", "",
             "| case | revision | cold s | warm s | read s (warm) | split+side check s (warm) | model s (warm) | write s (warm) | peak RSS MB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        later = r["runs"][1:] or r["runs"]

        def med(f):
            return statistics.median(f(x) for x in later)

        model_s = med(lambda x: sum(v for k, v in x["timings"].items() if k.startswith("model_")))
        lines.append(f"| {r['case']} | {r['revision']} | {r['cold_s']:.2f} | {r['warm_s']:.2f} | {med(lambda x: x['read_s']):.2f} "
                     f"| {med(lambda x: x['timings'].get('split_legs', 0) + x['timings'].get('side_check', 0)):.2f} "
                     f"| {model_s:.2f} | {med(lambda x: x['timings'].get('write', 0)):.2f} | {r['peak_rss_mb']:.0f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "before_after.json").write_text(json.dumps({"machine": info, "before": args.before, "rows": rows}, indent=1))
    (RESULTS / "before_after.md").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
