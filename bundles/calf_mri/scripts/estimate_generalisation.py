"""Estimate how the calf cascade generalises beyond the one labelled leg (honest hold-out).

We have one labelled leg, so two proxies, each training the cascade exactly as
``configs/train.json`` does (same augmentation, iterations, networks) on part of the data and
measuring Dice on data the models never saw:

* ``zsplit``: train on the cranial 2/3 of the slices, test on the caudal 1/3 (``--reverse``:
  train caudal 2/3, test cranial 1/3). Muscle shapes change along the calf, so this is harder
  than the real task (the other leg covers the same levels).
* ``mirror``: train on a mirrored (world x reflected) and elastically deformed, intensity-changed
  copy of the leg, test on the original leg. NOTE: the box priors are side-specific (learned on
  right-looking legs, as the segment job always supplies), so a mirrored training copy places
  medial muscles laterally: this mode measures that failure, not generalisation.
* ``deform``: the same deformed, re-contrasted copy without mirroring, test on the original.

Usage (from the repository root)::

    python bundles/calf_mri/scripts/estimate_generalisation.py zsplit [--reverse] [--iterations N]
    python bundles/calf_mri/scripts/estimate_generalisation.py mirror|deform [--iterations N]

Prints one JSON line with per-muscle Dice and the mean.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor

from muscle_pipeline.cascade import Box, bundle_path, load_cascade
from muscle_pipeline.cascade.model import right_value
from muscle_pipeline.cascade.training import CascadeTrainer, load_case
from muscle_pipeline.transforms.legs import MirrorToRight
from muscle_pipeline.metrics import dice


def z_slab(image: MetaTensor, start: int, stop: int) -> MetaTensor:
    affine = Box((0, 0, start), (0, 0, 0)).affine_of_crop(np.asarray(image.affine))
    return MetaTensor(image[..., start:stop].as_tensor().clone(), affine=torch.as_tensor(affine))


def deformed_mirror(image: MetaTensor, labels: MetaTensor, seed: int = 1, mirror: bool = True) -> tuple[MetaTensor, MetaTensor]:
    from monai.transforms import Rand3DElasticd, RandAdjustContrastd, RandBiasFieldd

    d = {"image": image, "label": labels.float()}
    d = Rand3DElasticd(["image", "label"], sigma_range=(4, 6), magnitude_range=(60, 120), prob=1.0,
                       rotate_range=(0, 0, 0.15), scale_range=(0.1, 0.1, 0.0), mode=("bilinear", "nearest"),
                       padding_mode="zeros").set_random_state(seed)(d)
    d = RandBiasFieldd("image", prob=1.0, coeff_range=(0.2, 0.3)).set_random_state(seed)(d)
    d = RandAdjustContrastd("image", prob=1.0, gamma=(1.3, 1.4)).set_random_state(seed)(d)
    img = MetaTensor(torch.as_tensor(d["image"]).float(), affine=image.affine)
    lab = MetaTensor(torch.as_tensor(d["label"]).round().to(torch.uint8), affine=labels.affine)
    return (MirrorToRight()(img, side="left"), MirrorToRight(labels=True)(lab, side="left")) if mirror else (img, lab)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=["zsplit", "mirror", "deform"])
    ap.add_argument("--reverse", action="store_true")
    ap.add_argument("--iterations", type=int, default=None, help="override stage-1/2 iterations of train.json")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    root = bundle_path("calf_mri")
    train_cfg = ConfigParser()
    train_cfg.read_config(str(root / "configs" / "train.json"))
    entry = train_cfg.get_parsed_content("dataset")[0]
    image, labels = load_case(entry["image"], entry["label"], entry["label_map"])
    nz = image.shape[-1]
    cut = int(round(nz / 3))
    if args.mode == "zsplit":
        # array z is world superior here (diagonal RAS header): cranial = high z
        if not args.reverse:
            train = [(z_slab(image, cut, nz), z_slab(labels, cut, nz))]
            test = (z_slab(image, 0, cut), z_slab(labels, 0, cut))
        else:
            train = [(z_slab(image, 0, nz - cut), z_slab(labels, 0, nz - cut))]
            test = (z_slab(image, nz - cut, nz), z_slab(labels, nz - cut, nz))
    else:
        train = [deformed_mirror(image, labels, mirror=args.mode == "mirror")]
        test = (image, labels)

    out = Path(tempfile.mkdtemp(prefix="calf_holdout_"))
    kwargs = dict(train_cfg["trainer"])
    its = args.iterations
    trainer = CascadeTrainer(
        root, [{"cases": train}],
        augmentation_stage1=train_cfg.get_parsed_content("augmentation_stage1"),
        augmentation_stage2=train_cfg.get_parsed_content("augmentation_stage2"),
        stage1_iterations=its or kwargs["stage1_iterations"], stage2_iterations=its or kwargs["stage2_iterations"],
        batch_size=kwargs["batch_size"], lr=kwargs["lr"], patch_scale=kwargs["patch_scale"],
        crop_ratio_range=kwargs["crop_ratio_range"], seed=kwargs["seed"], output_dir=str(out))
    trainer.run("all")
    model = load_cascade(root, models_dir=out)
    pred = model.predict(test[0])
    ref = np.asarray(test[1][0])
    scores = {m: round(float(dice(np.asarray(pred), ref, right_value(m))), 4) for m in model.structures}
    result = {"mode": args.mode, "reverse": args.reverse, "dice": scores,
              "mean_dice": round(float(np.mean(list(scores.values()))), 4), "models": str(out)}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
