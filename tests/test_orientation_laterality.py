"""Left/right and orientation guarantee: the same physical scan stored in any of the 48 axis
permutations/flips — as NIfTI with the matching affine and as a DICOM series written with
SimpleITK — is segmented by the real job (read_image -> segment_image with the shipped calf_mri
model); brought to RAS the result agrees with the scan as stored, and every LEFT label lies on
the subject's left.

One test per case × format × orientation. ``make test`` runs a representative handful of
orientations (:data:`FAST`: the identity, a flip of each axis, an axis permutation, a permutation
with flips) on the real calf and the phantom; the other 42 are marked ``slow`` and run with
``make test-all``.
"""
from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from muscle_pipeline import labels as ontology
from muscle_pipeline.api import load_model
from muscle_pipeline.io import discover, read_image
from muscle_pipeline.segmentation import segment_image
from tools.phantoms import make_phantom

from orientations import orient, orientation_names, to_ras, write_dicom_series

# Leg-split ties in a perfectly symmetric valley may move a few voxels between legs (measured
# <= 0.2 % on phantoms); everything else must be identical.
MIN_AGREEMENT = 0.995


@pytest.fixture(scope="module")
def model():
    return load_model("calf_mri")


@pytest.fixture(scope="module")
def real_calf(shared_data):
    """The real bilateral calf MRI (QMRITools test_low), every 2nd in-plane voxel and 12 mid
    slices to keep 96 segmentations affordable; int16 so NIfTI and DICOM hold the same values."""
    img = nib.load(shared_data / "qmritools/thigh_calf_unlabeled/test_low.nii.gz")
    cropped = img.slicer[::2, ::2, 10:22]
    return np.asarray(cropped.dataobj).round().astype(np.int16), cropped.affine


@pytest.fixture(scope="module")
def phantom_calf():
    """The calf phantom's 6 middle slices (16 cm of both calves at 4.5 x 4.5 x 26.7 mm): the whole
    32 cm phantom costs 3x the CPU per segmentation and tests nothing more."""
    ph = make_phantom(region="calf", modality="mr", shape=(64, 40, 12), seed=5)
    affine = ph.image.affine.numpy().copy()
    affine[:3, 3] += 3 * affine[:3, 2]  # origin of slice 3
    return (ph.image.numpy()[..., 3:9] * 400).round().astype(np.int16), affine


def _left_right_ok(labels_ras: np.ndarray, affine_ras: np.ndarray) -> tuple[float, float]:
    """World x extent of left-valued and right-valued voxels (RAS: left = smaller x)."""
    left = np.isin(labels_ras, [l.value for l in ontology.all_labels() if l.side == "left"])
    right = np.isin(labels_ras, [l.value for l in ontology.all_labels() if l.side == "right"])
    assert left.any() and right.any(), "both legs must be labelled"
    x = lambda m: (affine_ras[:3, :3] @ np.argwhere(m).T + affine_ras[:3, 3:4])[0]
    return float(x(left).max()), float(x(right).min())


IDENTITY = "p012f000"
#: The fast tier: identity, a flip of each array axis, an axis permutation, a permutation with flips.
FAST = (IDENTITY, "p012f100", "p012f010", "p012f001", "p120f000", "p201f101")
ORIENTATIONS = [pytest.param(name, marks=() if name in FAST else pytest.mark.slow) for name in orientation_names()]


@pytest.fixture(scope="module")
def segment_as(model, tmp_path_factory):
    """``segment_as(case, array, affine, fmt, name)``: store the scan in orientation ``name`` as
    ``fmt`` (``nifti`` or ``dicom``), read and segment it with the real job; labels brought to RAS.
    The identity's result is every other orientation's reference, so it is kept per case and format."""
    references = {}

    def run(case, array, affine, fmt, name):
        if name == IDENTITY and (case, fmt) in references:
            return references[case, fmt]
        arr, aff = orient(array, affine, name)
        folder = tmp_path_factory.mktemp(f"{case}_{fmt}_{name}")
        if fmt == "nifti":
            path = folder / f"{name}.nii.gz"
            nib.save(nib.Nifti1Image(arr, aff), path)
            image = read_image(path)
        else:
            write_dicom_series(arr, aff, folder / name)
            cases = discover(folder)
            assert len(cases) == 1 and cases[0].description == name
            image = read_image(cases[0])
        labels = segment_image(image, model).labels.numpy()
        assert labels.shape == arr.shape  # on the stored grid
        result = to_ras(labels, image.affine.numpy() if fmt == "dicom" else aff)
        if name == IDENTITY:
            references[case, fmt] = result
        return result

    return run


@pytest.mark.parametrize("orientation", ORIENTATIONS)
@pytest.mark.parametrize("fmt", ["nifti", "dicom"])
@pytest.mark.parametrize("case", ["real_calf", "phantom_calf"])
def test_orientation_agrees_and_keeps_sides(case, fmt, orientation, request, segment_as):
    array, affine = request.getfixturevalue(case)
    reference = segment_as(case, array, affine, fmt, IDENTITY)
    result = segment_as(case, array, affine, fmt, orientation)
    agreement = float((result == reference).mean())
    assert agreement >= MIN_AGREEMENT, f"orientation {orientation} agrees on only {agreement:.4f} of voxels"
    left_max_x, right_min_x = _left_right_ok(result, affine)
    assert left_max_x < right_min_x, f"{orientation}: a left label lies right of a right label"
