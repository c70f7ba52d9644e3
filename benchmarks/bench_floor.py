"""Issue 18: how far each stage of the segment job is from this CPU's physical floor.

Usage:
    .venv/bin/python benchmarks/bench_floor.py [--cases calf_test_low,ll35_whole_leg,ll35_ct_512x512x400]

Two floors, both measured on this machine in the same run:

* **Networks** (stage 1 + stage 2): the floating-point operations the job's U-Nets really execute
  (counted with ``torch.utils.flop_counter.FlopCounterMode`` during a real ``segment_image``: every
  sliding window, every jittered box, both legs) over the convolution throughput this CPU reaches
  on a large 3D convolution (GFLOP/s, best of 5), in fp32 and in bf16. Floor seconds = FLOPs /
  throughput; efficiency = floor / measured seconds.
* **Whole-volume stages** (read, leg split, side check, preprocessing, fusion, post-processing,
  merging): no FLOP count fits them, but each must at least touch the input volume once; their
  floor is one pass over the volume (float32 bytes) at this machine's measured memory bandwidth
  (``numpy`` copy of 1 GB). Far above 1x means repeated whole-volume passes or Python-level work.

Each case runs the job (read + ``segment_image``) once to warm up, once timed per stage
(``muscle_pipeline.profiling``), once under the FLOP counter. Results:
``benchmarks/results/bench_floor.{md,json}``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from bench_precision import CASES as PRECISION_CASES  # noqa: E402  (one list of cases and paths)

RESULTS = REPO / "benchmarks" / "results"
CASES = {name: PRECISION_CASES[name][:2] for name in ("calf_test_low", "ll35_whole_leg", "ll35_ct_512x512x400")}
NETWORK_STAGES = ("stage1", "stage2")
VOLUME_STAGES = ("read", "split_legs", "side_check", "preprocess", "n4", "fusion", "postprocess", "mirror_merge")


def conv_throughput(dtype: torch.dtype | None, repeats: int = 5) -> float:
    """GFLOP/s of a large 3x3x3 convolution (batch 6, 32 → 32 channels, 64x64x48), best of ``repeats``."""
    conv = torch.nn.Conv3d(32, 32, 3, padding=1).eval()
    x = torch.randn(6, 32, 64, 64, 48)
    flops = 2 * 32 * 32 * 27 * x[:, 0].numel()
    best = float("inf")
    with torch.inference_mode(), torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        conv(x)
        for _ in range(repeats):
            t = time.perf_counter()
            conv(x)
            best = min(best, time.perf_counter() - t)
    return flops / best / 1e9


def memory_bandwidth_gbs(n_bytes: int = 2**30, repeats: int = 3) -> float:
    """GB/s of a numpy copy (read + write counted once each), best of ``repeats``."""
    src = np.ones(n_bytes // 4, np.float32)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t)
    return 2 * n_bytes / best / 1e9


def run_case(bundle: str, image_path: Path, precision: str) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    from muscle_pipeline.cascade.model import load_cascade
    from muscle_pipeline.io import read_image
    from muscle_pipeline.profiling import StageProfile, stage
    from muscle_pipeline.segmentation import segment_image

    model = load_cascade(bundle, precision=precision)
    segment_image(read_image(image_path), model)  # warm-up (oneDNN kernels per shape)
    with StageProfile() as profile:
        with stage("read"):
            image = read_image(image_path)
        t = time.perf_counter()
        segment_image(image, model)
        job = time.perf_counter() - t + profile.stages["read"]["seconds"]
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        segment_image(image, model)
    return {"seconds": {k: v["seconds"] for k, v in profile.stages.items()}, "job_seconds": job,
            "network_gflop": counter.get_total_flops() / 1e9, "shape": list(image.shape[-3:]),
            "volume_gb": float(np.prod(image.shape[-3:])) * 4 / 1e9}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from bench_segment import machine

    from muscle_pipeline.precision import native_bf16

    info = {**machine(), "threads": args.threads, "native_bf16": native_bf16("cpu")}
    throughput = {"fp32": conv_throughput(None), "bf16": conv_throughput(torch.bfloat16)}
    bandwidth = memory_bandwidth_gbs()
    print(f"conv GFLOP/s: fp32 {throughput['fp32']:.0f}, bf16 {throughput['bf16']:.0f}; memory {bandwidth:.1f} GB/s")
    results = {}
    for name in args.cases.split(","):
        bundle, path = CASES[name]
        if not Path(path).is_file() or (bundle.startswith("/") and not Path(bundle).is_dir()):
            print(f"{name}: input or bundle missing, skipped")
            continue
        for precision in ("fp32", "bf16"):
            r = run_case(bundle, Path(path), precision)
            net_s = sum(r["seconds"].get(s, 0.0) for s in NETWORK_STAGES)
            vol_s = sum(r["seconds"].get(s, 0.0) for s in VOLUME_STAGES)
            floor_net = r["network_gflop"] / throughput[precision]
            floor_vol = r["volume_gb"] / bandwidth
            r.update(bundle=Path(bundle).name, network_seconds=net_s, network_floor_s=floor_net,
                     network_efficiency=floor_net / net_s if net_s else None, volume_stage_seconds=vol_s,
                     volume_pass_floor_s=floor_vol, volume_stage_passes=vol_s / floor_vol if floor_vol else None)
            results[f"{name}/{precision}"] = r
            print(name, precision, {k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()
                                    if k not in ("seconds",)})
    info["load_average_at_end"] = list(os.getloadavg())
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "bench_floor.json").write_text(json.dumps(
        {"machine": info, "conv_gflops": throughput, "memory_gb_s": bandwidth, "cases": results}, indent=1))
    lines = ["# Distance from the physical floor (benchmarks/bench_floor.py)", "", f"* {info}",
             f"* Convolution throughput (3x3x3, 32→32 channels, batch 6 of 64x64x48, best of 5): "
             f"**fp32 {throughput['fp32']:.0f} GFLOP/s, bf16 {throughput['bf16']:.0f} GFLOP/s**; "
             f"memory bandwidth (numpy copy of 1 GB): **{bandwidth:.1f} GB/s**", "",
             "| case | precision | job s | networks: GFLOP | networks s | floor s | efficiency | "
             "whole-volume stages s | one pass over the volume s | passes |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for key, r in results.items():
        lines.append(f"| {key.split('/')[0]} ({r['bundle']}, {'x'.join(map(str, r['shape']))}) | {key.split('/')[1]} | "
                     f"{r['job_seconds']:.1f} | {r['network_gflop']:.0f} | {r['network_seconds']:.2f} | "
                     f"{r['network_floor_s']:.2f} | {100 * (r['network_efficiency'] or 0):.0f} % | "
                     f"{r['volume_stage_seconds']:.2f} | {r['volume_pass_floor_s']:.3f} | {r['volume_stage_passes']:.0f}x |")
    lines += ["", "Per-stage seconds of each run are in the JSON (`seconds`)."]
    (RESULTS / "bench_floor.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
