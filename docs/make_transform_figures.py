"""Make docs/figures/transform_*.png: one before/after picture per preprocessing transform.

    .venv/bin/python docs/make_transform_figures.py [--data /work/shared/data] [--out docs/figures]

Real scans from the shared data folder (see its SOURCES.md) where we have one; the femur
alignment uses a CT thigh phantom because the real CT (TotalSegmentator's abdomen/pelvis
example) ends at the femoral heads and has no femoral shaft. Views follow the radiological
convention: the subject's RIGHT on the viewer's LEFT, anterior / superior up. All volumes used
here are RAS, so array axis 0 runs towards the subject's right. Takes about a minute.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from monai.transforms import LoadImage, Orientation  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tools/ (not installed) from the repository root
from tools.phantoms import make_phantom  # noqa: E402
from muscle_pipeline.transforms import (  # noqa: E402
    CTWindow,
    FemurAxisAlign,
    MirrorToRight,
    MRNormalize,
    N4BiasFieldCorrection,
    body_mask,
    join_stations,
    recognize_region,
    split_legs,
)
from muscle_pipeline.transforms.bias import low_frequency_nonuniformity  # noqa: E402

torch.set_num_threads(2)
REGION_COLOURS = {"foot": "tab:purple", "leg": "tab:green", "thigh": "tab:blue", "hip": "tab:orange", None: "grey"}


def load_ras(path: Path):
    """(1, X, Y, Z) MetaTensor reoriented to RAS (so the display rules below hold)."""
    image = LoadImage(image_only=True, ensure_channel_first=True)(str(path))
    return Orientation(axcodes="RAS")(image)


def spacing(image) -> np.ndarray:
    return np.linalg.norm(np.asarray(image.affine)[:3, :3], axis=0)


def axial(volume: np.ndarray, k: int) -> np.ndarray:
    """Axial slice of an RAS (X, Y, Z) array, rows = anterior up (origin lower), cols = subject's
    right on the viewer's left."""
    return volume[::-1, :, k].T


def coronal(volume: np.ndarray, j: int) -> np.ndarray:
    """Coronal slice of an RAS (X, Y, Z) array, rows = superior up (origin lower), right on left."""
    return volume[::-1, j, :].T


def show(ax, image2d, title, aspect=1.0, cmap="gray", vmin=None, vmax=None, sides=True):
    if vmin is None:
        vmin, vmax = np.percentile(image2d, [1, 99.5])
    handle = ax.imshow(image2d, cmap=cmap, origin="lower", aspect=aspect, vmin=vmin, vmax=vmax,
                       interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    if sides:
        ax.text(0.02, 0.96, "R", transform=ax.transAxes, color="yellow", fontsize=9, va="top")
        ax.text(0.98, 0.96, "L", transform=ax.transAxes, color="yellow", fontsize=9, va="top", ha="right")
    return handle


def save(fig, out: Path, name: str) -> None:
    fig.tight_layout()
    fig.savefig(out / name, dpi=110)
    plt.close(fig)
    print("wrote", out / name)


def figure_n4(data: Path, out: Path) -> None:
    image = load_ras(data / "qmritools" / "thigh_calf_unlabeled" / "test_up.nii.gz")
    corrected, field = N4BiasFieldCorrection(return_field=True)(image)
    before = low_frequency_nonuniformity(image[0], image.affine)
    after = low_frequency_nonuniformity(corrected[0], image.affine)
    k = image.shape[3] // 2
    body = body_mask(image)
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.3))
    vmax = float(np.percentile(image[0].numpy()[body], 99.5))
    show(axes[0], axial(image[0].numpy(), k), f"test_up, slice {k}: before\nnon-uniformity {before:.3f}",
         vmin=0, vmax=vmax)
    field_slice = np.where(axial(body, k), axial(field[0].numpy(), k), np.nan)
    handle = show(axes[1], field_slice, "estimated multiplicative field (body)", cmap="magma",
                  vmin=np.nanmin(field_slice), vmax=np.nanmax(field_slice))
    fig.colorbar(handle, ax=axes[1], fraction=0.046)
    scale = float(np.median(image[0].numpy()[body]) / np.median(corrected[0].numpy()[body]))
    show(axes[2], axial(corrected[0].numpy() * scale, k),
         f"after N4 (x4 shrink, 3x50 it.)\nnon-uniformity {after:.3f}", vmin=0, vmax=vmax)
    save(fig, out, "transform_n4.png")


def figure_mr_normalize(data: Path, out: Path) -> None:
    image = load_ras(data / "qmritools" / "thigh_calf_unlabeled" / "test_up.nii.gz")
    normalised = MRNormalize()(image)
    body = body_mask(image)
    k = image.shape[3] // 2
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.0))
    show(axes[0], axial(image[0].numpy(), k), "before (scanner units)")
    show(axes[1], axial(normalised[0].numpy(), k), "after: 0.5/99.5 % clip, z-score in body", vmin=-2.5, vmax=3)
    axes[2].hist(image[0].numpy()[body] / image[0].numpy()[body].std(), bins=120, alpha=0.5,
                 label="before / std", density=True)
    axes[2].hist(normalised[0].numpy()[body], bins=120, alpha=0.5, label="after", density=True)
    axes[2].set_title("body voxels", fontsize=9)
    axes[2].legend(fontsize=8)
    save(fig, out, "transform_mr_normalize.png")


def figure_ct_window(data: Path, out: Path) -> None:
    ct = load_ras(data / "totalsegmentator" / "ct_abdomen_pelvis" / "example_ct.nii.gz")
    windowed = CTWindow()(ct)
    k = int(ct.shape[3] * 0.25)
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.6))
    handle = show(axes[0], axial(ct[0].numpy(), k), f"example_ct slice {k}: HU, full range",
                  vmin=-1024, vmax=1500)
    fig.colorbar(handle, ax=axes[0], fraction=0.046)
    handle = show(axes[1], axial(windowed[0].numpy(), k), "CTWindow: muscle -100..250 HU -> 0..1", vmin=0, vmax=1)
    fig.colorbar(handle, ax=axes[1], fraction=0.046)
    save(fig, out, "transform_ct_window.png")


def _body_range(volume: np.ndarray) -> tuple[float, float]:
    """0 .. the 99.5th percentile of the brighter half of the voxels (the body, not the air)."""
    return 0.0, float(np.percentile(volume[volume > np.percentile(volume, 50)], 99.5))


def _bone_plane(volume: np.ndarray, threshold: float) -> int:
    return int((volume > threshold).sum(axis=(0, 2)).argmax())


def figure_femur(out: Path) -> None:
    phantom = make_phantom(region="thigh", modality="ct", rotation_deg=(0, 8, 0), shape=(160, 160, 144))
    legs = []  # what thigh_ct_25d does per leg: split, mirror, femur along z (on HU), muscle window
    from muscle_pipeline.segmentation import channel_first

    for crop in split_legs(channel_first(phantom.image)):
        aligned = FemurAxisAlign(femur="largest", modality="ct", keep_size=False)(MirrorToRight()(crop.image, side=crop.side))
        legs.append((crop.side, CTWindow()(aligned), aligned.meta.get("femur_angle_deg")))
    hu = phantom.image.numpy()
    step = spacing(phantom.image)
    fig, axes = plt.subplots(1, 3, figsize=(12, 5.2), gridspec_kw={"width_ratios": [2, 1, 1]})
    show(axes[0], coronal(hu, _bone_plane(hu, 200)),
         "CT thigh phantom, rotated 8 deg about y\n(coronal through the femora, HU)",
         aspect=step[2] / step[0], vmin=-200, vmax=1000)
    for ax, (side, image, angle) in zip(axes[1:], legs):
        vol = image[0].numpy()
        s = spacing(image)
        show(ax, coronal(vol, _bone_plane(vol, 0.99)),
             f"{side} leg{' (mirrored)' if side == 'left' else ''}: femur was\n"
             f"{angle:.1f} deg off z, now along z (window)", aspect=s[2] / s[0], vmin=0, vmax=1,
             sides=False)
    save(fig, out, "transform_femur_align.png")


def figure_legs(data: Path, out: Path) -> None:
    image = load_ras(data / "qmritools" / "thigh_calf_unlabeled" / "test_low.nii.gz")
    crops = split_legs(image)
    k = image.shape[3] // 2
    vol = image[0].numpy()
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.4), gridspec_kw={"width_ratios": [2, 1, 1]})
    vmin, vmax = np.percentile(vol, [1, 99.5])
    show(axes[0], axial(vol, k), f"test_low slice {k} with the two crop boxes", vmin=vmin, vmax=vmax)
    n_x = vol.shape[0]
    for crop, colour in zip(crops, ("tab:cyan", "tab:orange")):
        (x0, y0, _), (x1, y1, _) = crop.info["roi_start"], crop.info["roi_end"]
        # display columns run from world right to left: column = n_x - 1 - x
        axes[0].add_patch(plt.Rectangle((n_x - x1 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, color=colour, lw=1.5))
        axes[0].text(n_x - x1, y1 + 2, f"{crop.side} leg", color=colour, fontsize=9)
    by_side = {c.side: c for c in crops}
    right = by_side["right"].image
    mirrored_left = MirrorToRight()(by_side["left"].image)
    show(axes[1], axial(right[0].numpy(), k), "right leg crop", vmin=vmin, vmax=vmax, sides=False)
    show(axes[2], axial(mirrored_left[0].numpy(), k), "left leg crop, mirrored\n(now a right leg)",
         vmin=vmin, vmax=vmax, sides=False)
    save(fig, out, "transform_leg_split.png")


def _stations(data: Path):
    folder = data / "qmritools" / "wholeleg_stations_unlabeled"
    return [load_ras(folder / f"Join_{i}.nii.gz") for i in range(1, 8)]


def figure_region(stations, out: Path) -> None:
    # Join_1 is the lowest station (feet), Join_7 the highest: draw them bottom to top.
    fig, axes = plt.subplots(len(stations), 1, figsize=(7, 11))
    for row, (ax, station) in enumerate(zip(axes[::-1], stations), start=1):
        result = recognize_region(station)
        vol = station[0].numpy()
        s = spacing(station)
        vmin, vmax = _body_range(vol)
        show(ax, coronal(vol, _bone_plane(vol, np.percentile(vol, 90))), "", aspect=s[2] / s[0], sides=row == 7,
             vmin=vmin, vmax=vmax)
        colour = REGION_COLOURS[result.region]
        ax.set_ylabel(f"Join_{row}", fontsize=9)
        ax.text(1.02, 0.5, f"{result.region}\n{100 * result.confidence:.0f} % of votes", transform=ax.transAxes,
                color=colour, fontsize=10, va="center", fontweight="bold")
    axes[0].set_title("region per station (coronal, Join_7 top ... Join_1 bottom)", fontsize=10)
    fig.subplots_adjust(right=0.78, hspace=0.05)
    fig.savefig(out / "transform_region.png", dpi=110)
    plt.close(fig)
    print("wrote", out / "transform_region.png")


def figure_join(stations, out: Path) -> None:
    joined = join_stations(stations)
    vol = joined.image[0].numpy()
    s = spacing(joined.image)
    fig, ax = plt.subplots(figsize=(6, 12))
    show(ax, coronal(vol, _bone_plane(vol, np.percentile(vol, 90))),
         f"Join_1..7 joined: {vol.shape[2]} slices\noverlaps {', '.join(map(str, joined.overlaps))} slices",
         aspect=s[2] / s[0], vmin=_body_range(vol)[0], vmax=_body_range(vol)[1])
    save(fig, out, "transform_join.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("/work/shared/data"))
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "figures")
    parser.add_argument("--only", nargs="*", help="figure names (n4 mr ct femur legs region join)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    wanted = set(args.only or ["n4", "mr", "ct", "femur", "legs", "region", "join"])
    if "n4" in wanted:
        figure_n4(args.data, args.out)
    if "mr" in wanted:
        figure_mr_normalize(args.data, args.out)
    if "ct" in wanted:
        figure_ct_window(args.data, args.out)
    if "femur" in wanted:
        figure_femur(args.out)
    if "legs" in wanted:
        figure_legs(args.data, args.out)
    if wanted & {"region", "join"}:
        stations = _stations(args.data)
        if "region" in wanted:
            figure_region(stations, args.out)
        if "join" in wanted:
            figure_join(stations, args.out)


if __name__ == "__main__":
    main()
