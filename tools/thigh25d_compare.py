"""Seed 004's comparison on the real CT: 2.5D vs 2D (axial) vs 3D U-Net, trained on one leg and
scored on the other.

The only labelled CT we have is TotalSegmentator's example (``shared/data/totalsegmentator/
ct_abdomen_pelvis``, labels = TotalSegmentator predictions, hip to lung bases, proximal femur
only). The structures present in both legs are gluteus maximus, medius, minimus, iliopsoas,
femur and hip bone. Each method is trained on the RIGHT leg crop and tested on the LEFT leg
crop, mirrored to look like a right leg (the side never seen in training):

    from tools.thigh25d_compare import evaluate_methods, train_heldout
    train_heldout("bundles/thigh_ct_25d/models/heldout")        # all three methods, right leg
    rows = evaluate_methods("thigh_ct_25d", "bundles/thigh_ct_25d/models/heldout", out_dir)

``evaluate_methods`` writes the mirrored test crop's predictions and reference (NIfTI), then
:func:`muscle_pipeline.evaluation.compare_methods` (Dice, ASD, HD95 per class, paired tests,
``dice_comparison.png``), plus ``comparison_table.md`` and ``dice_asd_paired.png``.

Development tooling (run from the repository root; ``configs/evaluate.json`` of the bundle calls
``evaluate_methods``); the training data entry itself is :mod:`muscle_pipeline.thigh25d.data`.
"""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from muscle_pipeline.cascade.model import bundle_path, read_bundle_config, right_value
from muscle_pipeline.thigh25d.data import REAL_CT, real_ct_entry
from muscle_pipeline.thigh25d.model import load_model
from muscle_pipeline.thigh25d.train import Thigh25DTrainer, _read_pair, leg_crops

__all__ = ["REAL_CT", "real_ct_entry", "train_heldout", "evaluate_methods", "METHODS"]

log = logging.getLogger(__name__)

METHODS = {"2.5D": "25d", "2D": "2d", "3D": "3d"}


def train_heldout(output_dir: str | Path, bundle: str | Path = "thigh_ct_25d", train_side: str = "right",
                  **trainer_kwargs) -> dict:
    """Train 2.5D, 2D and 3D on ``train_side`` of the real CT; weights into ``output_dir``."""
    parser = read_bundle_config(bundle_path(bundle))
    trainer = Thigh25DTrainer(list(parser["structures"]), dataset=[real_ct_entry(train_side)],
                              output_dir=str(output_dir), **trainer_kwargs)
    return trainer.run(kinds=("25d", "2d", "3d"))


def test_crop(test_side: str = "left", margin_mm: float = 15.0):
    """The held-out leg of the real CT as a right-looking crop: ``(image, label)`` MetaTensors."""
    image, label = _read_pair(real_ct_entry())
    crop = leg_crops(image, label, [test_side], margin_mm)[0]
    return crop["image"], crop["label"]


def evaluate_methods(bundle: str | Path = "thigh_ct_25d", models_dir: str | Path | None = None,
                     out_dir: str | Path = "thigh25d_comparison", test_side: str = "left",
                     methods: dict[str, str] | None = None) -> list[dict]:
    """Predict the held-out leg with each method and compare (see the module docstring)."""
    from muscle_pipeline.evaluation import compare_methods
    from muscle_pipeline.io import write_label_map

    methods = methods or METHODS
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    image, label = test_crop(test_side)
    structures = list(read_bundle_config(bundle_path(bundle))["structures"])
    values = [right_value(name) for name in structures]
    # reference: this leg's structures only (the other leg's inside the crop margin are not scored)
    reference = torch.where(torch.isin(label[0].as_tensor(), torch.tensor(values, dtype=label.dtype)), label[0], 0)
    ref_path = write_label_map(reference.to(torch.uint8), image, out / f"reference_{test_side}.nii.gz")
    pairs, predictions, seconds = {}, {}, {}
    for name, kind in methods.items():
        model = load_model(bundle, models_dir=models_dir, kind=kind)
        start = time.perf_counter()
        predictions[name] = model.predict(image)
        seconds[name] = time.perf_counter() - start
        pred_path = write_label_map(predictions[name], image, out / f"prediction_{kind}_{test_side}.nii.gz")
        pairs[name] = {f"{test_side}_leg": (pred_path, ref_path)}
    rows = compare_methods(pairs, labels=values, out_dir=out)
    write_table(rows, out / "comparison_table.md")
    (out / "predict_seconds.json").write_text(json.dumps(seconds, indent=1))
    plot_paired(rows, out / "dice_asd_paired.png")
    plot_overlay(image, reference.numpy(), {k: v.numpy() for k, v in predictions.items()}, out / "overlay.png")
    return rows


def write_table(rows: Sequence[dict], path: str | Path) -> Path:
    """Markdown table: one row per structure, Dice and ASD (mm) per method, then the means."""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    names = list(dict.fromkeys(r["name"] for r in rows))
    cell = {(r["method"], r["name"]): r for r in rows}
    head = "| structure | " + " | ".join(f"Dice {m}" for m in methods) + " | " + " | ".join(f"ASD {m} (mm)" for m in methods) + " |"
    lines = [head, "|" + "---|" * (1 + 2 * len(methods))]
    for name in names + ["mean"]:
        if name == "mean":
            dice = [np.mean([cell[m, n]["dice"] for n in names]) for m in methods]
            asd = [np.mean([cell[m, n]["asd_mm"] for n in names]) for m in methods]
        else:
            dice = [cell[m, name]["dice"] for m in methods]
            asd = [cell[m, name]["asd_mm"] for m in methods]
        lines.append(f"| {name} | " + " | ".join(f"{v:.3f}" for v in dice) + " | " + " | ".join(f"{v:.2f}" for v in asd) + " |")
    Path(path).write_text("\n".join(lines) + "\n")
    return Path(path)


def plot_paired(rows: Sequence[dict], path: str | Path) -> Path:
    """Paired box plot: Dice and ASD per method, one box over the structures, each structure a
    line joining its values across methods (the seed's figure, structures as the pairs)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(dict.fromkeys(r["method"] for r in rows))
    names = list(dict.fromkeys(r["name"] for r in rows))
    cell = {(r["method"], r["name"]): r for r in rows}
    fig, axes = plt.subplots(1, 2, figsize=(9, 4))
    for ax, metric, title in ((axes[0], "dice", "Dice"), (axes[1], "asd_mm", "ASD (mm)")):
        data = np.array([[cell[m, n][metric] for m in methods] for n in names], dtype=float)
        ax.boxplot([data[:, j][np.isfinite(data[:, j])] for j in range(len(methods))], tick_labels=methods,
                   widths=0.5)
        for i, name in enumerate(names):
            ax.plot(np.arange(1, len(methods) + 1), data[i], "o-", alpha=0.7, label=name)
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="upper right")
    fig.suptitle("Held-out leg (real CT, trained on the other leg): per structure, paired across methods")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def whole_scan_check(bundle: str | Path = "thigh_ct_25d", models_dir: str | Path | None = None) -> dict:
    """Run the segment job (``muscle_pipeline.segmentation.segment_image``) on the whole real CT.

    Returns, per structure and side: Dice against the TotalSegmentator labels and the world x
    (RAS mm) of the predicted structure's centroid, so that "left labels on the subject's left"
    (smaller x) can be read off; plus the job's warnings and timings.
    """
    from muscle_pipeline.metrics import dice
    from muscle_pipeline.segmentation import segment_image

    image, label = _read_pair(real_ct_entry())
    model = load_model(bundle, models_dir=models_dir)
    result = segment_image(image, model)
    prediction = result.labels.numpy()
    reference = label.numpy()
    affine = np.asarray(image.affine, dtype=float)
    out = {"structures": {}, "warnings": result.warnings, "timings": result.timings, "legs": result.legs}
    for name in model.structures:
        for side, value in (("right", right_value(name)), ("left", right_value(name) + 100)):
            mask = prediction == value
            centroid_x = float((np.argwhere(mask).mean(axis=0) @ affine[0, :3]) + affine[0, 3]) if mask.any() else None
            ref_mask = reference == value
            ref_x = float((np.argwhere(ref_mask).mean(axis=0) @ affine[0, :3]) + affine[0, 3]) if ref_mask.any() else None
            out["structures"][f"{name}_{side}"] = {"dice": dice(prediction, reference, value),
                                                   "centroid_x_mm": centroid_x, "reference_centroid_x_mm": ref_x}
    return out


def plot_overlay(image, reference, predictions: dict, path: str | Path) -> Path:
    """Axial and coronal slices of the held-out crop: reference and each method's labels.

    ``image``: (1, X, Y, Z) HU MetaTensor (RAS after Orientation); ``reference`` and the
    ``predictions`` values: (X, Y, Z) label maps on its grid. Slices through the reference's
    gluteus medius centre. Display only: arrays are shown in RAS with the subject's anterior up.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    from muscle_pipeline import labels as ontology

    volume = np.asarray(image[0], dtype=float)
    maps = {"reference (TotalSegmentator)": np.asarray(reference)} | {k: np.asarray(v) for k, v in predictions.items()}
    values = sorted(int(v) for v in np.unique(maps["reference (TotalSegmentator)"]) if v)
    colours = np.zeros((256, 4))
    for v in values:
        colours[v, :3] = np.asarray(ontology.label(v).color) / 255.0
        colours[v, 3] = 0.55
    cmap = ListedColormap(colours)
    centre = np.argwhere(maps["reference (TotalSegmentator)"] == right_value("gluteus_medius")).mean(axis=0).astype(int)
    fig, axes = plt.subplots(2, len(maps), figsize=(3.2 * len(maps), 6.4))
    for j, (title, lab) in enumerate(maps.items()):
        for i, (axis, name) in enumerate(((2, "axial"), (1, "coronal"))):
            img2d = np.take(volume, centre[axis], axis=axis)
            lab2d = np.take(lab, centre[axis], axis=axis)
            ax = axes[i, j]
            ax.imshow(np.clip(img2d, -200, 300).T, cmap="gray", origin="lower")
            ax.imshow(lab2d.T, cmap=cmap, vmin=0, vmax=255, origin="lower", interpolation="nearest")
            ax.set_title(f"{title}\n{name}" if i == 0 else name, fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
