"""Training of a bundle's cascade (stage 1 and the per-muscle stage-2 models).

Cases are right-leg-looking crops: a left side is mirrored by reflecting the world x axis of its
affine (the array is untouched; the cascade reorients to RAS, so the anatomy then looks like a
right leg) and its label values are mapped to the right-side (base) values.
"""
from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
from monai.data import MetaTensor, get_track_meta, set_track_meta
from monai.losses import DiceCELoss
from monai.transforms import LoadImage, Orientation, RandSpatialCropd, Spacing, SpatialPadd
from monai.utils import set_determinism

from .. import labels as ontology
from .boxes import Box, BoxPriors, box_from_mask
from .model import groups_for, read_bundle_config, right_value

# Our affines are voxel -> RAS+ mm; say so rather than rely on the MetaTensor's "space" (MONAI 1.6 warns).
RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))

__all__ = ["mirror_world_x", "load_case", "split_sides", "load_side_cases", "prepare_case", "evaluate_cascade", "CascadeTrainer"]

log = logging.getLogger(__name__)

REFLECT_X = np.diag([-1.0, 1.0, 1.0, 1.0])


def mirror_world_x(image: MetaTensor) -> MetaTensor:
    """Reflect world x (left ↔ right) by changing only the affine: a left leg then looks like a right one."""
    out = image.clone()
    out.affine = torch.as_tensor(REFLECT_X @ np.asarray(image.affine, float))
    return out


def _structure_of_value(value: int, label_map: dict) -> tuple[str, str | None]:
    name = label_map[value]
    if name.endswith("_left"):
        return name[: -len("_left")], "left"
    if name.endswith("_right"):
        return name[: -len("_right")], "right"
    return name, None


def load_case(image_path: str, label_path: str, label_map: str | dict) -> tuple[MetaTensor, MetaTensor]:
    """Read an image and its label map; source values → ontology values.

    ``label_map``: a dataset map name of :mod:`muscle_pipeline.datasets` (``"qmritools_calf"``) or
    a dict source value → ontology name (``"soleus_right"``; a side-less name means the right
    side). Unmapped source values become background.
    """
    loader = LoadImage(image_only=True, ensure_channel_first=True)
    image = loader(image_path).float()
    source = loader(label_path)
    if isinstance(label_map, str):
        from ..datasets import map_labels

        mapped = np.asarray(map_labels(np.asarray(source[0]).round().astype(np.int64), label_map))
    else:
        src = np.asarray(source[0]).round().astype(np.int64)
        mapped = np.zeros(src.shape, np.uint8)
        for value, name in label_map.items():
            structure, side = _structure_of_value(int(value), {int(value): name})
            mapped[src == int(value)] = right_value(structure) + (ontology.LEFT_OFFSET if side == "left" else 0)
    labels = MetaTensor(torch.as_tensor(mapped.astype(np.uint8)[None]), affine=source.affine, meta=dict(source.meta))
    return image, labels


def split_sides(image: MetaTensor, labels: MetaTensor) -> list[tuple[MetaTensor, MetaTensor]]:
    """Split a two-sided case at the world-x midline between right- and left-labelled voxels.

    Returns ``[right, left_mirrored]``, each a right-leg-looking (image, labels) pair with
    right-side values. The midline is the mean of the right and left label centroids' x (mm).
    """
    lab = np.asarray(labels[0])
    affine = np.asarray(image.affine, float)
    idx = np.argwhere(lab > 0)
    world = idx @ affine[:3, :3].T + affine[:3, 3]
    vals = lab[tuple(idx.T)]
    sides = {int(v): ontology.label(int(v)).side for v in np.unique(vals)}
    side = np.array([sides[int(v)] for v in vals], dtype=object)
    midline = (world[side == "right", 0].mean() + world[side == "left", 0].mean()) / 2
    # world x of every index along each array axis: find the axis that carries x
    x_axis = int(np.argmax(np.abs(affine[0, :3])))
    coords = affine[0, x_axis] * np.arange(image.shape[1 + x_axis]) + affine[0, 3]
    out = []
    for keep_right in (True, False):
        sel = coords > midline if keep_right else coords <= midline
        sl = [slice(None)] * 4
        hits = np.nonzero(sel)[0]
        sl[1 + x_axis] = slice(int(hits.min()), int(hits.max()) + 1)
        start = [0, 0, 0]
        start[x_axis] = int(hits.min())
        crop_affine = Box(tuple(start), (0, 0, 0)).affine_of_crop(affine)
        img = MetaTensor(image[tuple(sl)].as_tensor().clone(), affine=torch.as_tensor(crop_affine))
        lb = np.asarray(labels[tuple(sl)]).copy()
        # keep this side's sided structures as right-side values; drop the other side and unsided ones
        keep = [v for v, sd in sides.items() if sd == ("right" if keep_right else "left")]
        lb = np.where(np.isin(lb, keep), lb, 0).astype(np.uint8)
        if not keep_right:
            lb[lb > ontology.LEFT_OFFSET] -= ontology.LEFT_OFFSET
        lbl = MetaTensor(torch.as_tensor(lb), affine=torch.as_tensor(crop_affine))
        if not keep_right:
            img, lbl = mirror_world_x(img), mirror_world_x(lbl)
        out.append((img, lbl))
    return out


def load_side_cases(entry: dict) -> list[tuple[MetaTensor, MetaTensor]]:
    """Right-leg-looking (image, labels) pairs of one dataset entry.

    ``entry``: ``{"image", "label", "label_map", "sides"}``; ``sides`` is ``"right"`` (as is),
    ``"left"`` (mirrored, values made right-side) or ``"both"`` (split at the midline).
    """
    image, labels = load_case(entry["image"], entry["label"], entry["label_map"])
    sides = entry.get("sides", "right")
    if sides == "both":
        return split_sides(image, labels)
    if sides == "left":
        lab = np.asarray(labels).copy()
        lab[lab < ontology.LEFT_OFFSET] = 0
        lab[lab > ontology.LEFT_OFFSET] -= ontology.LEFT_OFFSET
        return [(mirror_world_x(image), mirror_world_x(MetaTensor(torch.as_tensor(lab), affine=labels.affine)))]
    if sides != "right":
        raise ValueError(f"sides must be 'right', 'left' or 'both', got {sides!r}")
    lab = np.asarray(labels).copy()
    lab[lab > ontology.LEFT_OFFSET] = 0
    return [(image, MetaTensor(torch.as_tensor(lab), affine=labels.affine))]


def evaluate_cascade(model, dataset: list[dict], output_file: str | None = None) -> dict:
    """Dice per structure of ``model`` on every side case of ``dataset`` (entries as in training).

    Returns ``{"cases": [{"image", "side_index", "dice": {structure: d}, "mean_dice"}], "mean_dice"}``
    and writes it as JSON to ``output_file`` when given.
    """
    from ..metrics import dice

    results = []
    for entry in dataset:
        pairs = entry["cases"] if "cases" in entry else load_side_cases(entry)
        for i, (image, labels) in enumerate(pairs):
            pred = np.asarray(model.predict(image))
            ref = np.asarray(labels[0])
            scores = {m: float(dice(pred, ref, right_value(m))) for m in model.structures}
            results.append({"image": str(entry.get("image", "in-memory")), "side_index": i, "dice": scores,
                            "mean_dice": float(np.mean(list(scores.values())))})
    report = {"cases": results, "mean_dice": float(np.mean([r["mean_dice"] for r in results])) if results else None}
    if output_file:
        Path(output_file).parent.mkdir(parents=True, exist_ok=True)
        Path(output_file).write_text(json.dumps(report, indent=1))
    return report


def prepare_case(image: MetaTensor, labels: MetaTensor, cascade) -> dict:
    """Bring a (right-looking) case to the cascade's two grids with its preprocessing."""
    img2 = Spacing(pixdim=cascade["stage2_spacing"], mode="bilinear")(Orientation(axcodes="RAS", labels=RAS_LABELS)(image))
    lab2 = Spacing(pixdim=cascade["stage2_spacing"], mode="nearest")(Orientation(axcodes="RAS", labels=RAS_LABELS)(labels))
    if cascade.get("bias_correction") is not None:
        img2 = cascade["bias_correction"](img2)
    img2 = cascade["intensity"](img2)
    img1 = Spacing(pixdim=cascade["stage1_spacing"], mode="bilinear")(img2)
    lab1 = Spacing(pixdim=cascade["stage1_spacing"], mode="nearest")(lab2)
    return {"image2": img2.float(), "label2": lab2, "image1": img1.float(), "label1": lab1}


def _plain(x) -> torch.Tensor:
    return x.as_tensor() if isinstance(x, MetaTensor) else torch.as_tensor(x)


def _round_up(v: float, d: int) -> int:
    return int(math.ceil(v / d) * d)


class CascadeTrainer:
    """Trains a bundle's stage 1 and stage 2 from a list of labelled cases; writes ``models/``.

    Args:
        bundle: bundle name or folder (its ``configs/inference.json`` defines structures,
            spacings, networks, intensity preprocessing).
        dataset: list of ``{"image", "label", "label_map", "sides"}`` (``sides``: ``"right"``,
            ``"left"`` (mirrored), or ``"both"`` (split at the midline, left mirrored)).
        augmentation_stage1 / augmentation_stage2: MONAI dict transforms on keys image/label.
        patch_scale: stage-2 patch = mean training box shape × this, rounded up to the divisor.
        num_threads: torch CPU threads. 1 by default: on a shared, oversubscribed CPU two OpenMP
            threads per process spin-wait for each other (measured here: a 3D U-Net step took
            12 s with 2 threads and 0.7 s with 1 while other jobs ran).
    """

    def __init__(self, bundle, dataset: list[dict], augmentation_stage1=None, augmentation_stage2=None,
                 stage1_iterations: int = 300, stage2_iterations: int = 300, batch_size: int = 2, lr: float = 1e-3,
                 patch_scale: float = 1.4, max_patch=(96, 96, 64), crop_ratio_range=(1.0, 1.8), divisor: int = 4,
                 seed: int = 0, device: str = "cpu", output_dir: str | None = None, num_threads: int = 1,
                 distributed: bool = False, stage2_iterations_by_muscle: dict | None = None):
        self.parser = read_bundle_config(bundle)
        self.root = Path(self.parser["bundle_root"])
        self.output_dir = Path(output_dir) if output_dir else self.root / "models"
        self.dataset = dataset
        self.aug1, self.aug2 = augmentation_stage1, augmentation_stage2
        self.stage1_iterations, self.stage2_iterations = int(stage1_iterations), int(stage2_iterations)
        # small, thin muscles learn slower than the big ones: per-muscle iteration counts
        self.stage2_iterations_by_muscle = {k: int(v) for k, v in (stage2_iterations_by_muscle or {}).items()}
        self.batch_size, self.lr = int(batch_size), float(lr)
        self.patch_scale, self.max_patch = float(patch_scale), tuple(max_patch)
        self.crop_ratio_range = tuple(crop_ratio_range)
        self.divisor = int(divisor)
        self.seed, self.device = int(seed), torch.device(device)
        # distributed: torch.distributed must be initialised (torchrun + init_process_group); every
        # rank draws its own random crops, gradients are averaged by DistributedDataParallel, rank 0 writes
        self.distributed = bool(distributed) and torch.distributed.is_available() and torch.distributed.is_initialized()
        self.rank = torch.distributed.get_rank() if self.distributed else 0
        torch.set_num_threads(int(num_threads))
        self.structures = list(self.parser["structures"])
        self.groups = groups_for(self.structures, self.parser.get("groups"))
        self.cascade = {
            "stage1_spacing": self.parser["stage1_spacing"],
            "stage2_spacing": self.parser["stage2_spacing"],
            "intensity": self.parser.get_parsed_content("intensity"),
            "bias_correction": self.parser.get_parsed_content("bias_correction") if self.parser.get("bias_correction") else None,
        }
        self._cases = None

    # --- data ----------------------------------------------------------------------------------
    @property
    def cases(self) -> list[dict]:
        if self._cases is None:
            self._cases = []
            for entry in self.dataset:
                pairs = entry["cases"] if "cases" in entry else load_side_cases(entry)
                for image, labels in pairs:
                    self._cases.append(prepare_case(image, labels, self.cascade))
        return self._cases

    def world_boxes(self, case: dict) -> dict:
        lab = np.asarray(case["label2"][0])
        out = {}
        for m in self.structures:
            b = box_from_mask(lab == right_value(m))
            if b is not None:
                out[m] = b.to_world(np.asarray(case["label2"].affine))
        return out

    def patch_size(self, muscle: str) -> tuple[int, int, int]:
        v = right_value(muscle)
        shapes, extents = [], []
        for c in self.cases:
            b = box_from_mask(np.asarray(c["label2"][0]) == v)
            if b is not None:
                shapes.append(b.shape)
                extents.append(c["label2"].shape[1:])
        mean = np.mean(shapes, 0) * self.patch_scale
        cap = np.minimum(np.max(extents, 0), self.max_patch)
        return tuple(_round_up(max(min(m, c), self.divisor), self.divisor) for m, c in zip(mean, cap))

    # --- stage 1 -------------------------------------------------------------------------------
    def group_target(self, case: dict) -> torch.Tensor:
        lab = np.asarray(case["label1"][0])
        out = np.zeros(lab.shape, np.int64)
        for gi, muscles in enumerate(self.groups.values(), start=1):
            for m in muscles:
                out[lab == right_value(m)] = gi
        return torch.as_tensor(out[None])

    def train_stage1(self) -> Path:
        network = self.parser.get_parsed_content("stage1_network").to(self.device)
        roi = tuple(self.parser["stage1_roi"])
        samples = [{"image": _plain(c["image1"]), "label": self.group_target(c).float()} for c in self.cases]
        pad, crop = SpatialPadd(["image", "label"], roi), RandSpatialCropd(["image", "label"], roi, random_size=False)

        def sample(rng):
            d = crop(pad(dict(samples[rng.integers(len(samples))])))
            return self.aug1(d) if self.aug1 is not None else d

        self._fit(network, sample, self.stage1_iterations, "stage 1")
        return self._save(network, "stage1.pt")

    # --- stage 2 -------------------------------------------------------------------------------
    def train_stage2(self, muscle: str) -> Path:
        if muscle not in self.structures:
            raise KeyError(f"{muscle!r} is not one of this bundle's structures {self.structures}")
        network = self.parser.get_parsed_content("stage2_network")().to(self.device)
        patch = self.patch_size(muscle)
        v = right_value(muscle)
        items = []
        for c in self.cases:
            mask = np.asarray(c["label2"][0]) == v
            box = box_from_mask(mask)
            if box is not None:
                items.append((c["image2"], torch.as_tensor(mask[None].astype(np.float32)), box))
        pad = SpatialPadd(["image", "label"], patch)
        crop = RandSpatialCropd(["image", "label"], patch, random_size=False)
        from .boxes import enlarge_box

        def sample(rng):
            image, mask, box = items[rng.integers(len(items))]
            shape = tuple(image.shape[1:])
            enlarged = enlarge_box(box, shape, rng, self.crop_ratio_range)
            # crop with a context margin so rotations/elastic warps pull in real tissue, not zeros
            margin = [max(2, s // 4) for s in enlarged.shape]
            outer = Box(tuple(a - m for a, m in zip(enlarged.start, margin)),
                        tuple(b + m for b, m in zip(enlarged.stop, margin))).clip(shape)
            d = {"image": _plain(image[(slice(None), *outer.slices)]).clone(),
                 "label": mask[(slice(None), *outer.slices)].clone()}
            if self.aug2 is not None:
                d = self.aug2(d)
            inner = tuple(slice(a - o, b - o) for a, b, o in zip(enlarged.start, enlarged.stop, outer.start))
            d = {k: torch.as_tensor(x)[(slice(None), *inner)] for k, x in d.items()}
            return crop(pad(d))

        iterations = self.stage2_iterations_by_muscle.get(muscle, self.stage2_iterations)
        self._fit(network, sample, iterations, f"stage 2 {muscle} patch {patch}")
        self._update_meta(patch_sizes={muscle: list(patch)})
        return self._save(network, f"stage2_{muscle}.pt")

    def fit_priors(self) -> BoxPriors:
        priors = BoxPriors.fit([self.world_boxes(c) for c in self.cases], self.groups)
        self._update_meta(priors=priors.to_dict())
        return priors

    # --- plumbing ------------------------------------------------------------------------------
    def _fit(self, network, sample, iterations: int, what: str):
        set_determinism(self.seed + self.rank)
        rng = np.random.default_rng(self.seed + self.rank)
        module = network
        if self.distributed:
            network = torch.nn.parallel.DistributedDataParallel(network)
        loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
        opt = torch.optim.Adam(network.parameters(), lr=self.lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, iterations))
        network.train()
        # plain tensors through the augmentation: MetaTensor bookkeeping doubles its cost on CPU
        track_meta = get_track_meta()
        set_track_meta(False)
        t0, running = time.time(), []
        for it in range(iterations):
            batch = [sample(rng) for _ in range(self.batch_size)]
            x = torch.stack([torch.as_tensor(b["image"]) for b in batch]).float().to(self.device)
            y = torch.stack([torch.as_tensor(b["label"]) for b in batch]).round().long().to(self.device)
            opt.zero_grad()
            loss = loss_fn(network(x), y)
            loss.backward()
            opt.step()
            sched.step()
            running.append(float(loss.detach()))
            if (it + 1) % 50 == 0 or it + 1 == iterations:
                log.info("%s: iteration %d/%d loss %.4f (%.0f s)", what, it + 1, iterations,
                         float(np.mean(running[-50:])), time.time() - t0)
        set_track_meta(track_meta)
        module.eval()
        set_determinism(None)

    def _save(self, network, name: str) -> Path:
        path = self.output_dir / name
        if self.rank == 0:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            torch.save(network.state_dict(), path)
        return path

    def _update_meta(self, **entries):
        if self.rank != 0:
            return
        import fcntl

        path = self.output_dir / "cascade.json"
        self.output_dir.mkdir(parents=True, exist_ok=True)
        # a lock, so that stage-2 runs of different muscles in parallel processes do not clobber each other
        with open(self.output_dir / ".cascade.json.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            meta = json.loads(path.read_text()) if path.exists() else {}
            for k, v in entries.items():
                if k == "patch_sizes" and isinstance(meta.get(k), dict):
                    meta[k].update(v)
                else:
                    meta[k] = v
            path.write_text(json.dumps(meta, indent=1))

    def run(self, stage: int | str = "all", muscle: str | None = None) -> list[Path]:
        """Train: ``stage`` 1, 2 (all muscles, or only ``muscle``) or ``"all"``; returns written files."""
        written = []
        stage = str(stage)
        if stage in ("1", "all"):
            self.fit_priors()
            written.append(self.train_stage1())
        if stage in ("2", "all"):
            if not (self.output_dir / "cascade.json").exists():
                self.fit_priors()
            for m in [muscle] if muscle else self.structures:
                written.append(self.train_stage2(m))
        return written
