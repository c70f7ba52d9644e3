"""Stage 2 of the cascade: one cropped 3D U-Net per muscle, box-jitter test-time averaging."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from monai.inferers import sliding_window_inference

from ..precision import autocast
from .boxes import Box, jitter_boxes

__all__ = ["Refiner", "LocalProbability"]


class LocalProbability:
    """A muscle's probability on a sub-box of the stage-2 grid: ``prob`` has ``box.shape``."""

    def __init__(self, muscle: str, box: Box, prob: torch.Tensor):
        self.muscle, self.box, self.prob = muscle, box, prob


class Refiner:
    """Per-muscle refinement on the stage-2 grid.

    For each muscle, ``n_jitter`` boxes are drawn by enlarging its stage-1 box (each face
    independently by a ratio in ``ratio_range``, as in training), the crops are zero-padded to a
    common size and predicted as one batch through ``sliding_window_inference`` (Gaussian
    blending; a crop larger than the muscle's patch is tiled), and the foreground probabilities are
    pasted back and averaged over the crops that cover each voxel.

    Args:
        networks: muscle → U-Net with 2 output channels (background, muscle).
        patch_sizes: muscle → network patch (voxels of the stage-2 grid).
        seed: seeds the jitter so that a prediction is reproducible.
        autocast_dtype: run the networks under ``torch.autocast`` with this dtype (bf16 where the
            hardware has it, :func:`muscle_pipeline.precision.resolve_precision`); None: fp32.
    """

    def __init__(self, networks: dict[str, torch.nn.Module], patch_sizes: dict[str, tuple], n_jitter: int = 6,
                 ratio_range=(1.0, 1.8), overlap: float = 0.25, sw_batch_size: int = 6, seed: int = 0,
                 autocast_dtype: torch.dtype | None = None):
        self.networks = {m: n.eval() for m, n in networks.items()}
        self.patch_sizes = {m: tuple(int(v) for v in p) for m, p in patch_sizes.items()}
        self.n_jitter = int(n_jitter)
        self.ratio_range = tuple(ratio_range)
        self.overlap = overlap
        self.sw_batch_size = max(2, int(sw_batch_size))
        self.seed = seed
        self.autocast_dtype = autocast_dtype

    def refine_muscle(self, muscle: str, image: torch.Tensor, box: Box, rng: np.random.Generator) -> LocalProbability:
        """``image`` (1, X, Y, Z) on the stage-2 grid, ``box`` on that grid → local probability."""
        shape = tuple(image.shape[1:])
        crops = jitter_boxes(box.clip(shape), shape, self.n_jitter, rng, self.ratio_range)
        crops = [c for c in crops if min(c.shape) > 0]
        if not crops:
            return LocalProbability(muscle, box.clip(shape), torch.zeros(box.clip(shape).shape))
        common = np.max([c.shape for c in crops], 0)
        batch, pads = [], []
        for c in crops:
            x = torch.as_tensor(image[(slice(None), *c.slices)], dtype=torch.float32)
            before = (common - np.asarray(c.shape)) // 2
            after = common - np.asarray(c.shape) - before
            # F.pad takes pairs from the last axis backwards
            x = F.pad(x, [int(v) for pair in zip(before[::-1], after[::-1]) for v in pair])
            batch.append(x)
            pads.append(before)
        network = self.networks[muscle]
        device = next(network.parameters()).device
        with torch.inference_mode(), autocast(self.autocast_dtype, device):
            # logits back to fp32 so that blending, softmax and averaging are not done in bf16
            logits = sliding_window_inference(torch.stack(batch).to(device), self.patch_sizes[muscle],
                                              self.sw_batch_size, lambda x: network(x).float(), overlap=self.overlap,
                                              mode="gaussian")
            fg = torch.softmax(logits.float(), 1)[:, 1].cpu()
        union = crops[0]
        for c in crops[1:]:
            union = union.union(c)
        total = torch.zeros(union.shape)
        count = torch.zeros(union.shape)
        for c, p, before in zip(crops, fg, pads):
            inner = p[tuple(slice(int(b), int(b) + s) for b, s in zip(before, c.shape))]
            local = tuple(slice(a - u, b - u) for a, b, u in zip(c.start, c.stop, union.start))
            total[local] += inner
            count[local] += 1
        # average over the crops that saw the voxel: a voxel near the edge of only the larger crops
        # is not diluted by crops that never looked at it
        return LocalProbability(muscle, union, total / count.clamp(min=1))

    def refine(self, image: torch.Tensor, boxes: dict[str, Box], progress: bool = False) -> list[LocalProbability]:
        rng = np.random.default_rng(self.seed)
        items = list(boxes.items())
        if progress:
            from tqdm import tqdm

            items = tqdm(items, desc="stage 2", unit="muscle")
        return [self.refine_muscle(m, image, b, rng) for m, b in items if m in self.networks]
