"""calf_mri across MR contrasts: the same real calves through two sets of weights, side by side.

Only one contrast is labelled here (the fat-suppressed DTI b0 calf calf_mri is trained on), so the
other contrasts are measured without labels:

* **Dice on the labelled DTI calf** — in-sample for every weight set trained on it (say so).
* **Water/fat agreement** — QMRITools' Dixon water and fat images come from one acquisition: the
  same calves on the same grid, fat dark in one and bright in the other. A model that does not
  depend on contrast labels them alike, so the Dice between its two predictions, per muscle and
  side, measures contrast dependence directly (necessary for being right on both, not sufficient).
* **Volumes** on every calf scan (DTI, test_low, Dixon water, Dixon fat, 3D Dixon), next to the
  atlas's plausible range per muscle (the segment job's ``implausible_volumes`` warning).
* **A picture per scan**: one leg, five axial slices, one row per weight set.

Every scan goes through the whole segment job (``muscle_pipeline.segment``, model given as a bundle
name or folder), as a user's would::

    python benchmarks/calf_contrast.py --models calf_mri runs/calf_remap --names shipped remap \\
        --output benchmarks/results/calf_contrast

The published run compared the shipped 0.2.0 with the 0.1.0 weights, taken from git::

    mkdir -p runs/calf_mri_0.1.0 && git archive 68ce888 bundles/calf_mri | tar -x -C runs/calf_mri_0.1.0 --strip-components 2
    python benchmarks/calf_contrast.py --models runs/calf_mri_0.1.0 calf_mri --names 0.1.0 0.2.0 --publish

``--publish`` writes the figures of the model named ``calf_mri`` (the shipped weights) into the
bundle (``metadata.json`` ``eval_metrics`` and a block of ``docs/README.md``, ``benchmarks/publish.py``).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
SHARED = Path(os.environ.get("MUSCLE_PIPELINE_SHARED", REPO.parent / "shared")) / "data"
Q = SHARED / "qmritools"
SCANS = {
    "DTI b0 calf (labelled, trained on)": Q / "calf_dti_labeled_half" / "twoLegs_x80-160.nii.gz",
    "test_low": Q / "thigh_calf_unlabeled" / "test_low.nii.gz",
    "Dixon water": Q / "thigh_calf_unlabeled" / "dixon_water.nii.gz",
    "Dixon fat": Q / "thigh_calf_unlabeled" / "dixon_fat.nii.gz",
    "3D Dixon (MuscleMap, SWastling)": SHARED / "swastling_musclemap" / "calf_dixon3d_unlabeled"
    / "0026-dix3d_TR23_448m_fa05_345.nii.gz",
}
LABELLED = "DTI b0 calf (labelled, trained on)"
CALF_LABELS = Q / "calf_dti_labeled_half" / "labels_x80-160.nii.gz"


def run_model(model: str, work: Path) -> dict:
    """Segment every scan with ``model``; per scan: status, label map, volumes, warnings."""
    import nibabel as nib

    import muscle_pipeline as mp

    out = {}
    for name, path in SCANS.items():
        folder = work / name.split(" ")[0].replace("/", "_")
        (result,) = mp.segment([path], folder, model=model, device="cpu", overwrite=True, force=True)
        entry = {"status": result.status, "reason": result.reason}
        if result.status == "complete":
            case = Path(result.output)
            entry["labels"] = np.asarray(nib.load(case / "segmentation.nii.gz").dataobj)
            with (case / "volumes.csv").open() as f:
                entry["volumes_ml"] = {r["name"]: float(r["volume_ml"]) for r in csv.DictReader(f)}
            entry["warnings"] = [w for w in json.loads((case / "report.json").read_text()).get("warnings", [])]
        out[name] = entry
    return out


def measure(runs: dict[str, dict]) -> dict:
    """Dice on the labelled calf and water/fat agreement per model, from ``run_model``'s results."""
    import nibabel as nib

    from muscle_pipeline import labels as ontology
    from muscle_pipeline.datasets import map_labels
    from muscle_pipeline.synthetic.other_leg import label_overlap

    truth = np.asarray(map_labels(np.asarray(nib.load(CALF_LABELS).dataobj).astype(np.int64), "qmritools_calf"))
    report = {}
    for model, scans in runs.items():
        pred = scans[LABELLED]["labels"]
        dice = {ontology.label(v).name: round(d, 3)
                for v, d in label_overlap(pred, truth, [v for v in np.unique(truth) if v]).items()}
        water, fat = scans["Dixon water"]["labels"], scans["Dixon fat"]["labels"]
        values = sorted((set(np.unique(water)) | set(np.unique(fat))) - {0})
        agreement = {ontology.label(v).name: round(d, 3) for v, d in label_overlap(water, fat, values).items()}
        report[model] = {
            "dice_labelled_calf": dice,
            "mean_dice_labelled_calf": round(float(np.mean(list(dice.values()))), 3),
            "water_fat_agreement": agreement,
            "mean_water_fat_agreement": round(float(np.mean(list(agreement.values()))), 3) if agreement else 0.0,
            "volumes_ml": {s: e.get("volumes_ml", {}) for s, e in scans.items()},
            "volume_warnings": {s: [w for w in e.get("warnings", []) if "anatomical range" in w] for s, e in scans.items()},
            "status": {s: e["status"] for s, e in scans.items()},
        }
    return report


def picture(runs: dict[str, dict], scan: str, path: Path) -> None:
    """One leg of ``scan`` (the lower array-x half when both are side by side; the title says which),
    five axial slices; a row for the image and one per model."""
    import nibabel as nib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from muscle_pipeline.qc import _colour_lut, _colour_table, _overlay

    image = np.asarray(nib.load(SCANS[scan]).dataobj, dtype=np.float32)
    labels = {m: r[scan]["labels"] for m, r in runs.items() if r[scan]["status"] == "complete"}
    body = image.max(axis=2) > np.percentile(image, 70)
    xs, ys = np.nonzero(body)
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    if x1 - x0 > 1.6 * (y1 - y0):  # both legs side by side: keep the one in the lower array half
        x1 = (x0 + x1) // 2
    all_values = np.unique(np.concatenate([np.unique(v) for v in labels.values()]))
    all_values = all_values[all_values > 0]
    table = _colour_table(_colour_lut(all_values))
    slices = np.linspace(2, image.shape[2] - 3, 5).astype(int)
    fig = Figure(figsize=(2.6 * len(slices), 2.6 * (len(labels) + 1)))
    FigureCanvasAgg(fig)
    for j, z in enumerate(slices):
        tile = image[x0:x1, y0:y1, z]
        gray = (tile - tile.min()) / max(float(np.percentile(tile, 99.5) - tile.min()), 1e-6)
        for i, (row, lab) in enumerate([("image", None), *labels.items()]):
            ax = fig.add_subplot(len(labels) + 1, len(slices), i * len(slices) + j + 1)
            shown = np.clip(gray, 0, 1) if lab is None else _overlay(np.clip(gray, 0, 1), lab[x0:x1, y0:y1, z], table, 0.5)
            ax.imshow(np.swapaxes(shown, 0, 1), cmap="gray", origin="lower")
            ax.set_xticks([]), ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(row, fontsize=9)
            if i == 0:
                ax.set_title(f"z={z}", fontsize=8)
    tiles = [lab[x0:x1, y0:y1] for lab in labels.values()]
    named = np.concatenate([t[t > 0] for t in tiles]) if tiles else np.zeros(0)
    from muscle_pipeline.labels import LEFT_OFFSET

    leg = "no leg labelled" if named.size == 0 else ("left leg" if np.median(named) >= LEFT_OFFSET else "right leg")
    fig.suptitle(f"{scan}: {leg}, calf_mri weights by row (array x to the right)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=70)


def markdown(report: dict, names: list[str], pictures: dict[str, str], command: str, machine: str) -> str:
    muscles = list(next(iter(report.values()))["dice_labelled_calf"])
    lines = [f"# calf_mri across MR contrasts ({' vs '.join(names)})", "",
             f"`{command}` — {machine}. Whole segment job per scan (`--force`).", "",
             "## Dice on the labelled DTI calf (in-sample: every weight set here was trained on it)", "",
             "| weights | " + " | ".join(muscles) + " | mean |", "|---" * (len(muscles) + 2) + "|"]
    for m in names:
        r = report[m]
        lines.append(f"| {m} | " + " | ".join(f"{r['dice_labelled_calf'][k]:.3f}" for k in muscles)
                     + f" | **{r['mean_dice_labelled_calf']:.3f}** |")
    structures = sorted({k for m in names for k in report[m]["water_fat_agreement"]})
    lines += ["", "## Water/fat agreement (Dice between the predictions on Dixon water and Dixon fat: one "
              "acquisition, same calves, same grid)", "",
              "| structure | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for s in structures:
        lines.append(f"| {s} | " + " | ".join(f"{report[m]['water_fat_agreement'].get(s, float('nan')):.3f}"
                                               for m in names) + " |")
    lines.append("| **mean** | " + " | ".join(f"**{report[m]['mean_water_fat_agreement']:.3f}**" for m in names) + " |")
    lines += ["", "## Volumes (mL) per scan", ""]
    for scan in SCANS:
        vols = sorted({k for m in names for k in report[m]["volumes_ml"].get(scan, {})})
        lines += [f"**{scan}** (" + ", ".join(f"{m}: {report[m]['status'][scan]}" for m in names) + ")", "",
                  "| structure | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
        for k in vols:
            lines.append(f"| {k} | " + " | ".join(f"{report[m]['volumes_ml'][scan].get(k, 0.0):.1f}" for m in names) + " |")
        for m in names:
            for w in report[m]["volume_warnings"].get(scan, []):
                lines.append(f"\n* {m}: {w}")
        lines.append("")
    lines += ["## Pictures", ""] + [f"![{s}]({p})" for s, p in pictures.items()]
    return "\n".join(lines) + "\n"


def publish_figures(report: dict, name: str, output: Path, command: str) -> dict:
    """calf_mri's eval_metrics and README block from the shipped weights' row of this run."""
    from publish import publish, rounded

    r = report[name]
    figures = {"mean_water_fat_agreement": rounded(r["mean_water_fat_agreement"]),
               "water_fat_agreement": rounded(r["water_fat_agreement"])}
    structures = list(r["water_fat_agreement"])
    table = ["Dice between the shipped weights' labels on the Dixon water and the Dixon fat image of one "
             "acquisition (QMRITools demo calves, unlabelled, not trained on; `benchmarks/calf_contrast.py`):", "",
             "| " + " | ".join(s.replace("_", " ") for s in structures) + " | mean |",
             "|---" * (len(structures) + 1) + "|",
             "| " + " | ".join(f"{r['water_fat_agreement'][s]:.3f}" for s in structures)
             + f" | **{r['mean_water_fat_agreement']:.3f}** |"]
    results = str(output.with_suffix(".md").resolve().relative_to(REPO)) if output.resolve().is_relative_to(REPO) \
        else str(output.with_suffix(".md"))
    return publish("calf_mri", "benchmarks/calf_contrast.py", figures, results=results, command=command,
                   readme="\n".join(table))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["calf_mri"], help="bundle names or folders")
    parser.add_argument("--names", nargs="+", help="a short name per model (default: as given)")
    parser.add_argument("--output", default=str(REPO / "benchmarks" / "results" / "calf_contrast"))
    parser.add_argument("--images", default=str(REPO / "docs" / "images"), help="where the pictures go")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--publish", action="store_true",
                        help="write the figures of the model given as calf_mri into bundles/calf_mri")
    args = parser.parse_args(argv)
    import torch

    from publish import machine

    torch.set_num_threads(args.threads)
    names = args.names or args.models
    if len(names) != len(args.models):
        parser.error("--names needs one name per model")
    if args.publish and "calf_mri" not in args.models:
        parser.error("--publish writes the shipped calf_mri's figures: list calf_mri among --models")
    with tempfile.TemporaryDirectory() as tmp:
        runs = {n: run_model(m, Path(tmp) / n) for n, m in zip(names, args.models)}
    report = measure(runs)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    images = Path(args.images)
    images.mkdir(parents=True, exist_ok=True)
    pictures = {}
    for scan in SCANS:
        slug = "".join(c if c.isalnum() else "_" for c in scan.split(" (")[0].lower())
        path = images / f"calf_contrast_{slug}.png"
        picture(runs, scan, path)
        pictures[scan] = os.path.relpath(path, output.parent)
    command = "python benchmarks/calf_contrast.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = markdown(report, names, pictures, command, machine())
    output.with_suffix(".md").write_text(text)
    output.with_suffix(".json").write_text(json.dumps({"models": dict(zip(names, args.models)), "command": command,
                                                       "machine": machine(), "report": report}, indent=1))
    print(text)
    if args.publish:
        shipped = names[args.models.index("calf_mri")]
        print(json.dumps(publish_figures(report, shipped, output, command), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
