"""Activated-muscle segmentation in 2D gym photos (Seed 000 of the literature notes).

A U-Net with a ResNet-34 encoder (MONAI ``FlexibleUNet``) labels every pixel of an RGB photo as
background, activated biceps, activated triceps or activated calf. A muscle that is relaxed
is background: the task is to find *working* muscles, not arms and legs.

Modules: ``data`` (seed and Roboflow folder layouts), ``transforms`` (MONAI dictionary pipelines),
``network`` (model factory, checkpoints, local encoder weights), ``evaluation`` (IoU, mIoU,
pixel accuracy), ``train`` (training loop, curves, sweep), ``infer`` (images and folders, overlay),
``video`` (frame-by-frame video), ``app`` (Gradio demo). The synthetic photos, the scores on
them and the demo-model builder are development tooling outside the package
(``tools.photo_synthetic``, ``tools.photo_score``, ``tools.photo_demo_model``).
"""
from __future__ import annotations

#: Class index -> name. Index 0 also covers relaxed muscles, skin, clothes and the gym.
CLASS_NAMES: tuple[str, ...] = ("background", "biceps", "triceps", "calf")

#: Overlay colour (RGB) per class index; background is not drawn.
CLASS_COLOURS: tuple[tuple[int, int, int], ...] = (
    (0, 0, 0),
    (230, 25, 75),  # biceps: red
    (0, 130, 200),  # triceps: blue
    (60, 200, 75),  # calf: green
)

NUM_CLASSES = len(CLASS_NAMES)

__all__ = ["CLASS_NAMES", "CLASS_COLOURS", "NUM_CLASSES"]
