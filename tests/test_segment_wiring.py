"""The segment job's side logic, with the model injected: whatever a model predicts on a
right-looking crop, the job must put it back on the input grid with LEFT values on the
subject's left leg, for any array orientation."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from muscle_pipeline import labels as ontology
from muscle_pipeline.segmentation import segment_image
from tools.phantoms import make_phantom

SOLEUS_R = ontology.value_of("soleus_right")
SOLEUS_L = ontology.value_of("soleus_left")


class BodyModel:
    """Labels every bright voxel of the crop soleus (right value), and records what it saw."""

    structures = ["soleus"]
    modality = "mr"

    def __init__(self):
        self.seen_world_x = []

    def predict(self, image):
        arr = image[0].numpy()
        mask = arr > np.percentile(arr, 60)
        idx = np.argwhere(mask).mean(axis=0)
        self.seen_world_x.append(float((image.affine.numpy() @ np.append(idx, 1.0))[0]))
        return torch.as_tensor(mask.astype(np.uint8) * SOLEUS_R)


def _world_x(labels, affine, value):
    idx = np.argwhere(labels == value)
    return (affine[:3, :3] @ idx.T + affine[:3, 3:4])[0]


@pytest.mark.parametrize("orientation", ["RAS", "LPS", "PIR"])
def test_left_leg_gets_left_values_in_any_orientation(orientation):
    ph = make_phantom(region="calf", modality="mr", shape=(72, 48, 12), orientation=orientation, seed=3)
    model = BodyModel()
    result = segment_image(ph.image, model)
    out = result.labels.numpy()
    affine = ph.image.affine.numpy()
    assert out.shape == tuple(ph.image.shape)
    assert np.allclose(result.labels.affine.numpy(), affine)
    assert {l["side"] for l in result.legs} == {"left", "right"}
    # The model only ever saw right legs: both crops lie at positive world x after mirroring.
    assert len(model.seen_world_x) == 2 and all(x > 0 for x in model.seen_world_x)
    left_x, right_x = _world_x(out, affine, SOLEUS_L), _world_x(out, affine, SOLEUS_R)
    assert left_x.size > 100 and right_x.size > 100
    # Phantom truth: the subject's left leg is at smaller world x; every left value lies there.
    truth = ph.labels.numpy()
    truth_left_x = _world_x(truth, affine, ontology.value_of("tibia_left"))
    truth_right_x = _world_x(truth, affine, ontology.value_of("tibia_right"))
    midline = (truth_left_x.mean() + truth_right_x.mean()) / 2
    assert left_x.max() < midline < right_x.min()
    # timings and progress name each leg by the subject's side, not by how the crop looks (right)
    assert {"model_left", "model_right"} <= set(result.timings)


def test_progress_names_both_legs():
    ph = make_phantom(region="calf", modality="mr", shape=(72, 48, 12), seed=3)
    stages = []
    segment_image(ph.image, BodyModel(), stage=stages.append)
    assert [s for s in stages if s.startswith("segment ")] == ["segment left leg", "segment right leg"]


def test_memory_budget_option_reaches_the_model(monkeypatch, tmp_path):
    """``muscle-pipeline segment --memory-budget-mb`` sets the loaded model's fusion budget."""
    import nibabel as nib

    from muscle_pipeline import api
    from muscle_pipeline.cli import main

    ph = make_phantom(region="calf", modality="mr", shape=(72, 48, 12), seed=3)
    path = tmp_path / "calf.nii.gz"
    nib.save(nib.Nifti1Image(ph.image.numpy(), ph.image.affine.numpy()), path)
    model = BodyModel()
    model.memory_budget_mb = 512.0
    monkeypatch.setattr(api, "load_model", lambda name, device="cpu": model)
    # A 12-slice phantom is too small to recognise; the test is about the budget, so name the model.
    assert main(["segment", str(path), "-o", str(tmp_path / "out"), "--model", "calf_mri", "--force",
                 "--memory-budget-mb", "64", "--quiet"]) == 0
    assert model.memory_budget_mb == 64.0
    assert len(model.seen_world_x) == 2  # both legs went through the model


class EverywhereModel(BodyModel):
    """Labels every voxel of the crop soleus, air included: a model spilling past the skin."""

    def predict(self, image):
        return torch.full(tuple(image.shape[1:]), SOLEUS_R, dtype=torch.uint8)


@pytest.mark.parametrize("orientation,shape", [("RAS", (72, 48, 12)), ("PIR", (48, 12, 72))])
def test_labels_outside_the_body_are_dropped_and_reported(orientation, shape):
    from scipy import ndimage

    from muscle_pipeline.transforms.legs import body_mask

    ph = make_phantom(region="calf", modality="mr", shape=shape, orientation=orientation, seed=3)
    result = segment_image(ph.image, EverywhereModel())
    labelled = result.labels.numpy().reshape(ph.image.shape[-3:]) > 0
    # each leg's outline is found on its own crop, so at the crop borders it may differ from the
    # whole scan's by a voxel
    body = body_mask(ph.image)
    assert not (labelled & ~ndimage.binary_dilation(body)).any()  # nothing in the air
    assert labelled.sum() >= 0.95 * body.sum()  # and the body itself is kept
    assert (ph.labels.numpy().reshape(labelled.shape) > 0)[~labelled].sum() <= 0.01 * labelled.sum()
    spill = [w for w in result.warnings if "outside the body" in w]
    assert len(spill) == 2 and {w.split(" leg")[0] for w in spill} == {"left", "right"}, result.warnings
    assert result.timings["body_outline"] > 0
