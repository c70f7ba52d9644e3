"""Each bundle's configs/evaluate.json declares an evaluation list (real files, known label maps,
honestly marked when it is the training data) and writes outside the bundle; calf_mri's runs
through ``python -m monai.bundle run`` on one declared case."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from monai.bundle import ConfigParser

from muscle_pipeline.datasets import available_datasets
from muscle_pipeline.evaluation import read_csv

REPO = Path(__file__).resolve().parents[1]
BUNDLES = REPO / "bundles"
LISTED = ["calf_mri", "hip_ct", "thigh_ct_25d", "lower_limb_35"]


def _parser(bundle: str, name: str, shared_data: Path) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(str(BUNDLES / bundle / "configs" / name))
    if "data_root" in parser:
        parser["data_root"] = str(shared_data)
    return parser


def _training_pairs(bundle: str, shared_data: Path) -> set[tuple[str, str]]:
    parser = _parser(bundle, "train.json", shared_data)
    if "dataset_dir" in parser:
        parser["dataset_dir"] = None
    return {(str(Path(e["image"]).resolve()), str(Path(e["label"]).resolve()))
            for e in parser.get_parsed_content("dataset") if "image" in e and not e.get("synthesize")}


@pytest.mark.parametrize("bundle", LISTED)
def test_declared_list_is_real_and_not_silently_the_training_data(bundle, shared_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    parser = _parser(bundle, "evaluate.json", shared_data)
    entries = parser.get_parsed_content("dataset")
    assert entries, f"{bundle}: no evaluation list declared"
    training = _training_pairs(bundle, shared_data)
    for entry in entries:
        assert Path(entry["image"]).is_file() and Path(entry["label"]).is_file(), entry
        assert entry["label_map"] in available_datasets(), entry
        pair = (str(Path(entry["image"]).resolve()), str(Path(entry["label"]).resolve()))
        if pair in training and not entry.get("simulate_other_leg"):
            assert entry.get("in_sample") is True, f"{bundle}: {entry['case']} is the training data, say so"
    assert "IN-SAMPLE" in parser["_comment"] or not any(e.get("in_sample") for e in entries)
    output = Path(parser.get_parsed_content("output_dir")).resolve()
    assert output.is_relative_to(tmp_path) and not output.is_relative_to(BUNDLES.resolve())


def test_gym_photo_scores_go_outside_the_bundle(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    parser = ConfigParser()
    parser.read_config(str(BUNDLES / "gym_photo" / "configs" / "evaluate.json"))
    assert Path(parser.get_parsed_content("output_dir")).resolve() == tmp_path / "runs" / "gym_photo" / "eval"


def test_calf_mri_evaluate_json_runs_its_declared_list(shared_data, tmp_path):
    """The bundle's own runner on the first declared case (a simulated other leg; the full list of
    6 takes ~1.5 min): Dice per muscle written under ./runs/calf_mri/eval, nothing in the bundle."""
    parser = _parser("calf_mri", "evaluate.json", shared_data)
    declared = parser.get_parsed_content("dataset")
    assert len(declared) == 6 and all(e["simulate_other_leg"]["full_width"] == 160 for e in declared)
    first = {**declared[0], "simulate_other_leg": dict(declared[0]["simulate_other_leg"])}
    before = sorted(str(p) for p in (BUNDLES / "calf_mri").rglob("*"))
    config = BUNDLES / "calf_mri" / "configs"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(config / "evaluate.json"),
           "--meta_file", str(config / "metadata.json"), "--logging_file", str(config / "logging.conf"),
           "--data_root", str(shared_data), "--distances", "False", "--dataset", repr([first])]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "2"})
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "runs" / "calf_mri" / "eval"
    rows = read_csv(out / "metrics.csv")
    assert {r["case"] for r in rows} == {"simulated_other_leg_0"} and len(rows) == 7
    assert all(r["name"].endswith("_left") for r in rows)  # the leg lies in the scan's left half
    assert min(r["dice"] for r in rows) > 0.7, [(r["name"], r["dice"]) for r in rows]
    assert (out / "predictions" / "simulated_other_leg_0.nii.gz").is_file()
    assert json.loads((out / "datalist.json").read_text())[0]["simulated_from"]["seed"] == 0
    assert "Dice" in done.stdout
    assert sorted(str(p) for p in (BUNDLES / "calf_mri").rglob("*")) == before
