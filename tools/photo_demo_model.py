"""Build the shipped demo model in one command: synthetic data, bundle training, int8 packing, scores.

    python -m tools.photo_demo_model OUT [--init_weights PREVIOUS.pt] [--threads 2]

1. ``OUT/data``: ``--train`` + ``--val`` synthetic photos (``tools.photo_synthetic.write_dataset``, seed
   ``--data_seed``; skipped when the folder already exists).
2. ``OUT/train``: ``configs/train.json`` of the bundle with :data:`DEMO_OVERRIDES` (whole
   photos at 128x128, Dice + cross-entropy, Adam 1e-3, StepLR(15, 0.5), 45 epochs),
   as ``python -m monai.bundle run --config_file configs/train.json ...`` runs it; ``model.pt``
   there is the fp32 checkpoint with the best validation mIoU.
3. ``OUT/model.pt``: weight-only int8 packing of it (``network.save_quantized``; ~4x smaller).
4. ``OUT/scores.json``: IoU per class, mIoU and pixel accuracy of the packed model on
   ``--photos`` freshly drawn photos (seed ``--score_seed``, never used for training), and its
   CPU time per photo.

5. ``OUT/examples.png``: the first 8 of those photos, their drawn truth and the packed model's
   answer (the picture in the bundle's ``docs/``).

``--install`` copies ``OUT/model.pt`` to ``bundles/gym_photo/models/model.pt``.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import time
from pathlib import Path

import torch

from muscle_pipeline.photo.network import bundle_path, default_model_path, read_checkpoint, save_quantized

logger = logging.getLogger(__name__)

#: Overrides of ``configs/train.json`` for the last training stage of the shipped demo weights:
#: whole photos at 128x128 (the network sees a whole limb, at a quarter of the CPU cost of 256)
#: and Dice + cross-entropy (batch Dice: muscles are ~6 % of the pixels and absent from many photos).
#: 45 epochs because telling the three muscles apart only starts after ~12 epochs on a plateau
#: where every flexed muscle is called biceps (bundles/gym_photo/docs/README.md).
DEMO_OVERRIDES = {
    "image_size": 128,
    "epochs": 45,
    "val_interval": 1,
    "learning_rate": 1e-3,
    "lr_step_size": 15,
    "loss": {"_target_": "DiceCELoss", "to_onehot_y": True, "softmax": True, "batch": True},
}


def train_demo(data_dir: Path, output_dir: Path, init_weights: str | None, threads: int, **overrides) -> Path:
    """Run the bundle's ``train.json`` with :data:`DEMO_OVERRIDES` (updated by ``overrides``)."""
    from monai.bundle import ConfigParser

    configs = bundle_path() / "configs"
    parser = ConfigParser()
    parser.read_config(str(configs / "train.json"))
    parser.read_meta(str(configs / "metadata.json"))
    parser["bundle_root"] = str(bundle_path())
    for key, value in dict(DEMO_OVERRIDES, **overrides).items():
        parser[key] = value
    parser["dataset_dir"] = str(data_dir)
    parser["output_dir"] = str(output_dir)
    parser["init_weights"] = init_weights
    parser["num_threads"] = threads
    parser.get_parsed_content("initialize")
    summary = parser.get_parsed_content("run")[-1]
    return Path(summary["model"])


def pack(checkpoint: Path, path: Path, bits: int = 8) -> Path:
    """Weight-only int8 copy of an fp32 checkpoint, keeping its metadata."""
    state, meta = read_checkpoint(checkpoint)
    extra = {k: v for k, v in meta.items() if k not in ("network", "image_size", "classes")}
    extra["quantization"] = f"weight-only int8 storage, {bits}-bit symmetric per output channel"
    return save_quantized(state, path, meta["image_size"], meta["network"], bits=bits, extra_meta=extra)


def draw_examples(model: Path, path: Path, photos: int = 8, seed: int = 1000) -> Path:
    """A picture of the first ``photos`` 256x256 photos of ``seed`` (those ``measure`` scores
    first): photo, drawn truth and the model's answer in three rows (red biceps, blue triceps,
    green calf), each column scaled to 160x480."""
    import numpy as np
    from PIL import Image

    from muscle_pipeline.photo.infer import PhotoSegmenter, overlay
    from tools.photo_synthetic import make_photo

    segmenter = PhotoSegmenter(model)
    rng = np.random.default_rng(seed)
    columns = []
    for _ in range(photos):
        image, truth = make_photo(rng, (256, 256))
        answer = segmenter.predict(image)
        column = np.concatenate([image, overlay(image, truth, legend=False), overlay(image, answer, legend=False)], 0)
        columns.append(np.asarray(Image.fromarray(column).resize((160, 480), Image.LANCZOS)))
    Image.fromarray(np.concatenate(columns, 1)).save(path, optimize=True)
    return path


def measure(model: Path, photos: int = 100, seed: int = 1000) -> dict:
    """Scores on fresh synthetic photos, file size and CPU seconds per 256x256 photo."""
    import numpy as np

    from tools.photo_score import score_synthetic
    from muscle_pipeline.photo.infer import PhotoSegmenter
    from tools.photo_synthetic import make_photo

    segmenter = PhotoSegmenter(model)
    result = score_synthetic(segmenter, n=photos, seed=seed)
    image = make_photo(np.random.default_rng(seed + 1), (256, 256))[0]
    segmenter.predict(image)  # warm-up
    start = time.perf_counter()
    for _ in range(5):
        segmenter.predict(image)
    result["seconds_per_photo"] = (time.perf_counter() - start) / 5
    result["torch_threads"] = torch.get_num_threads()
    result["model_bytes"] = os.path.getsize(model)
    return result


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train, pack and score the synthetic-photo demo model.")
    parser.add_argument("out", type=Path)
    parser.add_argument("--train", type=int, default=1000, help="synthetic training photos")
    parser.add_argument("--val", type=int, default=60, help="synthetic validation photos")
    parser.add_argument("--data_seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=DEMO_OVERRIDES["epochs"])
    parser.add_argument("--lr_step_size", type=int, default=DEMO_OVERRIDES["lr_step_size"],
                        help="epochs between halvings of the learning rate")
    parser.add_argument("--init_weights", default=None, help="checkpoint to fine-tune (default: random initialisation)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--photos", type=int, default=100, help="fresh photos to score on")
    parser.add_argument("--score_seed", type=int, default=1000)
    parser.add_argument("--install", action="store_true", help="copy the packed model into the bundle")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)

    from tools.photo_synthetic import write_dataset

    data_dir = args.out / "data"
    if not data_dir.exists():
        write_dataset(data_dir, {"train": args.train, "val": args.val}, seed=args.data_seed)
    fp32 = train_demo(data_dir, args.out / "train", args.init_weights, args.threads, epochs=args.epochs,
                       lr_step_size=args.lr_step_size)
    packed = pack(fp32, args.out / "model.pt")
    result = measure(packed, args.photos, args.score_seed)
    (args.out / "scores.json").write_text(json.dumps(result, indent=1))
    draw_examples(packed, args.out / "examples.png", seed=args.score_seed)
    print(json.dumps({k: v for k, v in result.items() if k != "confusion"}, indent=1))
    if args.install:
        default_model_path().parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(packed, default_model_path())
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())

__all__ = ["DEMO_OVERRIDES", "train_demo", "pack", "measure", "draw_examples"]
