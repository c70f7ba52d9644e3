"""Issue 18: what a ``muscle-pipeline`` process costs before it segments anything.

Usage:
    .venv/bin/python benchmarks/bench_startup.py [--repeats 5] [--threads 2] [--with NAME=DIR ...]

Every row is a fresh Python process timed from outside (wall seconds, median of ``repeats``):

* ``import torch``, and ``import torch, monai`` (MONAI's ``__init__`` imports all its submodules
  and, through their optional imports, scipy.signal, skimage, matplotlib and pandas where installed);
* ``muscle-pipeline labels`` and ``segment`` on a missing input (the commands that load neither);
* **segment's start**: everything ``muscle-pipeline segment --model calf_mri`` does before its first
  case: the imports and loading the model (``ModelPicker.load_named``), with the garbage collector
  off until then and three optional imports kept from MONAI (:mod:`muscle_pipeline.startup`), and
  the same without those.

``--with NAME=DIR`` (repeatable): the same rows again with ``DIR`` first on ``PYTHONPATH``, the
runs alternating with the environment's own under the same load. That is how an alternative
version of a dependency is compared, e.g. ``pip install --no-deps --target /tmp/scipy116
scipy==1.16.3`` then ``--with scipy-1.16.3=/tmp/scipy116`` (scipy 1.17's scipy.signal imports
~0.5 s slower than 1.16's; segment's start hides it, see :mod:`muscle_pipeline.startup`). The modules that cost most in segment's
start (``python -X importtime``) are listed too.

Results: ``benchmarks/results/bench_startup.md`` and ``.json``, with the machine's details.
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
RESULTS = REPO / "benchmarks" / "results"

ROWS = {
    "import torch": ["-c", "import torch"],
    "import torch, monai": ["-c", "import torch, monai"],
    "muscle-pipeline labels": ["-m", "muscle_pipeline", "labels"],
    "segment, missing input (error)": ["-m", "muscle_pipeline", "segment", "/nonexistent/scan.nii.gz", "-o",
                                       "/tmp/never_written"],
    "segment's start (imports + calf_mri loaded)": [
        "-c", "from muscle_pipeline import startup; startup.own_process(); startup.begin(); startup.import_monai(); "
              "from muscle_pipeline.api import ModelPicker; ModelPicker('calf_mri').load_named(); startup.ready()"],
    "the same without muscle_pipeline.startup (collector on, nothing hidden)": [
        "-c", "from muscle_pipeline.api import ModelPicker; ModelPicker('calf_mri').load_named()"],
}
VERSIONS = ("import scipy, matplotlib, skimage, monai, torch, sys; "
            "print(' '.join(f'{m.__name__} {m.__version__}' for m in (torch, monai, scipy, skimage, matplotlib)), "
            "'pandas' if 'pandas' in sys.modules else 'no pandas')")


def environment(extra: str | None, threads: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    env.pop("PYTHONPATH", None)
    if extra:
        env["PYTHONPATH"] = extra
    return env


# the exit status each row must end with (the argument error's is 1): a row that crashed early
# would otherwise look fast
EXPECTED_STATUS = {"segment, missing input (error)": 1}


def wall(args: list[str], env: dict, expected_status: int = 0) -> float:
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, cwd=REPO)
    seconds = time.perf_counter() - t0
    if done.returncode != expected_status:
        raise SystemExit(f"{args}: exit {done.returncode}, expected {expected_status}\n{done.stderr[-2000:]}")
    return seconds


def top_imports(env: dict, n: int = 12) -> list[dict]:
    """The modules with the largest cumulative import time in segment's start (``-X importtime``)."""
    done = subprocess.run([sys.executable, "-X", "importtime", *ROWS["segment's start (imports + calf_mri loaded)"]],
                          env=env, capture_output=True, text=True, cwd=REPO)
    rows = []
    for line in done.stderr.splitlines():
        if line.startswith("import time:") and line.count("|") == 2:
            _, cumulative_us, name = line[len("import time:"):].split("|")
            if cumulative_us.strip().isdigit():
                rows.append({"module": name.strip(), "cumulative_s": int(cumulative_us) / 1e6})
    longest: dict[str, float] = {}  # a module shows once per importer chain: keep its largest figure
    for r in rows:
        longest[r["module"]] = max(longest.get(r["module"], 0.0), r["cumulative_s"])
    return [{"module": m, "cumulative_s": s} for m, s in sorted(longest.items(), key=lambda kv: -kv[1])[:n]]


def main(argv=None) -> int:
    from bench_segment import machine

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--with", dest="alternatives", action="append", default=[], metavar="NAME=DIR",
                        help="the same rows with DIR first on PYTHONPATH (repeatable)")
    parser.add_argument("--output", default="bench_startup")
    args = parser.parse_args(argv)

    envs = {"this environment": environment(None, args.threads)}
    for item in args.alternatives:
        name, _, folder = item.partition("=")
        envs[name] = environment(str(Path(folder).resolve()), args.threads)
    versions = {name: subprocess.run([sys.executable, "-c", VERSIONS], env=env, capture_output=True, text=True,
                                     cwd=REPO).stdout.strip() for name, env in envs.items()}
    for env in envs.values():  # one untimed run each: the page cache and .pyc files warm
        wall(ROWS["segment's start (imports + calf_mri loaded)"], env)

    times: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.repeats):
        for row, row_args in ROWS.items():
            for name, env in envs.items():  # alternating: both environments see the same load
                times.setdefault((row, name), []).append(wall(row_args, env, EXPECTED_STATUS.get(row, 0)))
    imports = top_imports(envs["this environment"])

    info = machine()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    results = [{"row": row, "environment": name, "median_s": round(statistics.median(ts), 3),
                "runs_s": [round(t, 3) for t in ts]} for (row, name), ts in times.items()]
    payload = {"machine": info, "threads": args.threads, "repeats": args.repeats, "commit": commit,
               "versions": versions, "results": results, "top_imports_of_segment_start": imports,
               "load_average_at_end": list(os.getloadavg())}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.output}.json").write_text(json.dumps(payload, indent=2) + "\n")

    names = list(envs)
    lines = ["# Start-up: fresh processes, wall seconds (benchmarks/bench_startup.py)", "",
             f"* {info}; {args.threads} threads; {args.repeats} runs per row and environment, alternating; "
             f"commit {commit}; load average at end {payload['load_average_at_end']}"]
    lines += [f"* {name}: {versions[name]}" for name in names]
    lines += ["", "| what | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for row in ROWS:
        lines.append(f"| {row} | " + " | ".join(f"**{statistics.median(times[(row, n)]):.2f}**" for n in names) + " |")
    lines += ["", "Modules that cost most in segment's start (`-X importtime`, cumulative, this environment):", "",
              "| module | s |", "|---|---|"]
    lines += [f"| {r['module']} | {r['cumulative_s']:.2f} |" for r in imports]
    text = "\n".join(lines) + "\n"
    (RESULTS / f"{args.output}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
