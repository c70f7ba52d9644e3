"""Issue 18: bf16 inference on CPU: speed and agreement with fp32, side by side in one run.

Usage:
    .venv/bin/python benchmarks/bench_precision.py [--repeats 2] [--cases calf_twolegs,calf_test_low,pelvis_ct,...]

For each case, the same bundle is loaded twice in one process, ``precision="fp32"`` and
``precision="bf16"`` (``muscle_pipeline.precision``: autocast of the networks' forward pass; the
weights stay fp32), and read + ``segment_image`` runs ``repeats`` times each, alternating, so both
see the same machine load. Reported: median seconds of the whole job and of stage 1 + stage 2 (the
networks), the Dice of the bf16 label map against the fp32 one per structure (mean and worst), and
where the case has reference labels, the Dice of each precision against them.

A micro-benchmark first times one stage-2 network (batch of 6 crops, as box TTA runs it) in fp32,
bf16, channels-last fp32 and channels-last bf16: the issue asked for "an fp16/bf16 or
channels-last path where it measurably helps on CPU".

bf16 is fast only where the CPU computes it natively (AMX / AVX512-BF16; this machine: see the
``native_bf16`` field); elsewhere ``precision="auto"`` (the bundles' default) stays fp32.
Results: ``benchmarks/results/bench_precision.{md,json}``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
DATA = Path(os.environ.get("MUSCLE_PIPELINE_SHARED_DATA", REPO.parent / "shared" / "data"))
RESULTS = REPO / "benchmarks" / "results"
LL35 = REPO / "runs" / "ll35_bundle"  # lower_limb_35 with the atlas weights of runs/ll35_v01 (not shipped)
WORK = REPO / "benchmarks" / "work"
CALF = DATA / "qmritools" / "calf_dti_labeled_half"
# case → (bundle, image, reference labels or None, reference map)
CASES = {
    "calf_twolegs": ("calf_mri", CALF / "twoLegs_x80-160.nii.gz", CALF / "labels_x80-160.nii.gz", "qmritools_calf"),
    "calf_test_low": ("calf_mri", DATA / "qmritools" / "thigh_calf_unlabeled" / "test_low.nii.gz", None, None),
    "pelvis_ct": ("hip_ct", DATA / "totalsegmentator" / "ct_abdomen_pelvis" / "example_ct.nii.gz",
                  DATA / "totalsegmentator" / "ct_abdomen_pelvis" / "example_seg_fast_force_split.nii.gz",
                  "totalsegmentator_total"),
    "ll35_test_up": (str(LL35), DATA / "qmritools" / "thigh_calf_unlabeled" / "test_up.nii.gz", None, None),
    "ll35_whole_leg": (str(LL35), WORK / "whole_leg_joined.nii.gz", None, None),
    "ll35_ct_512x512x400": (str(LL35), WORK / "synthetic_ct_512x512x400.nii.gz", None, None),
}
DEFAULT_CASES = ["calf_twolegs", "calf_test_low", "pelvis_ct", "ll35_test_up", "ll35_whole_leg", "ll35_ct_512x512x400"]


def network_micro(repeats: int = 5) -> dict:
    """Seconds of one stage-2 U-Net forward pass (6 crops of 80x44x60, the gluteus maximus patch)."""
    from muscle_pipeline.networks import unet3d

    net = unet3d(out_channels=2, channels=[16, 32, 64], strides=[2, 2], num_res_units=1).eval()
    x = torch.randn(6, 1, 80, 44, 60)
    out = {}

    def timed(fn):
        fn()
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return statistics.median(times)

    with torch.inference_mode():
        reference = net(x).argmax(1)
        out["fp32"] = timed(lambda: net(x))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out["bf16"] = timed(lambda: net(x))
            agree = float((net(x).float().argmax(1) == reference).float().mean())
        cl_net = net.to(memory_format=torch.channels_last_3d)
        cl_x = x.to(memory_format=torch.channels_last_3d)
        out["channels_last_fp32"] = timed(lambda: cl_net(cl_x))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out["channels_last_bf16"] = timed(lambda: cl_net(cl_x))
    return {"seconds": out, "bf16_argmax_agreement_random_input": agree}


def reference_dice(labels: np.ndarray, image, reference: Path, reference_map: str, scope) -> float:
    """Mean Dice of ``labels`` against the reference through the evaluation module (its mapping,
    iliacus + psoas as iliopsoas, only the structures the reference labels)."""
    from muscle_pipeline.evaluation import evaluate_case
    from muscle_pipeline.io import write_label_map

    with tempfile.TemporaryDirectory() as tmp:
        pred = write_label_map(labels, image, Path(tmp) / "pred.nii.gz")
        rows = evaluate_case(pred, reference, reference_map=reference_map, scope=scope, distances=False)
    dice = [r["dice"] for r in rows if r.get("dice") is not None]
    return float(np.mean(dice)) if dice else float("nan")


def run_case(name: str, repeats: int) -> dict:
    from muscle_pipeline.cascade.model import load_cascade
    from muscle_pipeline.io import read_image
    from muscle_pipeline.labels import structure_values
    from muscle_pipeline.profiling import StageProfile
    from muscle_pipeline.segmentation import segment_image

    bundle, image_path, reference, reference_map = CASES[name]
    models = {p: load_cascade(bundle, precision=p) for p in ("fp32", "bf16")}
    seconds = {p: [] for p in models}
    network_seconds = {p: [] for p in models}
    labels = {}
    image = read_image(image_path)
    for model in models.values():  # warm-up: oneDNN builds its kernels for each new shape once
        segment_image(image, model)
    for _ in range(repeats):
        for precision, model in models.items():  # alternating: both see the same load
            t = time.perf_counter()
            image = read_image(image_path)
            with StageProfile() as profile:
                result = segment_image(image, model)
            seconds[precision].append(time.perf_counter() - t)
            network_seconds[precision].append(sum(profile.stages.get(s, {}).get("seconds", 0.0)
                                                  for s in ("stage1", "stage2")))
            labels[precision] = result.labels.numpy()
    from bench_whole_volume import dice_per_structure

    dice = dice_per_structure(labels["fp32"], labels["bf16"])
    out = {
        "bundle": Path(bundle).name, "image": str(image_path), "shape": list(labels["fp32"].shape),
        "seconds_fp32": statistics.median(seconds["fp32"]), "seconds_bf16": statistics.median(seconds["bf16"]),
        "network_seconds_fp32": statistics.median(network_seconds["fp32"]),
        "network_seconds_bf16": statistics.median(network_seconds["bf16"]),
        "agreement_mean_dice": float(np.mean(list(dice.values()))) if dice else 1.0,
        "agreement_worst_dice": float(min(dice.values())) if dice else 1.0,
        "identical_voxels": float((labels["fp32"] == labels["bf16"]).mean()),
    }
    if reference is not None:
        scope = structure_values(models["fp32"].structures)
        out["reference_dice_fp32"] = reference_dice(labels["fp32"], image, reference, reference_map, scope)
        out["reference_dice_bf16"] = reference_dice(labels["bf16"], image, reference, reference_map, scope)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cases", default=",".join(DEFAULT_CASES))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from bench_segment import machine

    from muscle_pipeline.precision import native_bf16

    info = {**machine(), "native_bf16": native_bf16("cpu"), "threads": args.threads, "repeats": args.repeats}
    micro = network_micro()
    print("stage-2 network, 6 crops of 80x44x60:", {k: round(v, 3) for k, v in micro["seconds"].items()})
    cases = {}
    for name in args.cases.split(","):
        if not Path(CASES[name][1]).is_file() or (CASES[name][0].startswith("/") and not Path(CASES[name][0]).is_dir()):
            print(f"{name}: input or bundle missing, skipped")
            continue
        cases[name] = run_case(name, args.repeats)
        print(name, {k: (round(v, 4) if isinstance(v, float) else v) for k, v in cases[name].items() if k != "image"})
    info["load_average_at_end"] = list(os.getloadavg())
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "bench_precision.json").write_text(json.dumps({"machine": info, "network": micro, "cases": cases},
                                                             indent=1))
    lines = ["# bf16 vs fp32 inference on CPU (benchmarks/bench_precision.py)", "",
             f"* {info}", "",
             "## One stage-2 network, 6 crops of 80x44x60 (median of 5)", "",
             "| fp32 s | bf16 s | channels-last fp32 s | channels-last bf16 s |", "|---|---|---|---|",
             "| " + " | ".join(f"{micro['seconds'][k]:.3f}" for k in ("fp32", "bf16", "channels_last_fp32",
                                                                      "channels_last_bf16")) + " |", "",
             "## Segment job (read + segment_image), both precisions in one process, alternating", "",
             "| case | bundle | shape | job fp32 s | job bf16 s | networks fp32 s | networks bf16 s | "
             "bf16 vs fp32 Dice mean / worst | identical voxels | reference Dice fp32 / bf16 |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, c in cases.items():
        ref = (f"{c['reference_dice_fp32']:.3f} / {c['reference_dice_bf16']:.3f}" if "reference_dice_fp32" in c else "-")
        lines.append(f"| {name} | {c['bundle']} | {'x'.join(map(str, c['shape']))} | {c['seconds_fp32']:.2f} | "
                     f"{c['seconds_bf16']:.2f} | {c['network_seconds_fp32']:.2f} | {c['network_seconds_bf16']:.2f} | "
                     f"{c['agreement_mean_dice']:.4f} / {c['agreement_worst_dice']:.4f} | {c['identical_voxels']:.5f} | {ref} |")
    (RESULTS / "bench_precision.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
