"""``muscle-pipeline segment INPUT... -o OUT --model NAME``: the main job (files or folders)."""
from __future__ import annotations

import argparse


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "segment",
        help="segment every scan found in the inputs; one output folder per case",
        description="Segment every DICOM series / NIfTI / NRRD / MHA found (recursively) in the inputs. "
        "Writes <OUT>/<case_id>/{segmentation.nii.gz, labels.json, volumes.csv, qc.png, report.json"
        "[, segmentation.dcm]}, batch_report.csv/json and cohort_volumes.csv. Finished cases are skipped "
        "on a re-run; a failing case is reported and the batch goes on.",
    )
    p.add_argument("inputs", nargs="+", help="scan files or folders")
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.add_argument("--model", default="auto",
                   help="auto (default: per case, the shipped model that covers the recognised modality and "
                        "region) | calf_mri | hip_ct | thigh_ct_25d | lower_limb_35 | a path to a bundle "
                        "(./my_bundle; a bundle's configs are code: use bundles you trust)")
    p.add_argument("--force", action="store_true",
                   help="segment cases the model does not fit (wrong modality or region, no lower limb, no "
                        "orientation in the header) instead of rejecting them; the reason stays a warning")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default cpu)")
    p.add_argument("--overwrite", action="store_true", help="redo cases that are already complete")
    p.add_argument("--shard", default=None, metavar="i/n", help="process only shard i of n (1-based), e.g. "
                   "--shard $((SLURM_ARRAY_TASK_ID+1))/$SLURM_ARRAY_TASK_COUNT")
    p.add_argument("--side", choices=["left", "right"], default=None,
                   help="side of the leg when a scan holds a single leg (default: from the header)")
    p.add_argument("--no-dicom-seg", action="store_true", help="do not write DICOM-SEG for DICOM inputs")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--memory-budget-mb", type=float, default=None, metavar="MB",
                   help="working memory of one fusion block in MB (cascade models; default: the bundle's "
                        "memory_budget_mb, 512). Lower it for huge scans on small machines")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default=None,
                   help="the networks' precision (cascade models; default: the bundle's, auto = bf16 where the "
                        "CPU/GPU computes it natively, e.g. AMX/AVX512-BF16 CPUs, else fp32; fp16: CUDA only)")
    return p


def run(args) -> int:
    from muscle_pipeline import startup
    from muscle_pipeline.api import batch_exit_code, segment

    # no garbage collection while torch and MONAI are imported: on again, with what they left
    # frozen, before the first scan is read (only when this command is the whole process; see
    # muscle_pipeline.startup, which also keeps three optional imports of MONAI's out)
    startup.begin()
    try:
        results = segment(args.inputs, args.output, model=args.model, device=args.device, overwrite=args.overwrite,
                          shard=args.shard, side=args.side, dicom_seg=not args.no_dicom_seg, progress=not args.quiet,
                          memory_budget_mb=args.memory_budget_mb, force=args.force,
                          precision=args.precision)
    finally:
        startup.resume()
    counts: dict[str, int] = {}
    for r in results:  # FAILED/REJECTED/WARNING lines were printed by the batch, once, as they came
        counts[r.status] = counts.get(r.status, 0) + 1
    print("cases: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) + f"  -> {args.output}")
    return batch_exit_code(results)
