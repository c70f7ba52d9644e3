"""docs/figures/qmritools_calf_labels.png: mid slice of the QMRITools calf half, label numbers at
centroids, axes in RAS world mm from the header (not array position)."""
import sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import nibabel as nib
import numpy as np
from scipy import ndimage

from pathlib import Path

folder = str(Path(__file__).resolve().parents[3] / "shared/data/qmritools/calf_dti_labeled_half") + "/"
img, lab = nib.load(folder + "twoLegs_x80-160.nii.gz"), nib.load(folder + "labels_x80-160.nii.gz")
A = img.affine
assert np.allclose(A, lab.affine) and nib.aff2axcodes(A) == ("R", "A", "S")
image = np.asarray(img.dataobj, dtype=np.float32)
labels = np.asarray(lab.dataobj).astype(int)
k = 12
names = {13: "gastrocnemius medial head", 15: "gastrocnemius lateral head", 17: "soleus",
         19: "tibialis anterior", 21: "fibulari", 23: "phalangeal extensors (EDL)", 25: "tibialis posterior"}
nx, ny, _ = image.shape
xs, ys = A[0, 0] * np.arange(nx) + A[0, 3], A[1, 1] * np.arange(ny) + A[1, 3]
extent = (xs[0] - 1.5, xs[-1] + 1.5, ys[0] - 1.5, ys[-1] + 1.5)
colours = dict(zip(names, plt.get_cmap("tab10").colors))
fig, axes = plt.subplots(1, 2, figsize=(13, 6.6))
for ax, overlay in zip(axes, (False, True)):
    ax.imshow(image[:, :, k].T, cmap="gray", origin="lower", extent=extent, vmax=np.percentile(image, 99.5))
    for v, name in names.items():
        m = labels[:, :, k] == v
        if overlay:
            rgba = np.zeros(m.T.shape + (4,)); rgba[m.T] = (*colours[v], 0.45)
            ax.imshow(rgba, origin="lower", extent=extent, interpolation="nearest")
        ax.contour(xs, ys, m.T.astype(float), levels=[0.5], colors=[colours[v]], linewidths=1.2)
        ci, cj = ndimage.center_of_mass(m)
        ax.text(A[0, 0] * ci + A[0, 3], A[1, 1] * cj + A[1, 3], str(v), color="yellow", fontsize=12,
                ha="center", va="center", weight="bold")
    ax.set_xlim(0, 150); ax.set_ylim(-95, 60)
    ax.set_xlabel("x, RAS mm from the header (+x = subject's right = lateral for this leg)")
    ax.set_ylabel("y, RAS mm (+y = anterior)")
axes[0].annotate("tibia (dark)", (78, 28), (15, 48), color="w", arrowprops=dict(color="w", arrowstyle="->"))
axes[0].annotate("fibula (dark)", (104, -10), (118, -75), color="w", arrowprops=dict(color="w", arrowstyle="->"))
axes[0].annotate("", (2, -88), (40, -88), arrowprops=dict(color="c", arrowstyle="->"))
axes[0].text(42, -89, "medial: towards the other leg (x<0)", color="c", va="center", fontsize=9)
axes[0].set_title(f"image (b0 DTI), slice k={k}, z={A[2, 2] * k + A[2, 3]:.0f} mm")
axes[1].set_title("labels 13-25 (odd values; this half is the RIGHT leg)")
axes[1].legend(handles=[matplotlib.patches.Patch(color=colours[v], label=f"{v}: {n}") for v, n in names.items()],
               loc="upper left", fontsize=8, framealpha=0.8)
fig.suptitle("QMRITools calf_dti_labeled_half (x>=80 half): label numbers at their centroids", fontsize=12)
fig.tight_layout(rect=(0, 0, 1, 0.96))
fig.savefig(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).with_suffix(".png"), dpi=80)
