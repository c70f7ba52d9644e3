"""lower_limb_35 trained from the atlas alone (synthesis), measured on real scans it never saw.

Figures (written to ``benchmarks/results/lower_limb_35_atlas.{json,md}``, QC pictures to
``docs/images/ll35_*.png``), every scan through the segment job's own path (legs split, left
mirrored, side check, fusion, postprocessing):

* the real labelled DTI calf (QMRITools, 7 muscles): Dice per muscle — out of distribution, the
  model never saw a real image;
* the real pelvis CT against TotalSegmentator's labels: gluteus maximus / medius / minimus and
  iliopsoas (iliacus + psoas major), both sides;
* the real thighs (test_up) and calves (test_low): distinct muscles found per side (>= 1 mL) by
  region — thighs should give thigh muscles and no calf muscle, calves the reverse.

    .venv/bin/python benchmarks/lower_limb_35_atlas.py [--models-dir runs/ll35_v01] [--publish]

``--publish`` writes the figures into ``eval_metrics`` of the bundle's ``configs/metadata.json`` and a
marked block of its ``docs/README.md``, with date and machine, through ``benchmarks/publish.py``
(measured figures are written by the script that measured them, never by hand).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from muscle_pipeline import labels as L
from muscle_pipeline.cascade import load_cascade
from muscle_pipeline.datasets import map_labels
from muscle_pipeline.io import read_image
from muscle_pipeline.metrics import dice
from muscle_pipeline.qc import save_qc_png
from muscle_pipeline.segmentation import segment_image

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
RESULTS = REPO / "benchmarks" / "results"
IMAGES = REPO / "docs" / "images"
CALF = DATA / "qmritools" / "calf_dti_labeled_half"
CT = DATA / "totalsegmentator" / "ct_abdomen_pelvis"
SCANS = {"thighs MR (test_up)": DATA / "qmritools" / "thigh_calf_unlabeled" / "test_up.nii.gz",
         "calves MR (test_low)": DATA / "qmritools" / "thigh_calf_unlabeled" / "test_low.nii.gz"}
CT_MUSCLES = ("gluteus_maximus", "gluteus_medius", "gluteus_minimus", "iliopsoas")


def segment(model, path: Path, picture: str, title: str) -> tuple[np.ndarray, object, float]:
    image = read_image(path)
    t0 = time.time()
    result = segment_image(image, model)
    seconds = time.time() - t0
    labels = result.labels.numpy().astype(np.uint8)
    save_qc_png(image.numpy() if image.ndim == 3 else image.numpy()[0], labels, np.asarray(image.affine),
                IMAGES / picture, title=title)
    return labels, image, seconds


def muscles_by_side_and_region(labels: np.ndarray, voxel_ml: float) -> dict:
    out = {"right": {}, "left": {}}
    values, counts = np.unique(labels, return_counts=True)
    for v, n in zip(values, counts):
        if v == 0 or n * voxel_ml < 1.0:
            continue
        lab = L.label(int(v))
        if lab.structure.kind != "muscle" or lab.side is None:
            continue
        region = lab.structure.region
        out[lab.side].setdefault(region, []).append(lab.structure.name)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models-dir", default=None, help="weights folder (default: the bundle's models/)")
    ap.add_argument("--publish", action="store_true", help="write the figures into the bundle's metadata.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    model = load_cascade("lower_limb_35", models_dir=args.models_dir)
    report = {"machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
              "models_dir": str(args.models_dir or "bundle models/")}

    # real labelled calf (one leg, right)
    pred, image, sec = segment(model, CALF / "twoLegs_x80-160.nii.gz", "ll35_calf_dti.png",
                               "lower_limb_35 (atlas only): labelled DTI calf")
    truth = np.asarray(map_labels(np.asarray(nib.load(CALF / "labels_x80-160.nii.gz").dataobj).astype(np.int64),
                                  "qmritools_calf"))
    calf = {L.name_of(int(v)): float(dice(pred, truth, int(v))) for v in np.unique(truth) if v}
    report["calf_dti"] = {"dice": calf, "mean_dice": float(np.mean(list(calf.values()))), "seconds": sec}

    # real pelvis CT vs TotalSegmentator
    pred, image, sec = segment(model, CT / "example_ct.nii.gz", "ll35_pelvis_ct.png",
                               "lower_limb_35 (atlas only): pelvis CT")
    ref = np.asarray(map_labels(np.asarray(nib.load(CT / "example_seg_fast_force_split.nii.gz").dataobj).astype(np.int64),
                                "totalsegmentator_total"))
    pred = pred.copy()
    for side in ("right", "left"):  # iliopsoas = iliacus + psoas major
        pred[np.isin(pred, [L.value_of(f"iliacus_{side}"), L.value_of(f"psoas_major_{side}")])] = L.value_of(f"iliopsoas_{side}")
    ct = {f"{m}_{side}": float(dice(pred, ref, L.value_of(f"{m}_{side}"))) for m in CT_MUSCLES for side in ("right", "left")}
    report["pelvis_ct"] = {"dice": ct, "mean_dice": float(np.mean(list(ct.values()))), "seconds": sec}

    # unlabelled thighs and calves: which muscles, by region
    report["unlabelled"] = {}
    for name, path in SCANS.items():
        labels, image, sec = segment(model, path, f"ll35_{path.name.split('.')[0]}.png", f"lower_limb_35 (atlas only): {name}")
        voxel_ml = float(abs(np.linalg.det(np.asarray(image.affine)[:3, :3]))) / 1000
        found = muscles_by_side_and_region(labels, voxel_ml)
        report["unlabelled"][name] = {"muscles": found, "seconds": sec,
                                      "count": {s: {r: len(v) for r, v in regions.items()} for s, regions in found.items()}}

    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "lower_limb_35_atlas.json").write_text(json.dumps(report, indent=1))
    lines = ["# lower_limb_35 from the atlas alone, on real scans", "", f"weights: {report['models_dir']}; {report['machine']}", "",
             "| real labelled DTI calf | Dice |", "|---|---|"]
    lines += [f"| {m} | {d:.3f} |" for m, d in calf.items()] + [f"| **mean** | **{report['calf_dti']['mean_dice']:.3f}** |", "",
              "| pelvis CT vs TotalSegmentator | Dice |", "|---|---|"]
    lines += [f"| {m} | {d:.3f} |" for m, d in ct.items()] + [f"| **mean** | **{report['pelvis_ct']['mean_dice']:.3f}** |", "",
              "| unlabelled scan | muscles found per side (>= 1 mL) by region | seconds |", "|---|---|---|"]
    for name, r in report["unlabelled"].items():
        lines.append(f"| {name} | right {r['count']['right']}, left {r['count']['left']} | {r['seconds']:.0f} |")
    (RESULTS / "lower_limb_35_atlas.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if args.publish:
        publish(report, args.models_dir, " ".join([".venv/bin/python benchmarks/lower_limb_35_atlas.py",
                                                   *(argv if argv is not None else sys.argv[1:])]))


def publish(report: dict, models_dir, command: str) -> dict:
    """The figures into lower_limb_35's metadata eval_metrics and README block (benchmarks/publish.py)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from publish import publish as publish_to_bundle, rounded

    figures = {
        "real_calf_dti_mean_dice": rounded(report["calf_dti"]["mean_dice"]),
        "real_calf_dti_dice": rounded(report["calf_dti"]["dice"]),
        "real_pelvis_ct_vs_totalsegmentator_mean_dice": rounded(report["pelvis_ct"]["mean_dice"]),
        "real_pelvis_ct_vs_totalsegmentator_dice": rounded(report["pelvis_ct"]["dice"]),
        "real_unlabelled_muscles_found": {k: v["count"] for k, v in report["unlabelled"].items()},
    }
    return publish_to_bundle("lower_limb_35", "benchmarks/lower_limb_35_atlas.py", figures,
                             results="benchmarks/results/lower_limb_35_atlas.md", command=command,
                             readme=f"Trained on the atlas only (weights: {models_dir or 'bundle models/'}): real DTI "
                                    f"calf mean Dice {report['calf_dti']['mean_dice']:.3f}, pelvis CT vs TotalSegmentator "
                                    f"{report['pelvis_ct']['mean_dice']:.3f}.")


if __name__ == "__main__":
    main()
