"""Training the cascade from the anatomical atlas by synthesis (issue 15, item 3): label scenes
of the completed Visible Human legs, a new synthetic image every draw. Coarse grids and tiny
networks: this checks the wiring and that learning happens, not the model's quality."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.utils import set_determinism

from muscle_pipeline import labels as L
from muscle_pipeline.atlas import training_entries
from muscle_pipeline.cascade.model import right_value
from muscle_pipeline.cascade.training import CascadeTrainer, load_side_cases, structure_lut
from test_cascade_training import narrowed_bundle

# a thigh muscle, a calf muscle and a Ni muscle the atlas draws as two (gemelli -> external_rotators)
MUSCLES = ["vastus_lateralis", "soleus", "external_rotators"]
SPACING = 6.0


@pytest.fixture(scope="module")
def entries(shared_data, tmp_path_factory):
    return training_entries(spacing=SPACING, cache_dir=tmp_path_factory.mktemp("atlas_cache"),
                            root=shared_data / "visible_human_lower_limb")


@pytest.fixture(scope="module")
def atlas_bundle(tmp_path_factory):
    return narrowed_bundle(tmp_path_factory.mktemp("bundle") / "lower_limb_35", MUSCLES, [12.0, 12.0, 12.0], [6.0, 6.0, 6.0])


def test_entries_are_the_four_completed_legs(entries):
    assert [(e["subject"], e["sides"]) for e in entries] == [("VHF", "left"), ("VHF", "right"), ("VHM", "left"), ("VHM", "right")]
    assert all(e["synthesize"] and e["label"].endswith(".nii.gz") for e in entries)


def test_left_leg_scene_looks_like_a_right_leg_and_keeps_its_tissues(entries):
    """A left leg is mirrored in world x and its values become right-side values; fat, skin and
    the generation-only tissues stay (they make the image), so the scene is complete."""
    (scene, labels), = load_side_cases(entries[0])
    assert scene is labels or torch.equal(scene.as_tensor(), labels.as_tensor())
    lab = np.asarray(labels[0])
    values = set(np.unique(lab).tolist())
    assert not any(L.label(v).side == "left" for v in values if 0 < v < 200)
    assert {L.value_of("subcutaneous_fat"), L.value_of("skin"), L.value_of("femur_right")} <= values
    assert any(v >= 200 for v in values)  # cartilage / ligament / other bone, generation only
    # right-leg looking: vastus lateralis lateral (+x in RAS) of the femur, as in a right leg
    affine = np.asarray(labels.affine, float)

    def mean_x(value):
        idx = np.argwhere(lab == value).astype(float)
        return float((idx @ affine[:3, :3].T + affine[:3, 3])[:, 0].mean())

    assert mean_x(L.value_of("vastus_lateralis_right")) > mean_x(L.value_of("femur_right")) + 10


def test_structure_lut_merges_finer_atlas_muscles_into_the_bundle_structure():
    lut = structure_lut(MUSCLES)
    assert lut[L.value_of("gemellus_superior_right")] == right_value("external_rotators")
    assert lut[L.value_of("gemellus_inferior_left")] == right_value("external_rotators") + L.LEFT_OFFSET
    assert lut[L.value_of("vastus_lateralis_right")] == right_value("vastus_lateralis")
    assert lut[L.value_of("subcutaneous_fat")] == 0 and lut[L.value_of("femur_right")] == 0 and lut[200] == 0


def _atlas_trainer(atlas_bundle, entries, tmp_path) -> CascadeTrainer:
    train_config = ConfigParser()
    train_config.read_config(str(atlas_bundle / "configs" / "train.json"))
    return CascadeTrainer(atlas_bundle, entries, train_config.get_parsed_content("augmentation_stage1"),
                          train_config.get_parsed_content("augmentation_stage2"), stage1_iterations=60,
                          stage2_iterations=40, lr=0.01, max_patch=(32, 32, 32), output_dir=str(tmp_path))


def test_synthetic_training_draws_a_new_image_every_time(atlas_bundle, entries, tmp_path):
    """Two draws from the same crop give different images with the same target grid (the fast
    half of the slow training test below)."""
    set_determinism(seed=0)
    trainer = _atlas_trainer(atlas_bundle, entries, tmp_path)
    set_determinism(seed=None)
    crop = trainer.cases[0]["scene1"].as_tensor()
    a = trainer._synthesize(crop, [12.0] * 3, lambda s: s)
    b = trainer._synthesize(crop, [12.0] * 3, lambda s: s)
    assert a["image"].shape == b["image"].shape == crop.shape
    assert not torch.allclose(a["image"], b["image"])
    assert float(a["image"].std()) > 0


@pytest.mark.slow  # 100 training iterations (~15 s); the draws and the command line stay in `make test`
def test_synthetic_training_draws_new_images_and_lowers_the_loss(atlas_bundle, entries, tmp_path):
    set_determinism(seed=0)
    trainer = _atlas_trainer(atlas_bundle, entries, tmp_path)
    # two draws from the same crop give different images with the same target grid
    case = trainer.cases[0]
    crop = case["scene1"].as_tensor()
    a = trainer._synthesize(crop, [12.0] * 3, lambda s: s)
    b = trainer._synthesize(crop, [12.0] * 3, lambda s: s)
    assert a["image"].shape == b["image"].shape == crop.shape
    assert not torch.allclose(a["image"], b["image"])
    assert float(a["image"].std()) > 0

    written = trainer.run(stage=1) + trainer.run(stage=2, muscle="vastus_lateralis")
    set_determinism(seed=None)
    assert {p.name for p in written} == {"stage1.pt", "stage2_vastus_lateralis.pt"}
    for what, losses in trainer.losses.items():
        first, last = np.mean(losses[:10]), np.mean(losses[-10:])
        assert last < 0.9 * first, (what, first, last)


def test_train_atlas_config_runs_from_the_command_line(shared_data, tmp_path):
    """``train.json`` + ``train_atlas.json`` through ``monai.bundle run``: the atlas legs are the
    data list, images are synthesised, weights go where ``--output_dir`` says (by default under
    ``runs/``, never into the shipped bundle)."""
    import subprocess
    import sys

    from test_cascade_training import REPO

    configs = REPO / "bundles" / "lower_limb_35" / "configs"
    parser = ConfigParser()
    parser.read_config([str(configs / "train.json"), str(configs / "train_atlas.json")])
    assert parser["trainer"]["synthesis"] == "@synthesis"
    assert "runs/lower_limb_35_atlas" in parser["output_dir"] and "bundle_root" not in parser["output_dir"]

    out = tmp_path / "weights"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file",
           f"['{configs / 'train.json'}','{configs / 'train_atlas.json'}']", "--meta_file", str(configs / "metadata.json"),
           "--data_root", str(shared_data), "--atlas_cache", str(tmp_path / "cache"), "--atlas_spacing", "6.0",
           "--atlas_subjects", "['VHF']", "--output_dir", str(out), "--stage", "1", "--trainer#stage1_iterations", "2"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "stage1.pt").is_file() and (out / "cascade.json").is_file()
    assert sorted(p.name for p in (tmp_path / "cache").glob("*.nii.gz")) == [
        "VHF_6mm_v1_left.nii.gz", "VHF_6mm_v1_right.nii.gz", "VHF_6mm_v1_scene.nii.gz"]


def test_atlas_and_the_real_calf_train_together_with_partial_labels(shared_data, tmp_path):
    """train.json + train_atlas.json + train_atlas_calf.json: the atlas scenes (every structure
    labelled) and the real DTI calf (7 calf muscles) in one data list, stage 1 told which groups
    the calf labels, the configured loss the partial-label one; a short stage-1 run trains."""
    from muscle_pipeline.losses import PartialLabelLoss
    from test_cascade_training import REPO

    configs = REPO / "bundles" / "lower_limb_35" / "configs"
    parser = ConfigParser()
    parser.read_config([str(configs / name) for name in ("train.json", "train_atlas.json", "train_atlas_calf.json")])
    assert "runs/lower_limb_35_atlas_calf" in parser["output_dir"] and "bundle_root" not in parser["output_dir"]
    parser.update({"data_root": str(shared_data), "atlas_cache": str(tmp_path / "cache"), "atlas_spacing": 6.0,
                   "atlas_subjects": ["VHF"], "output_dir": str(tmp_path / "weights"),
                   "trainer#stage1_iterations": 3, "trainer#probe_samples": 1})
    trainer = parser.get_parsed_content("trainer")
    assert isinstance(trainer.loss, PartialLabelLoss)
    sources = [c["source"] for c in trainer.cases]
    assert sources.count("real DTI calf") == 1 and len(sources) == 3  # the woman's two legs + the calf
    calf = next(c for c in trainer.cases if c["source"] == "real DTI calf")
    labelled = dict(zip(["background", *trainer.groups], calf["labelled1"].tolist()))
    assert labelled["posterior_leg_superficial"] and labelled["anterolateral_leg"]
    assert not labelled["quadriceps"] and not labelled["gluteal"]
    assert all(c["labelled1"].all() for c in trainer.cases if c["source"] != "real DTI calf")
    assert trainer.run("1")[0].name == "stage1.pt"
    assert set(trainer.probe_losses["stage 1"]) == set(sources)


def test_real_augmentation_reaches_real_draws_only(shared_data, tmp_path):
    """train_atlas.json's ``real_augmentation`` (the contrast curve) is applied to draws from real
    scans and never to synthesised ones: synthesis already draws every contrast."""
    from monai.transforms import MapTransform

    from muscle_pipeline.transforms.intensity import RandContrastRemapd
    from test_cascade_training import REPO

    class Recorder(MapTransform):
        def __init__(self):
            super().__init__("image")
            self.calls = 0

        def __call__(self, data):
            self.calls += 1
            return dict(data)

    configs = REPO / "bundles" / "lower_limb_35" / "configs"
    counts = {}
    for name, extra in (("atlas only", ()), ("real calf only", ("train_atlas_calf.json",))):
        parser = ConfigParser()
        parser.read_config([str(configs / n) for n in ("train.json", "train_atlas.json", *extra)])
        parser.update({"data_root": str(shared_data), "atlas_cache": str(tmp_path / "cache"), "atlas_spacing": 6.0,
                       "atlas_subjects": ["VHF"], "output_dir": str(tmp_path / name.replace(" ", "_")),
                       "trainer#stage1_iterations": 2, "trainer#probe_samples": 0})
        if extra:  # the calf without the atlas legs: every draw is real
            parser["dataset"] = "@real_data"
        trainer = parser.get_parsed_content("trainer")
        assert isinstance(trainer.real_aug, RandContrastRemapd)
        trainer.real_aug = Recorder()
        trainer.run("1")
        counts[name] = trainer.real_aug.calls
    assert counts["atlas only"] == 0
    assert counts["real calf only"] == 2 * 2, counts  # 2 iterations of batch 2
