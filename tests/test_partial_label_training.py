"""One cascade trained from a mixed data list: the real calf (7 calf muscles labelled) and the
real pelvis CT (TotalSegmentator: gluteals and iliopsoas labelled), with the partial-label loss
of train.json. Each dataset only teaches what it labels: the calf's missing hip muscles and the
CT's missing calf muscles are not pushed to background.

The CT is lower_limb_35's CT *test* scan: these few-iteration weights go to a temporary folder of
a narrowed copy of the bundle and are thrown away; no shipped model learns from it.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from monai.bundle import ConfigParser

from muscle_pipeline.cascade.training import CascadeTrainer, annotated_groups, annotated_structures
from muscle_pipeline.losses import PartialLabelLoss
from test_cascade_training import narrowed_bundle

from conftest import SHARED_DATA

CALF = ["gastrocnemius_medial_head", "soleus", "tibialis_anterior"]
HIP = ["gluteus_maximus", "gluteus_medius", "iliacus", "psoas_major"]

calf_entry = {"name": "real calf", "image": str(SHARED_DATA / "qmritools/calf_dti_labeled_half/twoLegs_x80-160.nii.gz"),
              "label": str(SHARED_DATA / "qmritools/calf_dti_labeled_half/labels_x80-160.nii.gz"),
              "label_map": "qmritools_calf", "sides": "right"}
ct_entry = {"name": "pelvis CT", "image": str(SHARED_DATA / "totalsegmentator/ct_abdomen_pelvis/example_ct.nii.gz"),
            "label": str(SHARED_DATA / "totalsegmentator/ct_abdomen_pelvis/example_seg_fast_force_split.nii.gz"),
            "label_map": "totalsegmentator_total", "sides": "both"}


@pytest.fixture(scope="module")
def mixed_bundle(tmp_path_factory):
    # the real scans are required, not optional: a missing ../shared/data fails here
    assert (SHARED_DATA / "totalsegmentator").is_dir() and (SHARED_DATA / "qmritools").is_dir(), SHARED_DATA
    return narrowed_bundle(tmp_path_factory.mktemp("bundle") / "lower_limb_35", CALF + HIP,
                           [12.0, 12.0, 12.0], [6.0, 6.0, 8.0])


def train_config(bundle) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "train.json"))
    return parser


def test_each_dataset_annotates_what_its_map_labels():
    groups = {"posterior_leg_superficial": ["gastrocnemius_medial_head", "soleus"], "anterolateral_leg": ["tibialis_anterior"],
              "gluteal": ["gluteus_maximus", "gluteus_medius"], "iliopsoas": ["iliacus", "psoas_major"]}
    calf, ct = annotated_structures(calf_entry), annotated_structures(ct_entry)
    assert {"soleus", "tibialis_anterior"} <= calf and "gluteus_maximus" not in calf
    assert {"gluteus_maximus", "iliopsoas"} <= ct and "soleus" not in ct
    assert annotated_groups(calf, groups).tolist() == [True, True, True, False, False]
    # TotalSegmentator's iliopsoas covers iliacus + psoas major: the whole stage-1 group is labelled
    assert annotated_groups(ct, groups).tolist() == [True, False, False, True, True]
    assert annotated_structures({"synthesize": True, "label": "atlas.nii.gz"}) is None  # the atlas labels all


def test_calf_and_hip_train_one_cascade_with_the_partial_label_loss(mixed_bundle, tmp_path):
    config = train_config(mixed_bundle)
    config["learning_rate"] = 0.005  # an override reaches the optimizer that train.json builds
    loss = config.get_parsed_content("loss")
    assert isinstance(loss, PartialLabelLoss)  # train.json owns the loss
    trainer = CascadeTrainer(mixed_bundle, [calf_entry, ct_entry], stage1_iterations=150, stage2_iterations=40,
                             loss=loss, optimizer=config.get_parsed_content("optimizer"),
                             lr_scheduler=config.get_parsed_content("lr_scheduler"), probe_samples=3,
                             max_patch=(24, 24, 16), seed=0, output_dir=str(tmp_path))
    # the calf case's stage-1 target has no hip group and the CT's none of the calf: they are "unlabelled"
    calf_case = next(c for c in trainer.cases if c["source"] == "real calf")
    ct_case = next(c for c in trainer.cases if c["source"] == "pelvis CT")
    assert calf_case["labelled1"].tolist() == [True, True, True, False, False]
    assert ct_case["labelled1"].tolist() == [True, False, False, True, True]
    assert set(np.unique(trainer.group_target(calf_case))) <= {0, 1, 2}
    assert set(np.unique(trainer.group_target(ct_case))) == {0, 3, 4}  # iliopsoas voxels count for their group

    written = trainer.run("1") + [trainer.train_stage2("soleus"), trainer.train_stage2("gluteus_maximus")]
    assert [p.name for p in written] == ["stage1.pt", "stage2_soleus.pt", "stage2_gluteus_maximus.pt"]
    # loss on each dataset's own labels, same fixed samples before and after: both went down
    for what, sources in (("stage 1", ["real calf", "pelvis CT"]),):
        probes = trainer.probe_losses[what]
        assert set(probes) == set(sources)
        for source in sources:
            assert probes[source]["after"] < 0.9 * probes[source]["before"], (what, source, probes[source])
    stage2 = {k: v for k, v in trainer.probe_losses.items() if k.startswith("stage 2")}
    assert {next(iter(p)) for p in stage2.values()} == {"real calf", "pelvis CT"}
    for probes in stage2.values():
        (source, d), = probes.items()
        assert d["after"] < d["before"], (source, d)
    # nobody labels iliacus and psoas major one by one: no stage-2 model, said so in cascade.json
    meta = json.loads((tmp_path / "cascade.json").read_text())
    assert set(meta["untrained"]) == {"iliacus", "psoas_major"}
    assert "iliacus" not in trainer.trainable_structures()


def test_a_loss_that_cannot_ignore_unlabelled_structures_is_refused(mixed_bundle, tmp_path):
    from monai.losses import DiceCELoss

    trainer = CascadeTrainer(mixed_bundle, [calf_entry, ct_entry], stage1_iterations=1, probe_samples=0,
                             loss=DiceCELoss(to_onehot_y=True, softmax=True), output_dir=str(tmp_path))
    trainer._cases = [c for c in trainer.cases if c["source"] == "real calf"]
    with pytest.raises(ValueError, match="PartialLabelLoss"):
        trainer.train_stage1()
