"""Training lower_limb_35 from the atlas: samples drawn in the training process vs in DataLoader
workers (``--num_workers``), side by side in one run.

Each stage-1 iteration draws a batch (crop a label scene, synthesise an MR/CT image from it,
augment: numpy/scipy on the CPU) and then runs the network forward and backward. Drawn in the
training process, the two add up; drawn by workers, the next batches are made while the network
trains. On a GPU the network step is milliseconds and the draws are everything, so there the
workers are the speed-up; this measures what they give on this CPU, where both compete for the
same cores.

    .venv/bin/python benchmarks/bench_training_workers.py [--iterations 40] [--workers 0 1 2]

Writes ``benchmarks/results/bench_training_workers.{json,md}``. Each setting trains a fresh
stage 1 (train.json + train_atlas.json, batch 2, 64³ at 6 mm) for ``--iterations`` after 3 warm-up
iterations; seconds per iteration = wall time / iterations.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_segment import DATA, RESULTS, machine  # noqa: E402

CONFIGS = REPO / "bundles" / "lower_limb_35" / "configs"


def trainer_for(num_workers: int, iterations: int, output_dir: str, cache_dir: str):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "train.json"), str(CONFIGS / "train_atlas.json")])
    parser.read_meta(str(CONFIGS / "metadata.json"))
    parser.update({"data_root": str(DATA), "output_dir": output_dir, "atlas_cache": cache_dir,
                   "num_workers": num_workers, "trainer#stage1_iterations": iterations,
                   "trainer#probe_samples": 0})
    return parser.get_parsed_content("trainer")


def seconds_per_iteration(num_workers: int, iterations: int, work: Path) -> dict:
    warm = trainer_for(num_workers, 3, str(work / f"warm{num_workers}"), str(work / "cache"))
    warm.run(stage=1)  # the atlas cache, imports and the workers' first fork, outside the timing
    trainer = trainer_for(num_workers, iterations, str(work / f"w{num_workers}"), str(work / "cache"))
    t0 = time.perf_counter()
    trainer.run(stage=1)
    wall = time.perf_counter() - t0
    losses = trainer.losses["stage 1"]
    return {"num_workers": num_workers, "iterations": iterations, "wall_s": round(wall, 2),
            "s_per_iteration": round(wall / iterations, 3), "first_loss": losses[0], "last_loss": losses[-1]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--iterations", type=int, default=40)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    info = machine()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_training_workers_") as tmp:
        for w in args.workers:
            rows.append(seconds_per_iteration(w, args.iterations, Path(tmp)))
            print(rows[-1], flush=True)
    info["load_average_at_end"] = list(os.getloadavg())
    base = rows[0]["s_per_iteration"]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "bench_training_workers.json").write_text(json.dumps({"machine": info, "rows": rows}, indent=2))
    lines = ["# lower_limb_35 stage 1 from the atlas: samples drawn in the training process vs in workers "
             "(benchmarks/bench_training_workers.py)", "",
             f"* {info}", "* one torch thread in the training process; each worker one thread too", "",
             "| num_workers | s per iteration | vs in-process | iterations | loss first → last |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['num_workers']} | {r['s_per_iteration']:.3f} | {base / r['s_per_iteration']:.2f}× | "
                     f"{r['iterations']} | {r['first_loss']:.3f} → {r['last_loss']:.3f} |")
    (RESULTS / "bench_training_workers.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
