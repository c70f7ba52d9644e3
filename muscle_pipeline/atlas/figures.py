"""Figures of the completed atlas and of synthetic samples for docs/atlas.md.

    python -m muscle_pipeline.atlas.figures [--spacing 2] [--cache cache/atlas] [--out docs/images]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from muscle_pipeline import labels as ontology


def colour_lut() -> np.ndarray:
    """(256, 3) uint8 RGB per label value (ontology colours; generation-only values grey)."""
    lut = np.zeros((256, 3), np.uint8)
    for lab in ontology.all_labels():
        lut[lab.value] = lab.color
    lut[200:203] = [(120, 120, 120), (90, 160, 200), (60, 60, 90)]
    return lut


def _axial_levels(labels: np.ndarray) -> list[int]:
    """Axial indices through the hip, mid-thigh, knee-ish and mid-calf of a leg/scene."""
    z = np.flatnonzero((labels > 0).any((0, 1)))
    return [int(z[0] + f * (z[-1] - z[0])) for f in (0.82, 0.62, 0.3)]


def leg_figure(leg, path: str | Path, title: str) -> None:
    """Coronal slice through the femur + three axial slices, labels coloured; radiological view
    (subject's right on the image left), PNG at ``path``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lab = leg.labels
    rgb = colour_lut()[lab]
    femur = np.isin(lab, [ontology.value_of("femur_left"), ontology.value_of("femur_right")])
    y = int(np.argwhere(femur)[:, 1].mean()) if femur.any() else lab.shape[1] // 2
    sp = leg.spacing
    fig, axes = plt.subplots(1, 4, figsize=(14, 7), gridspec_kw={"width_ratios": [1.2, 1, 1, 1]})
    axes[0].imshow(rgb[::-1, y, :].transpose(1, 0, 2), origin="lower", aspect=sp[2] / sp[0])
    axes[0].set_title(f"coronal y={y}")
    for ax, z in zip(axes[1:], _axial_levels(lab)):
        ax.imshow(rgb[::-1, ::-1, z].transpose(1, 0, 2), aspect=sp[1] / sp[0])
        ax.set_title(f"axial z={z}")
        axes[0].axhline(z, color="w", lw=0.5)
    for ax in axes:
        ax.set_xticks([]), ax.set_yticks([])
    fig.suptitle(f"{title} (radiological view: subject's right on the image left; anterior up)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def synthesis_figure(scene, path: str | Path, seed: int = 0) -> None:
    """Montage: label map and synthetic MR fat-bright, MR fat-dark, CT, thick-slice low-res."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch
    from monai.data import MetaTensor

    from muscle_pipeline.transforms.synthesis import SynthesizeImage

    lab = MetaTensor(torch.from_numpy(scene.labels[None].astype(np.int16)), affine=torch.as_tensor(scene.affine))
    setups = [("MR fat-bright", dict(modality="mr", mr_mode="fat_bright", thick_prob=0.0)),
              ("MR fat-dark", dict(modality="mr", mr_mode="fat_dark", thick_prob=0.0)),
              ("CT (HU, window -200..300)", dict(modality="ct", thick_prob=0.0)),
              ("MR thick slices (8 mm axial)", dict(modality="mr", mr_mode="fat_bright", thick_prob=1.0,
                                                   thick_range=(8.0, 8.0), thick_axis=2))]
    images = []
    for i, (name, kw) in enumerate(setups):
        t = SynthesizeImage(**kw)
        t.set_random_state(seed + i)
        images.append((name, np.asarray(t(lab))[0]))
    levels = _axial_levels(scene.labels)
    y = scene.labels.shape[1] // 2
    sp = scene.spacing
    fig, axes = plt.subplots(2, 5, figsize=(17, 9), gridspec_kw={"height_ratios": [2.2, 1]})
    rgb = colour_lut()[scene.labels]
    panels = [("labels", rgb, None)] + [(n, im, (-200, 300) if "CT" in n else None) for n, im in images]
    for col, (name, vol, window) in enumerate(panels):
        cor = vol[::-1, y, :].swapaxes(0, 1)
        ax = vol[::-1, ::-1, levels[1]].swapaxes(0, 1)
        kw = {} if vol.ndim == 4 else dict(cmap="gray", vmin=window[0] if window else 0,
                                           vmax=window[1] if window else np.percentile(vol, 99.5))
        axes[0, col].imshow(cor, origin="lower", aspect=sp[2] / sp[0], **kw)
        axes[1, col].imshow(ax, aspect=sp[1] / sp[0], **kw)
        axes[0, col].set_title(name)
    for a in axes.ravel():
        a.set_xticks([]), a.set_yticks([])
    fig.suptitle("Synthetic samples from one completed atlas scene (coronal; axial mid-thigh)")
    fig.tight_layout()
    fig.savefig(path, dpi=70)
    plt.close(fig)


def main(argv=None) -> None:
    from muscle_pipeline.atlas import complete_subject

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--spacing", type=float, default=2.0)
    p.add_argument("--cache", default=None)
    p.add_argument("--out", default="docs/images")
    p.add_argument("--no-synthesis", action="store_true")
    a = p.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    for subject in ("VHF", "VHM"):
        c = complete_subject(subject, spacing=a.spacing, cache_dir=a.cache)
        for side, leg in c.legs.items():
            leg_figure(leg, out / f"atlas_{subject}_{side}.png", f"{subject} {side} leg, completed, {a.spacing:g} mm")
        if not a.no_synthesis and subject == "VHM":
            synthesis_figure(c.scene, out / "atlas_synthesis_samples.png")
        print(subject, c.info)


if __name__ == "__main__":
    main()
