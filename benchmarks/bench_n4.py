"""N4 bias correction time: our fast settings vs SimpleITK's defaults, on the real thigh MRI.

Usage: .venv/bin/python benchmarks/bench_n4.py [--repeats 3] [--threads 2]

1. Fast settings (what N4BiasFieldCorrection uses): fitted on the image shrunk x4 in-plane
   (1.5 mm -> 6 mm; the 6 mm slices are kept), Otsu body mask, 3 levels x 50 iterations, log
   field evaluated on the full 320x320x31 grid. Timed on the whole volume.
2. SimpleITK's defaults (no shrink, no mask, 4 levels x 50 iterations) at full resolution
   take ~20 min on a whole volume, so they are timed on a 64x64x16 crop inside one thigh,
   next to the fast settings on the same crop; the full-volume default time is a linear
   extrapolation by voxel count (labelled as such).
Quality: the spread of per-30-mm-block muscle medians (``low_frequency_nonuniformity``)
before/after on the whole volume, and on the crop the correlation of the two fitted log
fields. Results are printed and written to benchmarks/results/bench_n4.{md,json}.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from muscle_pipeline.transforms.bias import low_frequency_nonuniformity, n4_log_bias_field, to_sitk_image

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("MUSCLE_PIPELINE_SHARED_DATA", REPO.parent / "shared" / "data"))
VOLUME = DATA / "qmritools" / "thigh_calf_unlabeled" / "test_up.nii.gz"
# Inside the thigh at array x ~225, y ~165 (subject's left by the RAS header), mid-stack.
CROP = (slice(193, 257), slice(133, 197), slice(8, 24))
RESULTS = REPO / "benchmarks" / "results"


def sitk_default_log_field(volume: np.ndarray, affine: np.ndarray, threads: int) -> np.ndarray:
    """SimpleITK N4 with every default (no shrink, no mask, [50]*4 iterations)."""
    image = to_sitk_image(volume, affine)
    corrector = sitk.N4BiasFieldCorrectionImageFilter()
    corrector.SetNumberOfThreads(threads)
    corrector.Execute(image)
    return sitk.GetArrayFromImage(corrector.GetLogBiasFieldAsImage(image)).transpose(2, 1, 0)


def timed(function, repeats: int):
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    nifti = nib.load(VOLUME)
    volume = np.asarray(nifti.dataobj, dtype=np.float32)
    affine = nifti.affine
    crop = volume[CROP]
    crop_affine = affine.copy()
    crop_affine[:3, 3] = affine[:3, :3] @ [s.start for s in CROP] + affine[:3, 3]

    fast_full_s, fast_full_runs, log_field = timed(
        lambda: n4_log_bias_field(volume, affine, num_threads=args.threads), args.repeats)
    corrected = volume / np.exp(log_field)
    nonuniformity_before = low_frequency_nonuniformity(volume, affine)
    nonuniformity_after = low_frequency_nonuniformity(corrected, affine)

    # On the crop the fast path gets a full mask: the crop lies inside the thigh, and the
    # default path uses no mask either.
    crop_mask = np.ones(crop.shape, dtype=bool)
    fast_crop_s, fast_crop_runs, fast_crop_field = timed(
        lambda: n4_log_bias_field(crop, crop_affine, mask=crop_mask, num_threads=args.threads), args.repeats)
    default_crop_s, default_crop_runs, default_crop_field = timed(
        lambda: sitk_default_log_field(crop, crop_affine, args.threads), 1)
    field_correlation = float(np.corrcoef(fast_crop_field.ravel(), default_crop_field.ravel())[0, 1])
    default_full_estimate_s = default_crop_s * volume.size / crop.size

    result = {
        "volume": str(VOLUME.relative_to(DATA)),
        "shape": list(volume.shape),
        "spacing_mm": [float(s) for s in np.linalg.norm(affine[:3, :3], axis=0)],
        "crop_shape": list(crop.shape),
        "threads": args.threads,
        "repeats": args.repeats,
        "fast_settings": "shrink x4 in-plane (6 mm slices kept), Otsu body mask, 3 levels x 50 iterations, "
                         "log field evaluated at full resolution",
        "sitk_default_settings": "no shrink, no mask, 4 levels x 50 iterations, convergence 0.001, "
                                 "4 control points",
        "fast_full_volume_s": fast_full_s,
        "fast_full_volume_runs_s": fast_full_runs,
        "fast_crop_s": fast_crop_s,
        "fast_crop_runs_s": fast_crop_runs,
        "sitk_default_crop_s": default_crop_s,
        "sitk_default_full_volume_extrapolated_s": default_full_estimate_s,
        "speedup_on_crop": default_crop_s / fast_crop_s,
        "crop_log_field_correlation_fast_vs_default": field_correlation,
        "nonuniformity_before": nonuniformity_before,
        "nonuniformity_after_fast": nonuniformity_after,
        "cpu_count": os.cpu_count(),
        "load_average_1min": os.getloadavg()[0],
        "python": platform.python_version(),
        "simpleitk": sitk.Version.VersionString(),
    }
    rows = [
        ("fast settings", "whole volume 320x320x31", f"{fast_full_s:.1f}", "measured"),
        ("fast settings", "crop 64x64x16", f"{fast_crop_s:.2f}", "measured"),
        ("SimpleITK defaults", "crop 64x64x16", f"{default_crop_s:.1f}", "measured (1 run)"),
        ("SimpleITK defaults", "whole volume 320x320x31", f"{default_full_estimate_s:.0f}",
         "EXTRAPOLATED from the crop by voxel count"),
    ]
    markdown = [
        "# N4 bias-field correction time (benchmarks/bench_n4.py)",
        "",
        f"Volume: `{result['volume']}` ({'x'.join(map(str, volume.shape))}, "
        f"{'x'.join(f'{s:g}' for s in result['spacing_mm'])} mm). {args.threads} threads, median of "
        f"{args.repeats} runs where measured; 1-min load average at the end {result['load_average_1min']:.1f} "
        f"on {result['cpu_count']} CPUs (a shared machine: compare rows of one run, not across runs).",
        "",
        f"- fast settings: {result['fast_settings']}",
        f"- SimpleITK defaults: {result['sitk_default_settings']}",
        "",
        "| settings | region | seconds | how |",
        "|---|---|---|---|",
        *[f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows],
        "",
        f"Speed-up on the same crop: **{result['speedup_on_crop']:.0f}x**; correlation of the two fitted log "
        f"fields on the crop: {field_correlation:.3f}.",
        f"Low-frequency non-uniformity of the whole volume (CV of per-30-mm-block muscle medians): "
        f"{nonuniformity_before:.3f} before, {nonuniformity_after:.3f} after the fast N4.",
        "",
    ]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "bench_n4.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "bench_n4.md").write_text("\n".join(markdown))
    print("\n".join(markdown))


if __name__ == "__main__":
    main()
