"""Dice on simulated "other legs": calf_mri and nnU-Net v2 on legs neither has seen.

Usage:
    .venv/bin/python benchmarks/heldout_proxy.py [--cases 6] [--seed 0] [--threads 2]
                                                 [--model calf_mri] [--no-nnunet]

Both methods were trained on the one labelled leg we have (the subject's right calf,
``qmritools/calf_dti_labeled_half``); the maintainers keep the other leg of that scan as the
held-out case. In-sample Dice measures memory, not generalisation, and nnU-Net (50 epochs on
one case) remembers its training leg almost perfectly. This script draws legs that are the
labelled leg changed the way a contralateral leg differs from it
(``muscle_pipeline.synthetic.other_leg``):

* **mirrored**: the array is flipped along x and placed where the left half of that scan lies
  (world x < 0, as in the held-out file), labels become LEFT values (+100) — what the held-out
  file looks like, if the legs were perfectly symmetric;
* **anatomy**: a smooth random elastic warp (MONAI ``Rand3DElasticd``), a small rotation
  (≤ 3° about x/y, ≤ 8° about the long axis) and in-plane scaling (±6 %) of image and labels
  together;
* **signal**: a smooth multiplicative bias field, gamma 0.8–1.25, ±10 % scaling, Gaussian noise.

Each drawn leg also says how far it is from the training leg: the Dice between its (un-mirrored)
labels and the original labels, voxel by voxel (``label_overlap``), i.e. what a method that
only remembered the training labels would score.

Both methods get the same NIfTI file: ours through the whole segment job (side detection,
mirroring, cascade, write; ``muscle_pipeline.segment``), nnU-Net through its predictor (with its
mirroring TTA). nnU-Net has no notion of sides, so its classes are compared with the muscles
regardless of side; ours must also name the side (a right value on a left leg scores 0).
A second row runs every drawn leg without the mirroring (a right leg in its place), to separate
the effect of the side from that of the anatomy.

The labelled training leg itself also goes through the segment job once (``in_sample``: what the
model remembers, the upper bound of the proxy).

Results are printed and written to ``benchmarks/results/heldout_proxy.{md,json}``. ``--publish``
(only with the shipped ``--model calf_mri``) writes the in-sample and simulated-leg figures into
``eval_metrics`` of ``bundles/calf_mri/configs/metadata.json`` and the marked block of its
``docs/README.md`` with the date and machine (``benchmarks/publish.py``).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
RESULTS = REPO / "benchmarks" / "results"
DATA = Path(os.environ.get("MUSCLE_PIPELINE_SHARED_DATA", REPO.parent / "shared" / "data"))
IMAGE = DATA / "qmritools" / "calf_dti_labeled_half" / "twoLegs_x80-160.nii.gz"
LABELS = DATA / "qmritools" / "calf_dti_labeled_half" / "labels_x80-160.nii.gz"
# The labelled file is the x >= 80 half of a 160-wide scan (SOURCES.md); the held-out leg is x < 80.
FULL_SCAN_WIDTH, FIRST_INDEX = 160, 80


def dice_table(pred: np.ndarray, truth: np.ndarray, values: dict[str, int]) -> dict[str, float]:
    """Dice per structure name (``values``: name → label value)."""
    from muscle_pipeline.synthetic.other_leg import label_overlap

    by_value = label_overlap(pred, truth, values.values())
    return {m: by_value[int(v)] for m, v in values.items()}


def run(cases: int, seed: int, threads: int, model: str, nnunet: bool) -> dict:
    import nibabel as nib
    import torch

    import muscle_pipeline
    from muscle_pipeline import api
    from muscle_pipeline import labels as ontology
    from muscle_pipeline.datasets import map_labels
    from muscle_pipeline.synthetic.other_leg import as_opposite_half, simulate_other_leg

    torch.set_num_threads(threads)
    src = nib.load(IMAGE)
    affine = src.affine
    image = np.asarray(src.dataobj, dtype=np.float32)
    truth = np.asarray(map_labels(np.asarray(nib.load(LABELS).dataobj).astype(np.int64), "qmritools_calf")).astype(np.uint8)
    net = api.load_model(model)
    values = dict(net.values)
    nn_model = None
    if nnunet:
        import nnunet_baseline

        try:
            nn_model = nnunet_baseline.model_folder()
            lut = nnunet_baseline.nnunet_labels_to_ontology()
        except (FileNotFoundError, SystemExit) as exc:
            print(f"nnU-Net skipped: {exc}")
    rows = []
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        t0 = time.perf_counter()
        muscle_pipeline.segment([IMAGE], work / "in_sample", model=model, progress=False, overwrite=True)
        ours = np.asarray(nib.load(next((work / "in_sample").glob("*/segmentation.nii.gz"))).dataobj)
        in_sample = dice_table(ours, truth, values)
        in_sample["mean"] = float(np.mean(list(in_sample.values())))
        print(f"training leg (in-sample): calf_mri {in_sample['mean']:.3f} ({time.perf_counter() - t0:.1f} s)", flush=True)
        for i in range(cases):
            leg_image, leg_labels = simulate_other_leg(image, truth, seed + i)
            overlap = dice_table(leg_labels, truth, values)
            for mirrored in (True, False):
                if mirrored:
                    img, lab, aff = as_opposite_half(leg_image, leg_labels, affine, FULL_SCAN_WIDTH, FIRST_INDEX)
                else:
                    img, lab, aff = leg_image, leg_labels, affine
                path = work / f"leg{i}_{'left' if mirrored else 'right'}.nii.gz"
                nib.save(nib.Nifti1Image(img, aff), path)
                out = work / f"out_{path.name[:-7]}"
                t0 = time.perf_counter()
                muscle_pipeline.segment([path], out, model=model, progress=False, overwrite=True)
                ours_s = time.perf_counter() - t0
                ours = np.asarray(nib.load(out / path.name[:-7] / "segmentation.nii.gz").dataobj)
                side_values = {m: v + (ontology.LEFT_OFFSET if mirrored else 0) for m, v in values.items()}
                row = {"case": i, "seed": seed + i, "mirrored": mirrored, "label_overlap": overlap,
                       "calf_mri": dice_table(ours, lab, side_values), "calf_mri_s": ours_s}
                if nn_model is not None:
                    dst = work / f"nn_{path.name}"
                    timing = nnunet_baseline.predict(path, dst, mirroring=True, threads=threads, model=nn_model)
                    index = np.asarray(nib.load(dst).dataobj)
                    theirs = np.zeros_like(lab)
                    for k, v in lut.items():
                        theirs[index == k] = v
                    base = np.where(lab > ontology.LEFT_OFFSET, lab - ontology.LEFT_OFFSET, lab)
                    row["nnunet_2d"] = dice_table(theirs, base, values)
                    row["nnunet_2d_s"] = timing["predict_s"]
                for key in ("label_overlap", "calf_mri", "nnunet_2d"):
                    if key in row:
                        row[key]["mean"] = float(np.mean(list(row[key].values())))
                rows.append(row)
                print(f"leg {i} {'mirrored' if mirrored else 'right   '}: overlap {row['label_overlap']['mean']:.3f}  "
                      f"calf_mri {row['calf_mri']['mean']:.3f}"
                      + (f"  nnU-Net {row['nnunet_2d']['mean']:.3f}" if "nnunet_2d" in row else ""), flush=True)
    return {"model": model, "cases": cases, "seed": seed, "threads": threads, "rows": rows,
            "in_sample": in_sample, "summary": summarise(rows, list(values))}


def summarise(rows: list[dict], muscles: list[str]) -> dict:
    out = {}
    for mirrored in (True, False):
        sel = [r for r in rows if r["mirrored"] == mirrored]
        key = "mirrored" if mirrored else "right"
        out[key] = {}
        for method in ("label_overlap", "calf_mri", "nnunet_2d"):
            if sel and method in sel[0]:
                out[key][method] = {m: float(np.mean([r[method][m] for r in sel])) for m in muscles + ["mean"]}
    return out


def markdown(report: dict) -> str:
    summary = report["summary"]
    muscles = [m for m in summary["mirrored"]["calf_mri"] if m != "mean"]
    short = {"gastrocnemius_medial_head": "GM med", "gastrocnemius_lateral_head": "GM lat", "soleus": "soleus",
             "tibialis_anterior": "TA", "fibulari": "fibulari", "phalangeal_extensors": "ext.",
             "tibialis_posterior": "TP"}
    lines = [f"# Dice on simulated other legs ({report['cases']} legs, seeds {report['seed']}–"
             f"{report['seed'] + report['cases'] - 1}, model {report['model']})", "",
             "Each leg is the labelled training leg warped (elastic + rotation + scaling) and re-contrasted "
             "(bias field, gamma, noise); *mirrored* legs are also flipped into the scan's left half, as the "
             "held-out file is. *label overlap* is the Dice of the warped labels with the original ones "
             "(what remembering the training labels would score). Generated by `benchmarks/heldout_proxy.py`.", "",
             "| legs | method | " + " | ".join(short.get(m, m) for m in muscles) + " | mean |",
             "|---|---|" + "---|" * (len(muscles) + 1)]
    names = {"label_overlap": "label overlap", "calf_mri": "calf_mri (segment job)", "nnunet_2d": "nnU-Net v2 2d"}
    for key in ("mirrored", "right"):
        for method, row in summary[key].items():
            lines.append(f"| {key} | {names[method]} | " + " | ".join(f"{row[m]:.3f}" for m in muscles)
                         + f" | **{row['mean']:.3f}** |")
    if "in_sample" in report:
        row = report["in_sample"]
        lines.append(f"| training leg (in-sample) | {names['calf_mri']} | " + " | ".join(f"{row[m]:.3f}" for m in muscles)
                     + f" | **{row['mean']:.3f}** |")
    if "nnunet_2d" in summary["mirrored"]:
        ratio = summary["mirrored"]["calf_mri"]["mean"] / max(summary["mirrored"]["nnunet_2d"]["mean"], 1e-9)
        lines += ["", f"Dice ratio calf_mri / nnU-Net on the mirrored legs: **{ratio:.3f}**."]
    if report.get("machine"):
        lines += ["", f"Measured {report.get('date', '')} on {report['machine']}."]
    return "\n".join(lines) + "\n"


def publish_figures(report: dict, output: Path, command: str) -> dict:
    """calf_mri's eval_metrics and README block from this run (``benchmarks/publish.py``)."""
    from publish import publish, rounded

    legs = report["summary"]["mirrored"]["calf_mri"]
    in_sample = report["in_sample"]
    figures = {
        "mean_dice_simulated_other_legs": rounded(legs["mean"]),
        "dice_simulated_other_legs": rounded({m: v for m, v in legs.items() if m != "mean"}),
        "n_simulated_other_legs": report["cases"],
        "mean_dice_training_leg_in_sample": rounded(in_sample["mean"]),
        "dice_training_leg_in_sample": rounded({m: v for m, v in in_sample.items() if m != "mean"}),
    }
    muscles = [m for m in legs if m != "mean"]
    table = ["| evaluation (shipped weights, through the segment job) | " + " | ".join(muscles) + " | mean |",
             "|---|" + "---|" * (len(muscles) + 1),
             "| training leg (in-sample) | " + " | ".join(f"{in_sample[m]:.3f}" for m in muscles)
             + f" | **{in_sample['mean']:.3f}** |",
             f"| {report['cases']} simulated other legs (unseen; seeds {report['seed']}–{report['seed'] + report['cases'] - 1}, "
             "flipped into the scan's left half) | " + " | ".join(f"{legs[m]:.3f}" for m in muscles)
             + f" | **{legs['mean']:.3f}** |"]
    results = str(output.with_suffix(".md").resolve().relative_to(REPO)) if output.resolve().is_relative_to(REPO) \
        else str(output.with_suffix(".md"))
    return publish("calf_mri", "benchmarks/heldout_proxy.py", figures, results=results, command=command,
                   readme="\n".join(table), date=report.get("date"), machine_text=report.get("machine"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", default="calf_mri", help="bundle name or folder")
    parser.add_argument("--no-nnunet", action="store_true")
    parser.add_argument("--output", type=Path, default=RESULTS / "heldout_proxy")
    parser.add_argument("--publish", action="store_true",
                        help="write the figures into bundles/calf_mri (metadata eval_metrics, docs/README.md)")
    args = parser.parse_args(argv)
    if args.publish and args.model != "calf_mri":
        parser.error("--publish writes the shipped calf_mri bundle's figures: use it with --model calf_mri")
    from publish import machine, today

    report = run(args.cases, args.seed, args.threads, args.model, not args.no_nnunet)
    report.update(date=today(), machine=machine())
    print(save(report, args.output))
    if args.publish:
        command = ".venv/bin/python benchmarks/heldout_proxy.py " + " ".join(argv if argv is not None else sys.argv[1:])
        print(json.dumps(publish_figures(report, args.output, command.strip()), indent=1))
    return 0


def save(report: dict, output: Path) -> str:
    """Write ``output``.json and .md; returns the Markdown."""
    output.parent.mkdir(parents=True, exist_ok=True)
    output.with_suffix(".json").write_text(json.dumps(report, indent=1))
    text = markdown(report)
    output.with_suffix(".md").write_text(text)
    return text


if __name__ == "__main__":
    raise SystemExit(main())
