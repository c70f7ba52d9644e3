"""Make docs/images/architecture.png: the data flow of muscle_pipeline in one picture, from the
input scan (or photo) to the files of the output folder, with the module doing each step.

    .venv/bin/python docs/make_architecture_figure.py [--out docs/images/architecture.png]

Boxes and arrows only (matplotlib, no data, a second to run); docs/architecture.md explains it.
Edit the STAGES / boxes below when the code's flow changes, and re-run.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

SCAN, MODEL, PHOTO, OUT = "#dbe9f6", "#fde9c9", "#e3f1dc", "#efe3f3"

# Stage names on the left margin at the top of each band; the boxes below sit in these bands.
STAGES = [
    ("input", 99.0),
    ("reading &\ndiscovery", 91.5),
    ("recognition\n& routing", 81.0),
    ("legs", 70.5),
    ("pre-\nprocessing", 61.5),
    ("model", 51.0),
    ("post-\nprocessing", 37.0),
    ("outputs", 21.5),
]

L, M, P = (12, 28), (42, 28), (73, 26.5)  # left / middle column of the scan path, photo column (x, width)
W = (12, 58)  # both scan columns

# (x, width, y_top, height, colour, title, body)
BOXES = {
    "scan": (*W, 99, 5, SCAN, "scan file or folder",
             "DICOM series (also multi-frame, compressed), NIfTI, NRRD, MHA; folders searched recursively"),
    "photo": (*P, 99, 5, PHOTO, "photo, folder of photos or video",
              "muscle-pipeline photo;  photo --serve (Gradio)"),
    "discover": (*L, 91.5, 8, SCAN, "io.discover",
                 "one case per DICOM series or file,\nstable case id; skipped files listed"),
    "read": (*M, 91.5, 8, SCAN, "io.read  (inside batch.run_batch)",
             "MetaTensor (X, Y, Z) on the scan's own grid,\nvoxel -> RAS mm affine; next case read ahead;\n"
             "per-case lock, staged temporary folder"),
    "photo_read": (*P, 91.5, 8, PHOTO, "photo.infer / photo.video",
                   "PhotoSegmenter: a PIL image,\nor video frames (imageio)"),
    "recognise": (*L, 81, 8, SCAN, "recognition.recognize_scan",
                  "modality (DICOM tag, else -1000 HU air),\nregion per slice (foot ... hip, none),\nlegs present"),
    "route": (*M, 81, 8, SCAN, "routing  (api.ModelPicker)",
              "bundle coverage (metadata.json) -> the model\nfor --model auto, or check the named one;\n"
              "none fits: REJECTED (--force segments)"),
    "legs": (*W, 70.5, 6.5, SCAN, "segmentation.segment_image  (transforms.legs, transforms.region)",
             "split_legs: one crop per leg, side from world x (never array order); side check from the bones\n"
             "MirrorToRight: left legs mirrored, so a model only ever sees a right leg"),
    "pre_cascade": (*L, 61.5, 8, MODEL, "CascadeModel.preprocess",
                    "Orientation RAS, Spacing (stage-2 grid),\nN4 where the bundle enables it,\n"
                    "MR percentiles / CT window"),
    "pre_25d": (*M, 61.5, 8, MODEL, "thigh25d.ThighCTPreprocess",
                "Orientation RAS, femur-axis alignment\n(transforms.femur), 2 mm isotropic,\n"
                "CT window -100..250 HU"),
    "pre_photo": (*P, 61.5, 8, PHOTO, "photo.transforms",
                  "RGB in [0, 1], resized to the size\nthe model was trained at\n(MONAI dictionary transforms)"),
    "cascade": (*L, 51, 11.5, MODEL, "cascade: calf_mri, hip_ct, lower_limb_35",
                "stage 1, cascade.localize: low-res\n3D U-Net -> one box per muscle\n"
                "stage 2, cascade.refine: a 3D U-Net\nper muscle on its crop, 6 jittered\nboxes, sliding window\n"
                "cascade.fuse: max probability wins"),
    "thigh25d": (*M, 51, 11.5, MODEL, "2.5D: thigh_ct_25d",
                 "thigh25d: three 2D U-Nets (sagittal,\ncoronal, axial), each on a slice and\n"
                 "its +-4 mm neighbours (3 channels)\nthigh25d.voting: winner-takes-all\n"
                 "(2D and 3D baselines: same API)"),
    "photo_model": (*P, 51, 11.5, PHOTO, "photo: gym_photo",
                    "photo.network: MONAI FlexibleUNet,\nResNet-34 encoder; classes background,\n"
                    "biceps, triceps, calf (activated);\nint8-packed demo weights"),
    "post_model": (*W, 37, 5.5, MODEL, "postprocess  (inside the model, on the leg crop's grid)",
                   "cascade: largest component, closing, hole filling;  2.5D: largest component and one\n"
                   "resampling back onto the crop  ->  uint8 RIGHT-side ontology values"),
    "post_legs": (*W, 29.5, 5.5, SCAN, "segmentation.segment_image",
                  "MirrorToRight.inverse: un-mirrored, left legs get LEFT values (+100);\n"
                  "merge_legs -> ONE label map on exactly the input's grid and affine"),
    "post_photo": (*P, 37, 13, PHOTO, "photo.infer postprocessing",
                   "softmax; Invertd: probabilities\nresized back to the photo's own\nsize; argmax"),
    "out_case": (*W, 21.5, 12, OUT, "<out>/<case_id>/  (api, outputs: staged, renamed when whole)",
                 "segmentation.nii.gz  label map on the input grid  (io.write)\n"
                 "labels.json + ITK-SNAP / Slicer tables  (labels)\n"
                 "volumes.csv  mL, cut-by-field-of-view flag  (quantify)\n"
                 "qc.png  axial montage + coronal, labels overlaid  (qc)\n"
                 "segmentation.dcm  DICOM-SEG for DICOM inputs  (io.dicom_seg)\n"
                 "report.json  recognition, model + weights hash, timings, warnings (last)"),
    "out_photo": (*P, 21.5, 12, OUT, "photo outputs",
                  "NAME_mask.png  class per pixel\nNAME_overlay.png  coloured muscles\n"
                  "summary.csv  activated share\nlabels.json;  for a video:\nNAME_overlay.mp4, NAME_frames.csv"),
}

ARROWS = [
    ("scan", "discover"), ("discover", "read", "h"), ("read", "recognise"), ("recognise", "route", "h"),
    ("route", "legs"), ("legs", "pre_cascade"), ("legs", "pre_25d"),
    ("pre_cascade", "cascade"), ("pre_25d", "thigh25d"), ("cascade", "post_model"), ("thigh25d", "post_model"),
    ("post_model", "post_legs"), ("post_legs", "out_case"),
    ("photo", "photo_read"), ("photo_read", "pre_photo"), ("pre_photo", "photo_model"), ("photo_model", "post_photo"),
    ("post_photo", "out_photo"),
]


def _box(ax, x, w, y_top, h, colour, title, body):
    ax.add_patch(FancyBboxPatch((x, y_top - h), w, h, boxstyle="round,pad=0.2,rounding_size=0.8",
                                facecolor=colour, edgecolor="#555555", linewidth=1.0))
    if title:
        ax.text(x + 0.6, y_top - 0.5, title, ha="left", va="top", fontsize=9, weight="bold", family="monospace")
    if body:
        ax.text(x + 0.6, y_top - (2.0 if title else 0.5), body, ha="left", va="top", fontsize=8.6, linespacing=1.3)


def _arrow(ax, a, b, how="v"):
    xa, wa, ya, ha = BOXES[a][:4]
    xb, wb, yb, hb = BOXES[b][:4]
    if how == "h":  # left box's right edge -> right box's left edge, at mid height of the lower one
        y = min(ya - ha / 2, yb - hb / 2)
        start, end = (xa + wa + 0.2, y), (xb - 0.2, y)
    else:  # bottom of a -> top of b, at the centre of their horizontal overlap
        lo, hi = max(xa, xb), min(xa + wa, xb + wb)
        x = (lo + hi) / 2 if hi > lo else xb + wb / 2
        start, end = (x, ya - ha - 0.2), (x, yb + 0.25)
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=12, color="#333333", linewidth=1.1))


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).parent / "images" / "architecture.png"))
    args = parser.parse_args(argv)

    fig, ax = plt.subplots(figsize=(15, 15))
    ax.set_xlim(0, 100)
    ax.set_ylim(2, 102.5)
    ax.axis("off")
    for i, (name, y) in enumerate(STAGES):
        bottom = STAGES[i + 1][1] if i + 1 < len(STAGES) else 5.5
        if i % 2 == 0:
            ax.axhspan(bottom + 1.2, y + 1.2, color="#f2f2f2", zorder=-1)
        ax.text(0.5, y - 0.3, name, ha="left", va="top", fontsize=11, weight="bold", color="#444444")
    for x, w, y, h, colour, title, body in BOXES.values():
        _box(ax, x, w, y, h, colour, title, body)
    for a, b, *how in ARROWS:
        _arrow(ax, a, b, *how)
    ax.text(12.4, 63.2, "the model: api.load_model -> bundle.load_predictor, from the MONAI bundle's "
            "configs/inference.json and its weights in models/", ha="left", va="center", fontsize=8.6,
            style="italic", color="#7a4b00")
    ax.text(12.4, 8.0, "beside the case folders: batch_report.csv / .json (status, reason, warnings of every case), "
            "cohort_volumes.csv (case x muscle, mL)", ha="left", va="center", fontsize=8.6, style="italic")
    ax.text(50, 101.5, "muscle_pipeline: the data flow (one direction; the CLI and the Python API call the same code)",
            ha="center", va="bottom", fontsize=14, weight="bold")
    legend = [(SCAN, "the 3D job: cases, legs, sides"), (MODEL, "3D models (one leg crop)"),
              (PHOTO, "photos"), (OUT, "files written")]
    for i, (colour, text) in enumerate(legend):
        x = 12 + i * 22
        ax.add_patch(FancyBboxPatch((x, 4.0), 2.2, 1.6, boxstyle="round,pad=0.1", facecolor=colour,
                                    edgecolor="#555555"))
        ax.text(x + 3.2, 4.8, text, va="center", fontsize=9)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80, bbox_inches="tight")
    plt.close(fig)
    return out


if __name__ == "__main__":
    print(main())
