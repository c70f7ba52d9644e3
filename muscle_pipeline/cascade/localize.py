"""Stage 1 of the cascade: a low-resolution 3D U-Net over muscle groups → per-muscle boxes."""
from __future__ import annotations

import logging

import numpy as np
import torch
from monai.data import MetaTensor
from monai.inferers import sliding_window_inference

from ..precision import autocast
from .boxes import BoxPriors, WorldBox, box_from_probability

__all__ = ["Localizer"]

log = logging.getLogger(__name__)


class Localizer:
    """Predict group probabilities at low resolution and derive a world box per muscle.

    Args:
        network: U-Net with ``1 + len(priors.groups)`` output channels (background first, then
            the groups in ``priors.groups`` order).
        priors: learned box priors (muscle within group; neighbour offsets).
        roi_size: sliding-window patch (voxels of the stage-1 grid).
        threshold: group probability that counts as inside.
        margin_mm: safety margin added around every predicted muscle box (stage-1 boxes are coarse).
        autocast_dtype: run the network under ``torch.autocast`` with this dtype; None: fp32.
    """

    def __init__(self, network: torch.nn.Module, priors: BoxPriors, roi_size, sw_batch_size: int = 2,
                 overlap: float = 0.25, threshold: float = 0.5, margin_mm: float = 6.0,
                 autocast_dtype: torch.dtype | None = None):
        self.network = network.eval()
        self.priors = priors
        self.roi_size = tuple(int(v) for v in roi_size)
        self.sw_batch_size = max(2, int(sw_batch_size))  # batch 1 is ~2x slower on CPU (environment.md)
        self.overlap = overlap
        self.threshold = threshold
        self.margin_mm = margin_mm
        self.autocast_dtype = autocast_dtype

    @property
    def groups(self) -> list[str]:
        return list(self.priors.groups)

    def group_probabilities(self, image: torch.Tensor) -> torch.Tensor:
        """``image`` (1, X, Y, Z) preprocessed on the stage-1 grid → softmax (1 + G, X, Y, Z)."""
        device = next(self.network.parameters()).device
        with torch.inference_mode(), autocast(self.autocast_dtype, device):
            logits = sliding_window_inference(
                torch.as_tensor(image, dtype=torch.float32)[None].to(device), self.roi_size, self.sw_batch_size,
                lambda x: self.network(x).float(), overlap=self.overlap, mode="gaussian")
            return torch.softmax(logits[0].float(), 0).cpu()

    def boxes(self, image: MetaTensor) -> dict[str, WorldBox]:
        """World boxes (RAS mm) of every muscle, from the group maps and the learned priors.

        Muscles of a group with no voxel above ``threshold`` get the neighbour fallback of
        :class:`~muscle_pipeline.cascade.boxes.BoxPriors`; if no muscle at all was found the
        whole image is returned for each (stage 2 then searches everywhere).
        """
        affine = np.asarray(image.affine)
        prob = self.group_probabilities(image)
        found: dict[str, WorldBox] = {}
        for gi, (group, muscles) in enumerate(self.priors.groups.items(), start=1):
            vbox = box_from_probability(prob[gi], self.threshold)
            if vbox is None:
                log.info("stage 1: group %s not found; neighbour fallback for %s", group, muscles)
                continue
            gbox = vbox.to_world(affine)
            for m in muscles:
                found[m] = self.priors.muscle_box_from_group(m, gbox)
        missing = [m for m in self.priors.muscles if m not in found]
        out = dict(found)
        for m in missing:
            est = self.priors.from_neighbours(m, found)
            if est is None:
                shape = tuple(image.shape[1:])
                from .boxes import Box
                est = Box((0, 0, 0), shape).to_world(affine)
            out[m] = est
        return {m: b.pad(self.margin_mm) for m, b in out.items()}
