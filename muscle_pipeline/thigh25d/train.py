"""Training of the thigh CT models (2.5D views, 2D and 3D baselines) on leg crops.

Data: any number of CT scans with ontology label maps (or a source dataset's values plus its
``label_map`` name, e.g. TotalSegmentator's). Every scan goes through the same steps as at
inference: :func:`~muscle_pipeline.transforms.legs.split_legs` -> left legs mirrored with
:class:`~muscle_pipeline.transforms.legs.MirrorToRight` (label values swapped, so each crop is a
right leg) -> :class:`~muscle_pipeline.thigh25d.preprocess.ThighCTPreprocess` (femur axis,
2 mm, HU window). Class ``i + 1`` is ``structures[i]`` on the right side; everything else
(including the other leg's structures inside the crop margin) is background.

Seed 004 recipe: Dice loss (MONAI ``DiceLoss``), Adam, random affine augmentation with
+-10 % scale, +-10 px shift, +-20 deg rotation (MONAI ``RandAffined``). The seed's learning rate
is 1e-4 for 100 epochs of 38 volumes; our default is 1e-3 because we train a few hundred
iterations on one or two crops (a CPU budget of minutes).

    trainer = Thigh25DTrainer(structures, dataset=[{"image": ..., "label": ..., "sides": ["right"]}])
    trainer.run(kinds=("25d",), output_dir="bundles/thigh_ct_25d/models")
"""
from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from monai.data import MetaTensor
from monai.losses import DiceLoss
from monai.transforms import Compose, MapLabelValue, RandAffined, RandCropByPosNegLabeld, SpatialPadd
from monai.utils import set_determinism

from muscle_pipeline.cascade.model import right_value
from muscle_pipeline.thigh25d.network import baseline_unet3d, simple_unet2d
from muscle_pipeline.thigh25d.preprocess import ThighCTPreprocess
from muscle_pipeline.thigh25d.slices import VIEWS, NeighbourSlices
from muscle_pipeline.training_loop import fit
from muscle_pipeline.transforms.legs import right_looking_legs

__all__ = ["leg_crops", "class_map", "dataset_from_dir", "prepare_cases", "train_slices", "train_volume",
           "Thigh25DTrainer", "DEFAULT_THIGH_STRUCTURES", "merge_rank_info"]

log = logging.getLogger(__name__)

ROTATE_RAD = math.radians(20.0)
SCALE = 0.10
SHIFT_VOXELS = 10

# The seed's 11 classes (10 thigh muscles + background); the ontology has no single "10 muscles"
# list, so this is our choice of the muscles present along the whole thigh. Configurable.
DEFAULT_THIGH_STRUCTURES = (
    "rectus_femoris", "vastus_lateralis", "vastus_intermedius", "vastus_medialis", "sartorius", "gracilis",
    "adductor_magnus", "biceps_femoris_long_head", "semitendinosus", "semimembranosus",
)


# ------------------------------------------------------------------------------------------------
# data
def leg_crops(image: MetaTensor, label: MetaTensor, sides: Sequence[str] | None = None,
              margin_mm: float = 15.0) -> list[dict]:
    """Right-looking leg crops cut as inference cuts them (:func:`~muscle_pipeline.transforms.legs.right_looking_legs`)."""
    return right_looking_legs(image, label, sides, margin_mm)


def class_map(label: torch.Tensor, structures: Sequence[str]) -> torch.Tensor:
    """Right-side ontology values -> class indices (``structures[i]`` -> ``i + 1``, rest 0), uint8."""
    present = [int(v) for v in torch.unique(torch.as_tensor(label)).tolist()]
    wanted = {right_value(name): i + 1 for i, name in enumerate(structures)}
    mapper = MapLabelValue(present, [wanted.get(v, 0) for v in present], dtype=np.uint8)
    return torch.as_tensor(np.asarray(mapper(np.asarray(label)))).to(torch.uint8)


def dataset_from_dir(dataset_dir: str | os.PathLike, label_map: str | None = None) -> list[dict]:
    """Entries of a folder laid out as ``imagesTr/<case>.nii.gz`` + ``labelsTr/<case>.nii.gz``
    (nnU-Net style; labels in ontology values unless ``label_map`` names a source dataset)."""
    root = Path(dataset_dir)
    images = sorted((root / "imagesTr").glob("*.nii*"))
    if not images:
        raise FileNotFoundError(f"{root}: no imagesTr/*.nii(.gz)")
    entries = []
    for image in images:
        label = root / "labelsTr" / image.name
        if not label.is_file():
            raise FileNotFoundError(f"{image}: no label map {label}")
        entries.append({"image": str(image), "label": str(label), "label_map": label_map})
    return entries


def _read_pair(entry: Mapping) -> tuple[MetaTensor, MetaTensor]:
    from muscle_pipeline.datasets import map_labels
    from muscle_pipeline.io import read_image

    image = read_image(entry["image"])
    label = read_image(entry["label"])
    label = MetaTensor(label.as_tensor().round().to(torch.int32), affine=label.affine.clone())
    if entry.get("label_map"):
        label = map_labels(label, entry["label_map"])
    return image, label


def prepare_cases(crops: Sequence[Mapping], structures: Sequence[str],
                  preprocess: ThighCTPreprocess | None = None) -> list[dict]:
    """Right-looking crops -> ``[{"image": (1, X, Y, Z) float, "label": (1, X, Y, Z) uint8 classes}]``
    on the model grid (the predict-time preprocessing; the label follows the same femur fit)."""
    preprocess = preprocess or ThighCTPreprocess()
    cases = []
    for crop in crops:
        prepared = preprocess(crop["image"], crop["label"])
        for note in prepared.notes:
            log.info("%s leg: %s", crop.get("side", "?"), note)
        cases.append({"image": prepared.image.as_tensor().float(),
                      "label": class_map(prepared.label.as_tensor(), structures),
                      "notes": prepared.notes})
    return cases


# ------------------------------------------------------------------------------------------------
# training loops
def _dice_loss() -> DiceLoss:
    # batch=True: Dice over the whole batch, so a slice without some class does not give that
    # class a meaningless per-sample score
    return DiceLoss(to_onehot_y=True, softmax=True, batch=True)


def _slice_pool(cases: Sequence[Mapping], spatial_dim: int, offsets: Sequence[int]) -> tuple[list, np.ndarray]:
    """All 2D samples of one view: ``(image (C, H, W), label (1, H, W))`` and a foreground flag each."""
    stacker = NeighbourSlices(spatial_dim, offsets)
    samples, foreground = [], []
    for case in cases:
        stacked = stacker(case["image"])
        axis = spatial_dim + 1
        for i in range(stacked.shape[axis]):
            label = case["label"].select(axis, i)
            samples.append((stacked.select(axis, i), label))
            foreground.append(bool(label.any()))
    return samples, np.asarray(foreground)


def _pick(rng: np.random.Generator, foreground: np.ndarray, n: int, foreground_fraction: float) -> np.ndarray:
    """Sample indices; ``foreground_fraction`` of them from slices containing a structure."""
    fg = np.flatnonzero(foreground)
    n_fg = int(round(n * foreground_fraction)) if fg.size else 0
    return np.concatenate([rng.choice(fg, n_fg), rng.integers(0, foreground.size, n - n_fg)])


def train_slices(cases: Sequence[Mapping], view: str, n_classes: int, offsets: Sequence[int] = (-2, 0, 2),
                 iterations: int = 100, batch_size: int = 4, lr: float = 3e-3, seed: int = 0,
                 channels: Sequence[int] = (16, 32, 64), patch_size: Sequence[int] = (96, 96),
                 foreground_fraction: float = 0.8, augment: bool = True,
                 device: str | torch.device = "cpu", initial_state: Mapping | None = None, loss=None,
                 optimizer=None, lr_scheduler=None) -> tuple[torch.nn.Module, dict]:
    """Train one simplified 2D U-Net on the slices of ``view`` ("axial", "coronal", "sagittal").

    Each step: ``batch_size`` slices (``foreground_fraction`` of them showing a structure), a
    ``patch_size`` crop of each (3 of 4 centred on a structure; inference runs on whole slices,
    the network is fully convolutional), random affine augmentation.
    """
    set_determinism(seed)
    rng = np.random.default_rng(seed)
    spatial_dim = VIEWS[view]
    samples, foreground = _slice_pool(cases, spatial_dim, offsets)
    size = list(patch_size)
    steps = [SpatialPadd(("image", "label"), spatial_size=size),
             RandCropByPosNegLabeld(("image", "label"), "label", spatial_size=size, pos=3, neg=1, num_samples=1)]
    if augment:
        steps.append(RandAffined(("image", "label"), prob=0.9, rotate_range=(ROTATE_RAD,), scale_range=(SCALE, SCALE),
                                 translate_range=(SHIFT_VOXELS, SHIFT_VOXELS), mode=("bilinear", "nearest"),
                                 padding_mode="zeros"))
    transform = Compose(steps).set_random_state(seed)  # the crop returns a list; Compose maps the rest over it
    net = simple_unet2d(n_classes, in_channels=len(offsets), channels=channels)
    if initial_state is not None:  # fine-tuning (e.g. from weights trained on fewer cases)
        net.load_state_dict(initial_state)

    def draw_batch() -> list[dict]:
        return [transform({"image": samples[i][0], "label": samples[i][1]})[0]
                for i in _pick(rng, foreground, batch_size, foreground_fraction)]

    final_loss, seconds = _optimise(net, draw_batch, iterations, lr, device, f"{view} view", loss, optimizer,
                                      lr_scheduler)
    return net, {"view": view, "iterations": iterations, "batch_size": batch_size, "lr": lr,
                 "in_channels": len(offsets), "n_slices": len(samples), "slice_size": size,
                 "final_loss": final_loss, "seconds": seconds}


def train_volume(cases: Sequence[Mapping], n_classes: int, iterations: int = 60, batch_size: int = 2,
                 patch_size: Sequence[int] = (48, 48, 48), lr: float = 3e-3, seed: int = 0,
                 channels: Sequence[int] = (16, 32, 64), augment: bool = True,
                 device: str | torch.device = "cpu", initial_state: Mapping | None = None, loss=None,
                 optimizer=None, lr_scheduler=None) -> tuple[torch.nn.Module, dict]:
    """Train the 3D U-Net baseline on random patches (2 of 3 centred on a structure)."""
    set_determinism(seed)
    rng = np.random.default_rng(seed)
    steps = [SpatialPadd(("image", "label"), spatial_size=patch_size),
             RandCropByPosNegLabeld(("image", "label"), "label", spatial_size=patch_size, pos=2, neg=1, num_samples=1)]
    transform = Compose(steps).set_random_state(seed)
    affine = RandAffined(("image", "label"), prob=0.9, rotate_range=(ROTATE_RAD,) * 3, scale_range=(SCALE,) * 3,
                         translate_range=(SHIFT_VOXELS,) * 3, mode=("bilinear", "nearest"), padding_mode="zeros")
    affine.set_random_state(seed)
    net = baseline_unet3d(n_classes, channels=channels)
    if initial_state is not None:
        net.load_state_dict(initial_state)

    def draw_batch() -> list[dict]:
        batch = []
        for i in rng.integers(0, len(cases), batch_size):
            sample = transform({"image": cases[i]["image"], "label": cases[i]["label"]})[0]
            batch.append(affine(sample) if augment else sample)
        return batch

    final_loss, seconds = _optimise(net, draw_batch, iterations, lr, device, "3D", loss, optimizer, lr_scheduler)
    return net, {"iterations": iterations, "batch_size": batch_size, "patch_size": list(patch_size), "lr": lr,
                 "final_loss": final_loss, "seconds": seconds}


def _optimise(net: torch.nn.Module, draw_batch, iterations: int, lr: float, device, name: str, loss=None,
              optimizer=None, lr_scheduler=None) -> tuple[float, float]:
    """:func:`muscle_pipeline.training_loop.fit` for ``iterations`` batches of ``draw_batch()`` (dicts of
    a channel-first ``image`` and a ``(1, *spatial)`` class-index ``label``); ``loss`` None: the soft
    Dice loss, ``optimizer`` None: Adam at ``lr``. Leaves ``net`` in eval mode on the CPU.
    Returns the mean loss of the last 20 steps and the seconds taken."""
    result = fit(net, draw_batch, iterations, loss if loss is not None else _dice_loss(), optimizer=optimizer,
                 lr_scheduler=lr_scheduler, lr=lr, device=device, what=name)
    net.cpu()
    return float(np.mean(result["losses"][-20:])), result["seconds"]


# ------------------------------------------------------------------------------------------------
class Thigh25DTrainer:
    """Config-driven training (``configs/train.json``): reads the data, prepares leg crops, trains
    the requested kinds and writes ``<output_dir>/{view_*.pt, 2d_axial.pt, 3d.pt, train_info.json}``.

    ``dataset``: ``[{"image", "label", "label_map" (optional), "sides" (optional)}]``;
    ``dataset_dir``: a folder read by :func:`dataset_from_dir` (added to ``dataset``).
    """

    def __init__(self, structures: Sequence[str], dataset: Sequence[Mapping] = (), dataset_dir: str | None = None,
                 label_map: str | None = None, output_dir: str = "models", views: Sequence[str] = tuple(VIEWS),
                 offsets: Sequence[int] = (-2, 0, 2), iterations: int = 100, iterations_3d: int | None = 60,
                 batch_size: int = 4, batch_size_3d: int = 2, patch_size_3d: Sequence[int] = (48, 48, 48),
                 lr: float = 3e-3, channels: Sequence[int] = (16, 32, 64), margin_mm: float = 15.0,
                 patch_size: Sequence[int] = (96, 96),
                 preprocess: ThighCTPreprocess | None = None, seed: int = 0, threads: int = 2,
                 device: str | torch.device = "cpu", init_dir: str | None = None, loss=None, optimizer=None,
                 lr_scheduler=None) -> None:
        if isinstance(structures, str):  # "--structures a,b,c" from the command line
            structures = [s.strip() for s in structures.split(",") if s.strip()]
        self.structures = list(structures)
        for name in self.structures:
            right_value(name)  # KeyError names an unknown structure now, not after training
        self.dataset = list(dataset) + (dataset_from_dir(dataset_dir, label_map) if dataset_dir else [])
        if not self.dataset:
            raise ValueError("no training data: give dataset entries or --dataset_dir")
        self.output_dir = Path(output_dir)
        self.views = list(views)
        self.offsets = tuple(offsets)
        self.iterations = int(iterations)
        self.iterations_3d = int(iterations_3d if iterations_3d is not None else iterations)
        self.batch_size, self.batch_size_3d = int(batch_size), int(batch_size_3d)
        self.patch_size_3d = tuple(patch_size_3d)
        self.patch_size = tuple(patch_size)
        self.lr = float(lr)
        self.channels = tuple(channels)
        self.margin_mm = float(margin_mm)
        self.preprocess = preprocess or ThighCTPreprocess()
        self.seed = int(seed)
        self.device = torch.device(device)
        self.init_dir = Path(init_dir) if init_dir else None
        # train.json's loss / optimizer(parameters) / lr_scheduler(optimizer, iterations); None: soft
        # Dice loss, Adam at lr, constant rate (the seed-004 recipe)
        self.loss, self.optimizer, self.lr_scheduler = loss, optimizer, lr_scheduler
        torch.set_num_threads(int(threads))

    @staticmethod
    def _rank_and_world() -> tuple[int, int]:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def _jobs(self, kinds: Sequence[str]) -> list[tuple[str, str | None]]:
        """(kind, view) networks to train; with torch.distributed each rank takes every
        ``world_size``-th one (the networks are independent, so this is the multi-GPU split)."""
        jobs = []
        for kind in kinds:
            if kind == "25d":
                jobs += [("25d", view) for view in self.views]
            elif kind in ("2d", "3d"):
                jobs.append((kind, "axial" if kind == "2d" else None))
            else:
                raise ValueError(f"unknown kind {kind!r}; choose from '25d', '2d', '3d'")
        rank, world = self._rank_and_world()
        return jobs[rank::world]

    def cases(self) -> list[dict]:
        crops = []
        for entry in self.dataset:
            image, label = _read_pair(entry)
            sides = entry.get("sides")
            crops += leg_crops(image, label, [sides] if isinstance(sides, str) else sides, self.margin_mm)
        return prepare_cases(crops, self.structures, self.preprocess)

    def run(self, kinds: Sequence[str] = ("25d",), cases: Sequence[Mapping] | None = None) -> dict:
        kinds = [kinds] if isinstance(kinds, str) else list(kinds)
        cases = self.cases() if cases is None else cases
        self.output_dir.mkdir(parents=True, exist_ok=True)
        n_classes = len(self.structures) + 1
        info = {"structures": self.structures, "n_cases": len(cases), "notes": [c.get("notes", []) for c in cases],
                "offsets": list(self.offsets), "networks": {}}
        common = dict(lr=self.lr, seed=self.seed, channels=self.channels, device=self.device, loss=self.loss,
                      optimizer=self.optimizer, lr_scheduler=self.lr_scheduler)
        for kind, view in self._jobs(kinds):
            name = "3d" if kind == "3d" else (f"view_{view}" if kind == "25d" else "2d_axial")
            initial = None
            if self.init_dir is not None and (self.init_dir / f"{name}.pt").is_file():
                initial = torch.load(self.init_dir / f"{name}.pt", map_location="cpu", weights_only=True)
            if kind == "3d":
                net, stats = train_volume(cases, n_classes, self.iterations_3d, self.batch_size_3d,
                                          self.patch_size_3d, initial_state=initial, **common)
            else:
                offsets = self.offsets if kind == "25d" else (0,)
                net, stats = train_slices(cases, view, n_classes, offsets, self.iterations, self.batch_size,
                                          patch_size=self.patch_size, initial_state=initial, **common)
            stats["initialised_from"] = None if initial is None else str(self.init_dir / f"{name}.pt")
            torch.save(net.state_dict(), self.output_dir / f"{name}.pt")
            info["networks"][name] = stats
        if self._rank_and_world()[1] > 1:
            name = f"train_info_rank{self._rank_and_world()[0]}.json"
            (self.output_dir / name).write_text(json.dumps(info, indent=1))
            return info
        _update_info(self.output_dir / "train_info.json", info)
        return info


def _update_info(path: Path, info: Mapping) -> None:
    """Merge ``info`` into ``train_info.json`` (networks trained earlier stay listed)."""
    previous = json.loads(path.read_text()) if path.is_file() else {}
    previous.update({k: v for k, v in info.items() if k != "networks"})
    previous.setdefault("networks", {}).update(info["networks"])
    path.write_text(json.dumps(previous, indent=1))


def merge_rank_info(output_dir: str | Path) -> Path:
    """After a multi-GPU run: merge every ``train_info_rank*.json`` into ``train_info.json``."""
    output_dir = Path(output_dir)
    for part in sorted(output_dir.glob("train_info_rank*.json")):
        _update_info(output_dir / "train_info.json", json.loads(part.read_text()))
        part.unlink()
    return output_dir / "train_info.json"
