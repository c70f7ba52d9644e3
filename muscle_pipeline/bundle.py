"""Bundles: find one, parse its configs with MONAI's ``ConfigParser``, build its predictor.

Every path that runs a bundle goes through here, so an override means the same thing whether it
comes from ``python -m monai.bundle run --n_jitter 2``, ``muscle-pipeline segment --model`` or
``mp.load_model(..., n_jitter=2)``. A bundle's configs are code (MONAI ``$`` expressions and
``_target_`` calls): names resolve to the shipped bundles only (:mod:`muscle_pipeline.routing`).
"""
from __future__ import annotations

import importlib
import os
from pathlib import Path

__all__ = ["bundle_path", "read_bundle_config", "load_predictor", "DEFAULT_LOADER"]

# what builds a bundle's predictor when its inference.json names no "loader"
DEFAULT_LOADER = "muscle_pipeline.cascade:load_cascade"


def bundle_path(bundle: str | os.PathLike) -> Path:
    """A bundle folder from a shipped bundle name (``"calf_mri"``) or a path given as a path.

    Names resolve to the shipped bundles only (``$MUSCLE_PIPELINE_BUNDLES``, the repository's
    ``bundles/``, the installed package's ``muscle_pipeline/data/bundles``), never to a folder of
    that name in the working directory: see :func:`muscle_pipeline.routing.resolve_bundle`.
    Raises FileNotFoundError naming what was looked for.
    """
    from .errors import ModelError
    from .routing import resolve_bundle

    try:
        return resolve_bundle(bundle)
    except ModelError as exc:
        raise FileNotFoundError(str(exc)) from None


def read_bundle_config(bundle: str | os.PathLike, name: str = "inference.json", **overrides):
    """The bundle's ``configs/<name>`` in a ``ConfigParser`` with ``bundle_root`` set to its folder
    and ``overrides`` (config id -> value, ``"stage2_network#channels"`` style ids too) applied."""
    from monai.bundle import ConfigParser

    root = bundle_path(bundle)
    parser = ConfigParser()
    parser.read_config(str(root / "configs" / name))
    parser["bundle_root"] = str(root)
    for key, value in overrides.items():
        parser[key] = value
    return parser


def load_predictor(bundle: str | os.PathLike, device: str = "cpu", **overrides):
    """The trained predictor of a bundle: ``inference.json``'s ``"loader"`` (``"module:function"``,
    default the cascade's ``load_cascade``) called with the bundle folder, ``device`` and the
    overrides. The result has ``structures``, ``modality`` and ``predict(image (1, X, Y, Z))``."""
    root = bundle_path(bundle)
    loader_name = read_bundle_config(root).get("loader", DEFAULT_LOADER)
    module_name, _, function = str(loader_name).partition(":")
    loader = getattr(importlib.import_module(module_name), function)
    return loader(root, device=device, **overrides)
