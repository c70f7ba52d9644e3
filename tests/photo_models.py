"""A small untrained gym-photo checkpoint for tests that need a model quickly."""
from __future__ import annotations

from pathlib import Path

import torch

from muscle_pipeline.photo.network import build_network, save_checkpoint


def untrained_checkpoint(folder: Path, image_size: int = 64) -> Path:
    """Seeded untrained network whose output is biased so that it paints every class somewhere."""
    torch.manual_seed(0)
    network = build_network()
    with torch.no_grad():
        network.segmentation_head[0].bias.copy_(torch.tensor([0.0, 0.02, 0.01, 0.03]))
    return save_checkpoint(network, Path(folder) / "model.pt", image_size=image_size)
