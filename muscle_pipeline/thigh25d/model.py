"""The thigh CT models: load a bundle and segment one right-looking leg crop.

Contract with the segment job (``muscle_pipeline.segmentation``): the input is ONE leg, left
legs already mirrored to look like right legs, a ``MetaTensor`` ``(1, X, Y, Z)`` in HU whose
affine maps voxels to RAS mm; the output is a uint8 label map ``(X, Y, Z)`` on exactly that grid
with RIGHT-side ontology values (the job names the side).

    model = load_model("thigh_ct_25d")       # bundle name or folder
    labels = model.predict(crop)             # (X, Y, Z) uint8 MetaTensor, crop's affine

Three model kinds share preprocessing (:mod:`.preprocess`) and post-processing (largest 3D
connected component per class, one resampling back onto the input grid):

* :class:`SliceEnsembleModel` with the three views -- the 2.5D model of seed 004: per view a
  2D U-Net on (slice, slice +-4 mm), MONAI ``SliceInferer``; winner-takes-all voting
  (:func:`.voting.winner_takes_all`);
* the same class with the axial view only and one channel -- the 2D baseline;
* :class:`VolumeModel` -- the 3D U-Net baseline (MONAI ``SlidingWindowInferer``).
"""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from monai.data import MetaTensor
from monai.inferers import SlidingWindowInferer

from muscle_pipeline.bundle import read_bundle_config
from muscle_pipeline.cascade.model import right_value
from muscle_pipeline.postprocess import keep_largest_component
from muscle_pipeline.thigh25d.preprocess import PreparedLeg, ThighCTPreprocess, to_input_grid
from muscle_pipeline.thigh25d.slices import VIEWS, view_logits
from muscle_pipeline.thigh25d.voting import winner_takes_all

__all__ = ["ThighCTModel", "SliceEnsembleModel", "VolumeModel", "load_model", "weights_name"]

log = logging.getLogger(__name__)


def weights_name(kind: str, view: str | None = None) -> str:
    """File name of one network's weights: ``view_axial.pt``, ``2d_axial.pt``, ``3d.pt``."""
    return {"25d": f"view_{view}.pt", "2d": f"2d_{view}.pt", "3d": "3d.pt"}[kind]


class ThighCTModel:
    """Common part: preprocessing, class index -> ontology value, largest component, way back.

    ``structures``: ontology structure names (side-less), class ``i + 1`` is ``structures[i]``.
    """

    modality = "ct"

    def __init__(self, structures: Sequence[str], preprocess: ThighCTPreprocess | None = None,
                 largest_component: bool = True, device: str | torch.device = "cpu") -> None:
        self.structures = list(structures)
        self.preprocess = preprocess or ThighCTPreprocess()
        self.largest_component = largest_component
        self.device = torch.device(device)
        self.last_notes: list[str] = []

    @property
    def n_classes(self) -> int:
        return len(self.structures) + 1

    @property
    def values(self) -> dict[str, int]:
        """Structure name -> its RIGHT-side ontology value."""
        return {name: right_value(name) for name in self.structures}

    def class_lut(self) -> np.ndarray:
        """Class index -> right-side ontology value (index 0 -> 0)."""
        return np.array([0] + [right_value(name) for name in self.structures], dtype=np.uint8)

    def segment_prepared(self, image: torch.Tensor) -> torch.Tensor:
        """``(1, X, Y, Z)`` prepared image -> class indices ``(X, Y, Z)`` (before clean-up)."""
        raise NotImplementedError

    def predict_prepared(self, prepared: PreparedLeg) -> np.ndarray:
        """Class indices ``(X', Y', Z')`` on the prepared grid, largest component per class."""
        with torch.inference_mode():
            classes = self.segment_prepared(prepared.image.as_tensor().to(self.device))
        classes = classes.cpu().numpy().astype(np.uint8)
        if self.largest_component:
            classes = keep_largest_component(classes, connectivity=26)
        return classes

    def predict(self, image: MetaTensor, progress: bool = False) -> MetaTensor:
        """``(1, X, Y, Z)`` (or ``(X, Y, Z)``) HU MetaTensor -> ``(X, Y, Z)`` uint8 right-side values."""
        if not isinstance(image, MetaTensor):
            raise TypeError("predict needs a MetaTensor with an affine (muscle_pipeline.io.read_image)")
        image4 = image if image.ndim == 4 else image[None]
        prepared = self.preprocess(image4)
        self.last_notes = list(prepared.notes)
        classes = self.predict_prepared(prepared)
        back = to_input_grid(torch.as_tensor(classes), prepared.image, image4, self.n_classes)
        labels = torch.as_tensor(self.class_lut())[back.long()]
        meta = {k: v for k, v in image4.meta.items() if k != "affine"}
        return MetaTensor(labels, affine=image4.affine.clone(), meta=meta)

    def segment_file(self, image_path: str | os.PathLike, output_path: str | os.PathLike, side: str | None = None) -> str:
        """Segment a scan file (one leg or both, any side) and write its label map on the input grid,
        through the segment job's side handling as the cascade bundles do
        (:func:`muscle_pipeline.segmentation.segment_image`): legs are split, a left leg is mirrored
        before the model sees it and gets LEFT ontology values. ``side`` names the leg of a
        single-leg scan whose position would not."""
        from muscle_pipeline.io import read_image, write_label_map
        from muscle_pipeline.segmentation import segment_image

        image = read_image(str(image_path))
        result = segment_image(image, self, side=side or None)
        for warning in result.warnings:
            log.warning("%s: %s", image_path, warning)
        return str(write_label_map(result.labels.numpy().astype(np.uint8), image, output_path))


class SliceEnsembleModel(ThighCTModel):
    """2D U-Nets per view (``{"axial": net, ...}``), 2.5D when ``offsets`` has 3 entries.

    One view: its arg-max. Several: :func:`winner_takes_all` of the views' softmax outputs.
    """

    def __init__(self, networks: Mapping[str, torch.nn.Module], structures: Sequence[str],
                 offsets: Sequence[int] = (-2, 0, 2), sw_batch_size: int = 16, **kwargs) -> None:
        super().__init__(structures, **kwargs)
        unknown = set(networks) - set(VIEWS)
        if unknown:
            raise ValueError(f"unknown views {sorted(unknown)}; choose from {sorted(VIEWS)}")
        self.networks = {view: net.to(self.device).eval() for view, net in networks.items()}
        self.offsets = tuple(int(o) for o in offsets)
        self.sw_batch_size = int(sw_batch_size)

    def view_probabilities(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """Softmax ``(C, X, Y, Z)`` of every view on the prepared image ``(1, X, Y, Z)``."""
        return {view: torch.softmax(view_logits(image, net, VIEWS[view], self.offsets, self.sw_batch_size), dim=0)
                for view, net in self.networks.items()}

    def segment_prepared(self, image: torch.Tensor) -> torch.Tensor:
        return winner_takes_all(list(self.view_probabilities(image).values()))


class VolumeModel(ThighCTModel):
    """3D U-Net baseline: sliding windows of ``roi_size`` voxels over the prepared volume."""

    def __init__(self, network: torch.nn.Module, structures: Sequence[str], roi_size=(96, 96, 96),
                 sw_batch_size: int = 2, overlap: float = 0.25, **kwargs) -> None:
        super().__init__(structures, **kwargs)
        self.network = network.to(self.device).eval()
        self.inferer = SlidingWindowInferer(roi_size=tuple(roi_size), sw_batch_size=sw_batch_size, overlap=overlap,
                                            mode="gaussian", padding_mode="replicate")

    def segment_prepared(self, image: torch.Tensor) -> torch.Tensor:
        return self.inferer(image[None].float(), self.network)[0].argmax(dim=0)


def _preprocess_from(parser) -> ThighCTPreprocess:
    return ThighCTPreprocess(spacing_mm=parser.get("spacing_mm", 2.0), window_hu=parser.get("window_hu", (-100, 250)),
                             align_femur=parser.get("align_femur", True),
                             max_angle_deg=parser.get("max_femur_angle_deg", 15.0))


def load_model(bundle: str | os.PathLike = "thigh_ct_25d", device: str | torch.device = "cpu",
               models_dir: str | os.PathLike | None = None, kind: str = "25d", **overrides) -> ThighCTModel:
    """Build a trained model of a bundle (name such as ``"thigh_ct_25d"`` or a folder).

    ``models_dir``: weights other than the bundle's ``models/`` (e.g. a fresh training run or
    ``models/heldout``). ``kind``: "25d" (the bundle's model), or the baselines "2d" / "3d".
    ``overrides``: config ids set before anything is built (``spacing_mm=3.0``, ``views=["axial"]``);
    the bundle's ``inference.json`` passes its own parsed values this way, so that command-line
    overrides of ``monai.bundle run`` reach the model.
    """
    parser = read_bundle_config(bundle, **overrides)
    models = Path(models_dir) if models_dir is not None else Path(parser["bundle_root"]) / "models"
    # the weights define the classes: a training run records its structures beside them
    info = models / "train_info.json"
    structures = list(json.loads(info.read_text())["structures"]) if info.is_file() else list(parser["structures"])
    common = dict(preprocess=_preprocess_from(parser), device=device)

    def load(net, name):
        state = torch.load(models / name, map_location="cpu", weights_only=True)
        net.load_state_dict(state)
        return net

    if kind == "3d":
        net = load(parser.get_parsed_content("network_3d")(out_channels=len(structures) + 1), weights_name("3d"))
        return VolumeModel(net, structures, roi_size=parser.get("roi_size_3d", (96, 96, 96)), **common)
    make_2d = parser.get_parsed_content("network")  # "_mode_": "callable" -> factory(in_channels=...)
    if kind == "2d":
        nets = {"axial": load(make_2d(in_channels=1, out_channels=len(structures) + 1), weights_name("2d", "axial"))}
        return SliceEnsembleModel(nets, structures, offsets=(0,), **common)
    if kind != "25d":
        raise ValueError(f"kind must be '25d', '2d' or '3d', got {kind!r}")
    offsets = tuple(parser.get_parsed_content("offsets"))
    nets = {view: load(make_2d(in_channels=len(offsets), out_channels=len(structures) + 1), weights_name("25d", view))
            for view in parser["views"]}
    return SliceEnsembleModel(nets, structures, offsets=offsets, sw_batch_size=parser.get("sw_batch_size", 16), **common)
