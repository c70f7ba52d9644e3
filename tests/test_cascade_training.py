"""The general ``lower_limb_35`` configuration trains and predicts end to end on a small calf
phantom (few iterations), in one process and under ``torchrun`` with two CPU processes (gloo)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from muscle_pipeline.cascade import load_cascade
from muscle_pipeline.cascade.model import right_value
from muscle_pipeline.cascade.training import CascadeTrainer, load_side_cases
from muscle_pipeline.labels import structure, value_of
from muscle_pipeline.metrics import dice
from tools.phantoms import make_phantom

REPO = Path(__file__).resolve().parents[1]
MUSCLES = ["gastrocnemius_medial_head", "soleus", "tibialis_anterior"]


@pytest.fixture(scope="module")
def phantom_entry(tmp_path_factory) -> dict:
    """A coarse bilateral calf phantom (6 x 6 x 20 mm) with three labelled muscles per leg, on disk."""
    folder = tmp_path_factory.mktemp("phantom")
    ph = make_phantom("calf", "mr", shape=(48, 28, 16), seed=1, muscles=MUSCLES)
    affine = np.asarray(ph.image.affine, float)
    nib.save(nib.Nifti1Image(np.asarray(ph.image, np.float32), affine), str(folder / "image.nii.gz"))
    nib.save(nib.Nifti1Image(np.asarray(ph.labels, np.uint8), affine), str(folder / "labels.nii.gz"))
    label_map = {str(value_of(f"{m}_{side}")): f"{m}_{side}" for m in MUSCLES for side in ("right", "left")}
    return {"image": str(folder / "image.nii.gz"), "label": str(folder / "labels.nii.gz"),
            "label_map": label_map, "sides": "both"}


def narrowed_bundle(root: Path, muscles: list[str], stage1_spacing, stage2_spacing) -> Path:
    """``bundles/lower_limb_35`` copied to ``root`` and narrowed to ``muscles``, coarse grids, tiny U-Nets."""
    shutil.copytree(REPO / "bundles" / "lower_limb_35", root, ignore=shutil.ignore_patterns("models", "eval"))
    path = root / "configs" / "inference.json"
    config = json.loads(path.read_text())
    groups: dict[str, list[str]] = {}
    for m in muscles:
        groups.setdefault(structure(m).group, []).append(m)
    config.update({
        "structures": muscles, "groups": groups, "stage1_spacing": stage1_spacing,
        "stage2_spacing": stage2_spacing, "stage1_roi": [16, 16, 16], "bias_correction": None, "n_jitter": 2,
    })
    for key in ("stage1_network", "stage2_network"):
        config[key].update({"channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 0})
    path.write_text(json.dumps(config, indent=1))
    return root


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory) -> Path:
    """``bundles/lower_limb_35`` narrowed to the phantom's muscles."""
    return narrowed_bundle(tmp_path_factory.mktemp("bundle") / "lower_limb_35", MUSCLES, [12.0, 12.0, 20.0], [6.0, 6.0, 20.0])


def test_lower_limb_35_trains_and_predicts_on_a_phantom(tiny_bundle, phantom_entry, tmp_path):
    from monai.utils import set_determinism

    # 30 iterations were not enough: the soleus Dice ranged 0.0-0.5 with the seed (a fresh CI
    # clone failed the floor); at 100 it was still 0.004-0.69 with the trainer's seed. At 150
    # seeds 0-3 gave 0.63-0.72 on both legs. The trainer seeds its weights and augmentation, so a
    # failure means the pipeline changed, not the draw or the tests that ran before.
    set_determinism(seed=0)
    train_config = ConfigParser()
    train_config.read_config(str(tiny_bundle / "configs" / "train.json"))
    trainer = CascadeTrainer(tiny_bundle, [phantom_entry], train_config.get_parsed_content("augmentation_stage1"),
                             train_config.get_parsed_content("augmentation_stage2"), stage1_iterations=150,
                             stage2_iterations=150, lr=0.01, max_patch=(32, 32, 16), output_dir=str(tmp_path))
    written = trainer.run("all")
    assert {p.name for p in written} == {"stage1.pt"} | {f"stage2_{m}.pt" for m in MUSCLES}
    meta = json.loads((tmp_path / "cascade.json").read_text())
    assert set(meta["patch_sizes"]) == set(MUSCLES) and set(meta["priors"]["relative"]) == set(MUSCLES)

    model = load_cascade(tiny_bundle, models_dir=tmp_path)
    right, left_mirrored = load_side_cases(phantom_entry)
    for image, labels in (right, left_mirrored):
        pred = np.asarray(model.predict(image))
        assert pred.shape == tuple(image.shape[1:])
        assert set(np.unique(pred)) <= {0} | {right_value(m) for m in MUSCLES}
    # an easy phantom: the largest muscle is found after a few dozen iterations
    soleus = dice(pred, np.asarray(labels[0]), right_value("soleus"))
    set_determinism(seed=None)
    assert soleus > 0.3, soleus


def test_multi_gpu_train_config_runs_under_torchrun_with_gloo(tiny_bundle, phantom_entry, tmp_path):
    configs = tiny_bundle / "configs"
    override = tmp_path / "data.json"
    override.write_text(json.dumps({"dataset": [phantom_entry]}))
    out = tmp_path / "models"
    torchrun = Path(sys.executable).parent / "torchrun"
    cmd = [str(torchrun), "--nproc_per_node=2", "--master_port=29533", "-m", "monai.bundle", "run",
           "--config_file", f"['{configs / 'train.json'}','{configs / 'multi_gpu_train.json'}','{override}']",
           "--meta_file", str(configs / "metadata.json"), "--logging_file", str(configs / "logging.conf"),
           "--bundle_root", str(tiny_bundle), "--output_dir", str(out),
           "--trainer#stage1_iterations", "1", "--trainer#stage2_iterations", "1", "--trainer#max_patch", "[32,32,16]"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "stage1.pt").is_file() and all((out / f"stage2_{m}.pt").is_file() for m in MUSCLES)
    state = torch.load(out / "stage1.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in state)  # saved without the DDP wrapper


def test_train_command_runs_a_bundle_with_overrides_and_writes_outside_it(tiny_bundle, phantom_entry, tmp_path, capsys):
    """``muscle-pipeline train``: train.json through MONAI's runner, every --set reaches the
    config (stage=1 trains stage 1 only; the iteration counts and data list are ours), weights go
    to -o and the bundle folder gets none."""
    import logging

    from muscle_pipeline.cli import main

    out = tmp_path / "weights"
    # MONAI's runner applies the bundle's logging.conf (a handler on the stream pytest captures for
    # this test only): put the root logger back afterwards, or later tests log into a closed stream
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        status = main(["train", str(tiny_bundle), "-o", str(out), "--set", "stage=1",
                       "--set", f"dataset=[{phantom_entry!r}]", "--set", "trainer#stage1_iterations=3",
                       "--set", "trainer#max_patch=[32, 32, 16]"])
    finally:
        root.handlers[:], root.level = handlers, level
    assert status == 0
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["cascade.json", "stage1.pt"]
    assert not (tiny_bundle / "models").exists()
    assert str(out) in capsys.readouterr().out


def test_train_api_names_what_it_cannot_find(tmp_path, monkeypatch):
    import muscle_pipeline as mp
    from muscle_pipeline.cli import main
    from muscle_pipeline.errors import ModelError

    with pytest.raises(ModelError, match="no config 'no_such_config'"):
        mp.train("lower_limb_35", tmp_path / "out", configs=["no_such_config"])
    monkeypatch.chdir(tmp_path)  # a folder named like a bundle is not a bundle name
    (tmp_path / "calf_mri" / "configs").mkdir(parents=True)
    with pytest.raises(ModelError, match="no shipped bundle"):
        mp.train("calf_mri_x", tmp_path / "out")
    assert main(["train", "lower_limb_35", "--set", "no_equals_sign"]) == 1
