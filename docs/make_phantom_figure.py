"""Make docs/figures/phantoms.png: axial and coronal views of thigh, calf and hip phantoms
(MR contrast) with the ontology's label colours overlaid.

    .venv/bin/python docs/make_phantom_figure.py [--out docs/figures/phantoms.png] [--seed 0]

Views follow the radiological convention: the subject's RIGHT is on the viewer's LEFT.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from muscle_pipeline import labels as ontology  # noqa: E402
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tools/ (not installed) from the repository root
from tools.phantoms import make_phantom  # noqa: E402

SHAPES = {"thigh": (320, 168, 90), "calf": (320, 177, 80), "hip": (320, 228, 96)}


def _overlay(image2d: np.ndarray, labels2d: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    lo, hi = np.percentile(image2d, [1, 99.5])
    grey = np.clip((image2d - lo) / (hi - lo + 1e-6), 0, 1)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    colors = np.zeros((256, 3))
    show = np.zeros(256, bool)
    for lab in ontology.all_labels():
        if lab.value < 256 and lab.kind in ("muscle", "bone"):
            colors[lab.value] = np.asarray(lab.color) / 255.0
            show[lab.value] = True
    mask = show[labels2d]
    rgb[mask] = (1 - alpha) * rgb[mask] + alpha * colors[labels2d[mask]]
    return rgb



    # RAS array (x, y, z) -> rows anterior at the top, columns subject's right on the left


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).parent / "figures" / "phantoms.png"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--modality", default="mr")
    args = parser.parse_args(argv)

    fractions = (0.15, 0.5, 0.85)
    fig, axes = plt.subplots(3, 5, figsize=(30, 15), gridspec_kw={"width_ratios": [1, 1, 1, 1, 0.8]})
    for row, region in enumerate(("thigh", "calf", "hip")):
        ph = make_phantom(region, args.modality, shape=SHAPES[region], seed=args.seed)
        img, lab = np.asarray(ph.image), np.asarray(ph.labels)
        sx, sy, sz = ph.info["spacing"]
        nz = img.shape[2]
        ks = [int(f * (nz - 1)) for f in fractions]
        for col, k in enumerate([ks[1]] + ks):
            ax = axes[row, col]
            # radiological view: anterior up, subject's right on the viewer's left
            image2d = img[:, :, k].T[::-1, ::-1]
            labels2d = lab[:, :, k].T[::-1, ::-1]
            shown = _overlay(image2d, labels2d, alpha=0.0 if col == 0 else 0.55)
            ax.imshow(shown, aspect=sy / sx, interpolation="nearest")
            z_mm = ph.affine[2, 2] * k + ph.affine[2, 3]
            ax.set_title(f"{region} axial z={z_mm:.0f} mm" + (" (image)" if col == 0 else ""))
            ax.text(2, 10, "R", color="yellow", fontsize=12, weight="bold")
            ax.text(image2d.shape[1] - 12, 10, "L", color="yellow", fontsize=12, weight="bold")
            ax.axis("off")
        # coronal through the right femur / tibia axis point
        leg = ph.info["legs"]["right"]
        point = leg.get("femur_axis_point_mm") or leg.get("tibia_axis_point_mm")
        j = int(round((point[1] - ph.affine[1, 3]) / ph.affine[1, 1]))
        ax = axes[row, 4]
        image2d = img[:, j, :].T[::-1, ::-1]
        labels2d = lab[:, j, :].T[::-1, ::-1]
        ax.imshow(_overlay(image2d, labels2d), aspect=sz / sx, interpolation="nearest")
        ax.set_title(f"{region} coronal y={point[1]:.0f} mm")
        ax.text(2, 6, "R", color="yellow", fontsize=12, weight="bold")
        ax.axis("off")
    fig.suptitle(f"procedural phantoms, tools.phantoms ({args.modality.upper()}, seed {args.seed}); "
                 "radiological view (subject's right on the left); colours = ontology label colours", fontsize=13)
    fig.tight_layout()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=60)
    return out


if __name__ == "__main__":
    print(main())
