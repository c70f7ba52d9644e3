"""MONAI's bundle checks on every network of every bundle (issue 17): ``verify_metadata`` against
the local schema, ``verify_net_in_out`` for each network kind, ``ckpt_export`` (TorchScript) of
every shipped checkpoint -- the exported module holds every tensor of the checkpoint and answers
like the eager network inference runs -- and the multi-GPU configs' gloo fallback on CPU.

The checks run in-process through the functions ``python -m monai.bundle <command>`` calls (a
subprocess each would cost ~5 s of imports); one test runs a documented command line as written
(bundles' docs/README.md, "Bundle checks"). ``tests/test_bundles_3d.py`` exports calf stage 1
through the command line and ``tests/test_cascade_training.py`` runs lower_limb_35's
multi_gpu_train under torchrun; here thigh_ct_25d's runs under torchrun.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser, ckpt_export, verify_metadata, verify_net_in_out

REPO = Path(__file__).resolve().parents[1]
BUNDLES = REPO / "bundles"
SCHEMA = BUNDLES / "schemas" / "meta_schema_20240725.json"
CASCADES = ["calf_mri", "hip_ct", "lower_limb_35"]
ALL = [*CASCADES, "thigh_ct_25d", "gym_photo"]
MULTI_GPU = sorted(p.parents[1].name for p in BUNDLES.glob("*/configs/multi_gpu_train.json"))
PYTHON = sys.executable
S2_CHANNELS = "_meta_#network_data_format#outputs#pred#num_channels"


def files(name: str) -> dict[str, str]:
    configs = BUNDLES / name / "configs"
    return {"config_file": str(configs / "inference.json"), "meta_file": str(configs / "metadata.json")}


def metadata(name: str) -> dict:
    return json.loads((BUNDLES / name / "configs" / "metadata.json").read_text())


def inference_config(name: str, **overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(files(name)["config_file"])
    for key, value in overrides.items():
        parser[key] = value
    return parser


def export(name: str, net_id: str, ckpt: Path, out: Path, **override) -> torch.jit.ScriptModule:
    """``python -m monai.bundle ckpt_export NET_ID --ckpt_file CKPT --filepath OUT ...`` of ``name``."""
    ckpt_export(net_id=net_id, filepath=str(out), ckpt_file=str(ckpt), **files(name), **override)
    return torch.jit.load(str(out))


def assert_same_network(scripted: torch.jit.ScriptModule, eager: torch.nn.Module, ckpt_state: dict, x: torch.Tensor):
    """Every checkpoint tensor made it into the export (MONAI's copy skips what does not match,
    silently but for a log line), and the export answers like the eager network."""
    exported = scripted.state_dict()
    assert set(exported) == set(eager.state_dict()) == set(ckpt_state)
    for key, value in ckpt_state.items():
        assert torch.equal(exported[key], value), key
    eager.eval()
    with torch.inference_mode():
        torch.testing.assert_close(scripted(x), eager(x), rtol=1e-4, atol=1e-4)


# --- metadata -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ALL)
def test_metadata_verifies_and_describes_the_networks_of_the_config(name):
    verify_metadata(meta_file=files(name)["meta_file"], filepath=str(SCHEMA))
    meta, parser = metadata(name), inference_config(name)
    fmt = meta["network_data_format"]
    if name in CASCADES:
        assert fmt["outputs"]["pred"]["num_channels"] == len(parser["groups"]) + 1
        assert fmt["inputs"]["image"]["spatial_shape"] == parser["stage1_roi"]
        assert meta["stage2_network_data_format"]["outputs"]["pred"]["num_channels"] == parser["stage2_network#out_channels"]
    elif name == "thigh_ct_25d":
        assert fmt["inputs"]["image"]["num_channels"] == len(parser.get_parsed_content("offsets"))
        assert fmt["outputs"]["pred"]["num_channels"] == len(parser["structures"]) + 1
    else:
        assert fmt["outputs"]["pred"]["num_channels"] == parser["network_def#out_channels"]
        # MONAI reads 'optional_packages_version' as a deprecated name of 'required_packages_version'
        # and overwrites the latter with it (exports then named gradio as the only requirement)
        assert "optional_packages_version" not in meta and "muscle_pipeline" in meta["required_packages_version"]


# --- verify_net_in_out ----------------------------------------------------------------------------

NETS = [(b, "stage1_network") for b in CASCADES] + [(b, "stage2_network_def") for b in CASCADES] + [
    ("thigh_ct_25d", "network_def"), ("gym_photo", "network_def")]


@pytest.mark.parametrize("name,net_id", NETS)
def test_verify_net_in_out(name, net_id):
    if net_id != "stage2_network_def":
        verify_net_in_out(net_id=net_id, device="cpu", **files(name))
        return
    # MONAI reads network_data_format only: stage 2 as the README says (stage 1's patch shape,
    # stage 2's channel count) and with the whole stage-2 format of the metadata (its own shapes)
    stage2 = metadata(name)["stage2_network_data_format"]
    verify_net_in_out(net_id=net_id, device="cpu", **files(name),
                      **{S2_CHANNELS: stage2["outputs"]["pred"]["num_channels"]})
    for n in (1, 3):
        verify_net_in_out(net_id=net_id, device="cpu", n=n, **files(name), **{"_meta_#network_data_format": stage2})
    with pytest.raises(ValueError, match="output channel number"):  # without the override: stage 1's channels
        verify_net_in_out(net_id=net_id, device="cpu", **files(name))


def test_stage2_check_runs_as_documented_on_the_command_line():
    cmd = [PYTHON, "-m", "monai.bundle", "verify_net_in_out", "stage2_network_def", "--device", "cpu",
           "--config_file", files("calf_mri")["config_file"], "--meta_file", files("calf_mri")["meta_file"],
           f"--{S2_CHANNELS}", "2"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "data shape of network is verified with no error" in result.stdout + result.stderr


# --- ckpt_export ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["calf_mri", "hip_ct"])
def test_every_shipped_cascade_checkpoint_exports_to_the_network_inference_runs(name, tmp_path):
    from muscle_pipeline.cascade import load_cascade

    models = BUNDLES / name / "models"
    cascade = load_cascade(name)  # what the bundle's inference builds from the same checkpoints
    stage2 = sorted(models.glob("stage2_*.pt"))
    assert {p.stem[len("stage2_"):] for p in stage2} == set(cascade.refiner.networks)
    torch.manual_seed(0)
    x = torch.rand(2, 1, 16, 16, 24)
    jobs = [("stage1_network", models / "stage1.pt", cascade.localizer.network)]
    jobs += [("stage2_network_def", p, cascade.refiner.networks[p.stem[len("stage2_"):]]) for p in stage2]
    for net_id, ckpt, eager in jobs:
        scripted = export(name, net_id, ckpt, tmp_path / f"{ckpt.stem}.ts")
        assert_same_network(scripted, eager, torch.load(ckpt, weights_only=True), x)


def test_lower_limb_35_exports_freshly_initialised_networks(tmp_path):
    """lower_limb_35 ships no weights: stage 1 and a stage-2 network, initialised and saved as
    training writes them (state dicts), export like trained ones."""
    parser = inference_config("lower_limb_35")
    torch.manual_seed(0)
    x = torch.rand(1, 1, 16, 16, 24)
    for net_id in ("stage1_network", "stage2_network_def"):
        fresh = parser.get_parsed_content(net_id, lazy=False)
        ckpt = tmp_path / f"{net_id}.pt"
        torch.save(fresh.state_dict(), ckpt)
        eager = parser.get_parsed_content(net_id, lazy=False)  # as build_cascade loads a checkpoint
        eager.load_state_dict(torch.load(ckpt, weights_only=True))
        assert_same_network(export("lower_limb_35", net_id, ckpt, tmp_path / f"{net_id}.ts"), eager,
                            torch.load(ckpt, weights_only=True), x)


def test_thigh_view_networks_export(tmp_path):
    from muscle_pipeline.thigh25d import load_model

    model = load_model("thigh_ct_25d")
    torch.manual_seed(0)
    x = torch.rand(2, 3, 32, 24)
    assert set(model.networks) == {"sagittal", "coronal", "axial"}
    for view, eager in model.networks.items():
        ckpt = BUNDLES / "thigh_ct_25d" / "models" / f"view_{view}.pt"
        scripted = export("thigh_ct_25d", "network_def", ckpt, tmp_path / f"view_{view}.ts")
        assert_same_network(scripted, eager, torch.load(ckpt, weights_only=True), x)


def test_gym_photo_exports_all_its_weights(tmp_path):
    """The shipped checkpoint is int8-packed (MONAI's copy found none of its 268 tensors under
    their names): the config's ``save_float_checkpoint`` writes the loaded network's float32
    state dict, and ``network_def`` is a FlexibleUNet whose ResNet shortcuts TorchScript can
    script (MONAI's cannot be scripted, and traced they answer wrongly)."""
    ckpt = tmp_path / "model_float32.pt"
    parser = inference_config("gym_photo", float_checkpoint=str(ckpt), device="cpu")
    parser.get_parsed_content("save_float_checkpoint")
    eager = parser.get_parsed_content("network")  # what inference runs: model.pt loaded strictly
    state = torch.load(ckpt, weights_only=True)
    assert len(state) == 268
    scripted = export("gym_photo", "network_def", ckpt, tmp_path / "model.ts")
    torch.manual_seed(0)
    for shape in ((2, 3, 64, 64), (1, 3, 32, 96)):  # scripted, not traced: any batch and size
        assert_same_network(scripted, eager, state, torch.rand(shape))
    extra = {"metadata.json": ""}
    torch.jit.load(str(tmp_path / "model.ts"), _extra_files=extra)
    assert "muscle_pipeline" in json.loads(extra["metadata.json"])["required_packages_version"]


# --- multi-GPU configs ----------------------------------------------------------------------------

def multi_gpu_config(name: str) -> ConfigParser:
    """train.json with multi_gpu_train.json merged over it, as ``--config_file "['train.json','multi_gpu_train.json']"``."""
    configs = BUNDLES / name / "configs"
    parser = ConfigParser()
    parser.read_config([str(configs / "train.json"), str(configs / "multi_gpu_train.json")])
    return parser


@pytest.mark.parametrize("name", MULTI_GPU)
@pytest.mark.parametrize("cuda", [False, True])
def test_multi_gpu_config_uses_gloo_on_cpu_and_nccl_on_gpus(name, cuda, monkeypatch):
    """What ``initialize`` would do: process group backend and device (init_process_group and
    set_device recorded, not run); ``cuda=True`` pretends CUDA is available (LOCAL_RANK 1)."""
    import torch.distributed as dist

    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: calls.append(("set_device", str(device))))
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda backend=None, **kw: calls.append(("backend", backend)))
    monkeypatch.setenv("LOCAL_RANK", "1")
    parser = multi_gpu_config(name)
    parser.get_parsed_content("initialize")
    device = str(parser.get_parsed_content("device"))
    if cuda:
        assert calls == [("backend", "nccl"), ("set_device", "cuda:1")] and device == "cuda:1"
    else:
        assert calls == [("backend", "gloo")] and device == "cpu"


def test_the_multi_gpu_configs_are_all_checked():
    assert MULTI_GPU == ["calf_mri", "hip_ct", "lower_limb_35", "thigh_ct_25d"]


def test_thigh_multi_gpu_train_runs_under_torchrun_on_cpu(tmp_path):
    """Two CPU processes (gloo), 2 iterations per view on a CT phantom, into a temporary folder:
    the ranks share the three views and rank 0 merges their train_info."""
    import nibabel as nib
    import numpy as np

    from muscle_pipeline.io import write_label_map
    from tools.phantoms import make_phantom

    data = tmp_path / "data"
    (data / "imagesTr").mkdir(parents=True)
    (data / "labelsTr").mkdir()
    phantom = make_phantom("thigh", "ct", shape=(40, 30, 20), spacing=(6.0, 6.0, 6.0), seed=5)
    write_label_map(phantom.labels, phantom.image, data / "labelsTr" / "case0.nii.gz")
    nib.save(nib.Nifti1Image(phantom.image.numpy(), np.asarray(phantom.image.affine)), str(data / "imagesTr" / "case0.nii.gz"))
    configs = BUNDLES / "thigh_ct_25d" / "configs"
    out = tmp_path / "models"
    cmd = [str(Path(PYTHON).parent / "torchrun"), "--nproc_per_node=2", "--master_port=29547", "-m", "monai.bundle", "run",
           "--config_file", f"['{configs / 'train.json'}','{configs / 'multi_gpu_train.json'}']",
           "--logging_file", str(configs / "logging.conf"), "--dataset_dir", str(data),
           "--structures", "vastus_lateralis,adductor_magnus,femur", "--output_dir", str(out),
           "--iterations", "2", "--batch_size", "2", "--patch_size", "[32,32]", "--threads", "1"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["train_info.json", "view_axial.pt", "view_coronal.pt",
                                                     "view_sagittal.pt"]
    info = json.loads((out / "train_info.json").read_text())
    assert set(info["networks"]) == {"view_sagittal", "view_coronal", "view_axial"}
