"""Training through the bundle's train.json (as a user runs it), and the hyper-parameter sweep."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from muscle_pipeline.photo.network import read_checkpoint
from tools.photo_synthetic import write_dataset

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "gym_photo"


def test_train_config_runs_one_epoch(tmp_path):
    data = write_dataset(tmp_path / "data", {"train": 6, "test": 1}, size=(48, 64), seed=2)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "monai.bundle", "run",
           "--config_file", str(BUNDLE / "configs" / "train.json"),
           "--meta_file", str(BUNDLE / "configs" / "metadata.json"),
           "--logging_file", str(BUNDLE / "configs" / "logging.conf"),
           "--dataset_dir", str(data), "--output_dir", str(out),
           "--epochs", "1", "--image_size", "64", "--batch_size", "3"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "epoch 1/1" in proc.stdout + proc.stderr
    for name in ("model.pt", "history.csv", "curves.png", "metrics.json"):
        assert (out / name).is_file(), name
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["best_epoch"] == 1 and len(metrics["history"]) == 1
    assert 0.0 <= metrics["best"]["pixel_accuracy"] <= 1.0 and metrics["best"]["loss"] > 0
    state, meta = read_checkpoint(out / "model.pt")
    assert meta["image_size"] == 64 and meta["network"]["backbone"] == "resnet34"
    assert meta["optimizer"] == "adam" and meta["learning_rate"] == 1e-4 and meta["batch_size"] == 3
    assert state["encoder.conv1.weight"].dtype == torch.float32


@pytest.mark.slow  # a sweep: 4 trainings; one training run stays in `make test` (test_train_config_runs_one_epoch)
def test_sweep_writes_one_row_per_combination(tmp_path):
    from monai.bundle import ConfigParser

    data = write_dataset(tmp_path / "data", {"train": 4, "val": 2}, layout="seed", size=(32, 32), seed=4)
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "sweep.json"))
    parser.update({"dataset_dir": str(data), "output_dir": str(tmp_path / "sweep"), "epochs": 1, "image_size": 32,
                   "learning_rates": [1e-4, 1e-3], "batch_sizes": [2], "optimizers": ["adam", "sgd"]})
    rows = parser.get_parsed_content("run")[0]
    assert len(rows) == 4
    assert {(r["learning_rate"], r["optimizer"]) for r in rows} == {(1e-4, "adam"), (1e-3, "adam"),
                                                                    (1e-4, "sgd"), (1e-3, "sgd")}
    with open(tmp_path / "sweep" / "sweep.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 4 and {"val_miou", "val_pixel_accuracy", "val_loss", "batch_size"} <= set(table[0])
    mious = [float(r["val_miou"]) for r in table]
    assert mious == sorted(mious, reverse=True)
    markdown = (tmp_path / "sweep" / "sweep.md").read_text().splitlines()
    assert markdown[0].startswith("| learning rate | batch size | optimizer | val mIoU")
    assert len(markdown) == 2 + 4
    for r in rows:
        assert (Path(r["run_dir"]) / "model.pt").is_file()
        assert read_checkpoint(Path(r["run_dir"]) / "model.pt")[1]["optimizer"] == r["optimizer"]
