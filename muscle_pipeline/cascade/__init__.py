"""Cascaded 3D muscle segmentation after Ni et al. (2019): localise groups, refine each muscle, fuse.

Public API: :func:`load_cascade` (a bundle name or folder → :class:`CascadeModel`) and
``CascadeModel.predict(image)`` for ONE right-leg-looking crop (see ``model.py`` for the contract).
"""
from .boxes import Box, BoxPriors, WorldBox, box_from_mask, box_from_probability, enlarge_box, jitter_boxes
from .fuse import MaxProbabilityFusion, MaxProbabilityFusiond, fuse_local_probabilities, fuse_probabilities
from .localize import Localizer
from .model import CascadeModel, build_cascade, bundle_path, load_cascade, read_bundle_config
from .refine import LocalProbability, Refiner

__all__ = [
    "Box", "BoxPriors", "WorldBox", "box_from_mask", "box_from_probability", "enlarge_box", "jitter_boxes",
    "MaxProbabilityFusion", "MaxProbabilityFusiond", "fuse_local_probabilities", "fuse_probabilities",
    "Localizer", "CascadeModel", "build_cascade", "bundle_path", "load_cascade", "read_bundle_config", "LocalProbability", "Refiner",
]
