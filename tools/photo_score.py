"""A photo model's scores on freshly drawn synthetic photos (development tooling).

    python -m tools.photo_score --model M --photos 100 --seed 1000

IoU per class, mIoU and pixel accuracy of a checkpoint (default: the shipped demo model) on
``--photos`` photos drawn by :mod:`tools.photo_synthetic` with ``--seed``, through the same
inference path as the CLI (``PhotoSegmenter``, full-size masks).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from muscle_pipeline.photo import NUM_CLASSES
from muscle_pipeline.photo.evaluation import confusion_matrix, scores
from tools.photo_synthetic import make_photo


def score_synthetic(segmenter, n: int = 20, seed: int = 1000, size: tuple[int, int] = (256, 256)) -> dict:
    """Scores of a ``PhotoSegmenter`` on ``n`` freshly drawn synthetic photos (full-size masks,
    through the same inference path as the CLI)."""
    rng = np.random.default_rng(seed)
    cm = torch.zeros(NUM_CLASSES, NUM_CLASSES, dtype=torch.int64)
    for _ in range(n):
        image, mask = make_photo(rng, size)
        cm += confusion_matrix(torch.from_numpy(segmenter.predict(image)), torch.from_numpy(mask))
    result = scores(cm)
    result["confusion"] = cm.tolist()
    result.update(photos=n, seed=seed, size=list(size))
    return result


def _main(argv=None) -> int:
    import argparse

    from muscle_pipeline.photo.infer import PhotoSegmenter

    parser = argparse.ArgumentParser(description="Score a photo model on freshly drawn synthetic photos.")
    parser.add_argument("--model", type=Path, default=None, help="checkpoint (default: the shipped demo model)")
    parser.add_argument("--photos", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args(argv)
    result = score_synthetic(PhotoSegmenter(args.model), args.photos, args.seed, (args.size, args.size))
    print(json.dumps({k: v for k, v in result.items() if k != "confusion"}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
