"""Training of a bundle's cascade (stage 1 and the per-muscle stage-2 models).

Cases are right-leg-looking crops cut exactly as inference cuts them: legs split at the body
mask's valley, a left leg mirrored by ``MirrorToRight`` (array flipped, world x reflected) with
its label values swapped to the right-side (base) values; both preprocessed by the inference's
``prepare_grids``.

A dataset entry with ``"synthesize": true`` has a label map and no image (the completed
anatomical atlas, :func:`muscle_pipeline.atlas.training_entries`): every training draw crops the
label scene, changes it (``synthesis``: muscle size, field of view) and draws a new image from it
(:class:`~muscle_pipeline.transforms.synthesis.SynthesizeImaged`: random MR contrast or CT,
resolution, bias, noise), SynthSeg-style, so the network never sees the same contrast twice. The
scene keeps its fat, skin and bones (they make the image); the target is the bundle's structures,
finer atlas muscles merged into their parent (gemelli -> external_rotators).
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import torch
from monai.data import MetaTensor, get_track_meta, set_track_meta
from monai.transforms import LoadImage, RandSpatialCropd, SpatialPadd
from monai.utils import set_determinism

from .. import labels as ontology
from ..training_loop import batch_drawer, fit, plain_tensor
from .boxes import Box, BoxPriors, box_from_mask
from .model import groups_for, prepare_grids, read_bundle_config, right_value

__all__ = ["load_case", "load_scene", "one_side", "load_side_cases", "structure_lut",
           "annotated_structures", "source_name", "group_lut", "prepare_case", "prepare_scene", "default_synthesis", "evaluate_cascade", "CascadeTrainer"]

log = logging.getLogger(__name__)

def _structure_name(name: str) -> str:
    """``soleus_left`` -> ``soleus`` (a side-less name as it is)."""
    return name.removesuffix("_left").removesuffix("_right")


def _right_if_sideless(name: str) -> str:
    """A label name of a lab's own map: ``soleus`` (a sided structure without its side) means the
    right side, ``soleus_right``; full ontology names stay."""
    try:
        ontology.label(name)
        return name
    except KeyError:
        return f"{name}_right"


def load_case(image_path: str, label_path: str, label_map: str | dict) -> tuple[MetaTensor, MetaTensor]:
    """Read an image and its label map; source values → ontology values.

    ``label_map``: a dataset map name of :mod:`muscle_pipeline.datasets` (``"qmritools_calf"``) or
    a dict source value → ontology name (``"soleus_right"``; a side-less name means the right
    side). Unmapped source values become background.
    """
    from ..datasets import map_labels

    loader = LoadImage(image_only=True, ensure_channel_first=True)
    image = loader(image_path).float()
    source = loader(label_path)
    if not isinstance(label_map, str):  # a side-less name means the right side
        label_map = {int(v): _right_if_sideless(str(n)) for v, n in label_map.items()}
    mapped = np.asarray(map_labels(np.asarray(source[0]).round().astype(np.int64), label_map))
    labels = MetaTensor(torch.as_tensor(mapped.astype(np.uint8)[None]), affine=source.affine, meta=dict(source.meta))
    return image, labels


def _side_of(value: int) -> str | None:
    """"right" | "left" | None (unsided, or a value outside the ontology such as the atlas's
    generation-only tissues >= 200)."""
    try:
        return ontology.label(int(value)).side
    except KeyError:
        return None


_SWAP_SIDES = ontology.swap_sides_lut().astype(np.uint8)


def one_side(lab: np.ndarray, side: str, keep_unsided: bool = False) -> np.ndarray:
    """``side``'s sided structures of a label array in right-side (base) values; the other side's
    go to 0, unsided values (bones of the midline, tissues) are kept only with ``keep_unsided``."""
    values = {int(v): _side_of(int(v)) for v in np.unique(lab) if v}
    keep = [v for v, sd in values.items() if sd == side or (keep_unsided and sd is None)]
    out = np.where(np.isin(lab, keep), lab, 0).astype(np.uint8)
    return _SWAP_SIDES[out] if side == "left" else out


def load_side_cases(entry: dict) -> list[tuple[MetaTensor, MetaTensor]]:
    """Right-leg-looking (image, labels) pairs of one dataset entry, cut and mirrored as inference
    cuts and mirrors (:func:`~muscle_pipeline.transforms.legs.right_looking_legs`), with the
    leg's own structures on right-side values and the other leg's removed.

    ``entry``: ``{"image", "label", "label_map", "sides"}``; ``sides`` is ``"right"`` (as is),
    ``"left"`` (mirrored) or ``"both"`` (legs split, right first, the left mirrored).
    """
    from ..transforms.legs import MirrorToRight, right_looking_legs

    synthesize = bool(entry.get("synthesize"))
    if synthesize:  # a label scene: the "image" is the labels themselves, images are drawn later
        labels = load_scene(entry["label"], entry.get("label_map"))
        image = labels
    else:
        image, labels = load_case(entry["image"], entry["label"], entry["label_map"])
    sides = entry.get("sides", "right")
    if sides == "right":
        legs = [(image, labels)]
    elif sides == "left":
        legs = [(MirrorToRight()(image, side="left"), MirrorToRight(labels=True)(labels, side="left"))]
    elif sides == "both":
        crops = right_looking_legs(image, labels, threshold=0.5 if synthesize else None)
        legs = [(c["image"], c["label"]) for c in sorted(crops, key=lambda c: c["side"] != "right")]
    else:
        raise ValueError(f"sides must be 'right', 'left' or 'both', got {sides!r}")
    out = []
    for img, lab in legs:
        kept = MetaTensor(torch.as_tensor(one_side(np.asarray(lab), "right", keep_unsided=synthesize)), affine=lab.affine)
        out.append((kept if synthesize else img, kept))
    return out


def load_scene(label_path: str, label_map: str | dict | None = None) -> MetaTensor:
    """A label scene to synthesise from, (1, X, Y, Z) uint8: ontology values as stored (the
    completed atlas), or mapped with ``label_map`` like :func:`load_case`."""
    source = LoadImage(image_only=True, ensure_channel_first=True)(label_path)
    values = np.asarray(source[0]).round().astype(np.int64)
    if label_map is not None:
        if not isinstance(label_map, str):
            raise ValueError(f"{label_path}: a scene's label_map must be a dataset map name, got {type(label_map).__name__}")
        from ..datasets import map_labels

        values = np.asarray(map_labels(values, label_map))
    return MetaTensor(torch.as_tensor(np.clip(values, 0, 255).astype(np.uint8)[None]), affine=source.affine,
                      meta=dict(source.meta))


def structure_lut(structures: list[str]) -> np.ndarray:
    """256-entry lookup: ontology value -> the value of the bundle structure it belongs to (itself,
    or its parent when only the parent is a structure: gemelli -> external_rotators), same side;
    everything else 0."""
    lut = np.zeros(256, np.uint8)
    wanted = set(structures)
    for lab in ontology.all_labels():
        s = lab.structure
        offset = ontology.LEFT_OFFSET if lab.side == "left" else 0
        if s.name in wanted:
            lut[lab.value] = right_value(s.name) + offset
        elif s.parent in wanted:
            lut[lab.value] = right_value(s.parent) + offset
    return lut


def annotated_structures(entry: dict) -> set[str] | None:
    """Side-less ontology structures that ``entry``'s labels annotate; None: every structure.

    From ``entry["labelled"]`` when given, else from its label map (a dataset map of
    :mod:`muscle_pipeline.datasets` says which labels that dataset has; a dict's values). A
    ``"synthesize"`` entry (the completed atlas) annotates everything.
    """
    if entry.get("synthesize") and "labelled" not in entry:
        return None
    names = entry.get("labelled")
    if names is None:
        label_map = entry.get("label_map")
        if label_map is None:
            return None
        if isinstance(label_map, str):
            from ..datasets import dataset_map

            names = dataset_map(label_map).values()
        else:
            names = label_map.values()
    return {_structure_name(str(n)) for n in names}


def source_name(entry: dict, index: int) -> str:
    """A dataset entry's name in logs and per-source losses: ``name``, else its label map's name,
    else its label file's name."""
    if entry.get("name"):
        return str(entry["name"])
    if isinstance(entry.get("label_map"), str):
        return entry["label_map"]
    return Path(str(entry.get("label", f"entry{index}"))).name


def group_lut(structures: list[str], groups: dict[str, list[str]]) -> np.ndarray:
    """256-entry lookup: ontology value -> stage-1 group index (1..G), 0 for everything else.

    A value counts for the group of its structure, of its parent (finer atlas muscles), or of the
    structures it covers when they all lie in one group (TotalSegmentator's iliopsoas = iliacus +
    psoas major: the iliopsoas group)."""
    index_of = {m: gi for gi, ms in enumerate(groups.values(), start=1) for m in ms}
    lut = np.zeros(256, np.int64)
    for lab in ontology.all_labels():
        s = lab.structure
        parts = {index_of.get(c) for c in s.covers}
        if s.name in index_of:
            lut[lab.value] = index_of[s.name]
        elif s.parent in index_of:
            lut[lab.value] = index_of[s.parent]
        elif s.covers and len(parts) == 1 and None not in parts:
            lut[lab.value] = parts.pop()
    # the side-less bundle values (right = base) are what prepare_scene writes
    for m, gi in index_of.items():
        lut[right_value(m)] = gi
    return lut


def annotated_groups(annotated: set[str] | None, groups: dict[str, list[str]]) -> np.ndarray:
    """(G + 1,) bool: background, then whether each stage-1 group is wholly annotated (each of its
    structures labelled itself or covered by a labelled structure). A partly annotated group counts
    as unannotated: its labelled voxels cannot say where its unlabelled members are."""
    out = np.ones(len(groups) + 1, bool)
    if annotated is None:
        return out
    covered = set(annotated)
    for name in annotated:
        try:
            covered.update(ontology.structure(name).covers)
        except KeyError:
            pass
    for gi, members in enumerate(groups.values(), start=1):
        out[gi] = all(m in covered for m in members)
    return out


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


def prepare_scene(scene: MetaTensor, cascade, structures: list[str]) -> dict:
    """Bring a (right-looking) label scene to the cascade's two grids: ``scene1``/``scene2`` keep
    every value (to draw images from), ``label1``/``label2`` hold the bundle's structures."""
    grids = prepare_grids(None, cascade["stage1_spacing"], cascade["stage2_spacing"], labels=scene)
    lut = torch.as_tensor(structure_lut(structures).astype(np.int64))
    out = {"scene2": grids["label2"], "scene1": grids["label1"]}
    for key, lab in (("label2", grids["label2"]), ("label1", grids["label1"])):
        out[key] = MetaTensor(lut[plain_tensor(lab).round().long().clamp(0, 255)].to(torch.uint8), affine=lab.affine)
    return out


def prepare_case(image: MetaTensor, labels: MetaTensor, cascade) -> dict:
    """Bring a (right-looking) case to the cascade's two grids with the inference preprocessing."""
    grids = prepare_grids(image, cascade["stage1_spacing"], cascade["stage2_spacing"], cascade["intensity"],
                          cascade.get("bias_correction"), labels=labels)
    return {**grids, "image2": grids["image2"].float(), "image1": grids["image1"].float()}


def _round_up(v: float, d: int) -> int:
    return int(math.ceil(v / d) * d)


def default_synthesis(size_prob: float = 0.3, fov_prob: float = 0.3, non_limb_prob: float = 0.0, **synth_kwargs):
    """Scene crop -> (changed scene, synthetic image): per-muscle atrophy/hypertrophy, partial
    field of view along z, with ``non_limb_prob`` blobs of tissue that is no lower limb in the air
    around it (``RandNonLimbTissue``: background in the targets), then a random MR contrast or CT
    (see ``SynthesizeImage``). Deformation is left to the bundle's geometric augmentation, which
    moves image and target together."""
    from monai.transforms import Compose

    from ..transforms.synthesis import RandFieldOfViewd, RandMuscleSized, RandNonLimbTissued, SynthesizeImaged

    steps = [RandMuscleSized("scene", prob=size_prob), RandFieldOfViewd("scene", prob=fov_prob)]
    if non_limb_prob > 0:
        steps.append(RandNonLimbTissued("scene", prob=non_limb_prob))
    return Compose([*steps, SynthesizeImaged("scene", "image", **synth_kwargs)])


class CascadeTrainer:
    """Trains a bundle's stage 1 and stage 2 from a list of labelled cases; writes ``models/``.

    Args:
        bundle: bundle name or folder (its ``configs/inference.json`` defines structures,
            spacings, networks, intensity preprocessing).
        dataset: list of ``{"image", "label", "label_map", "sides"[, "name", "labelled"]}``
            (``sides``: ``"right"``, ``"left"`` (mirrored), or ``"both"`` (split at the midline,
            left mirrored)). Entries may label different subsets of the structures (the real calf
            its 7 muscles, a CT the gluteals): :func:`annotated_structures` says which, and
            stage 1 then needs a partial-label ``loss``; a structure no entry labels gets no
            stage-2 model (logged, listed as ``untrained`` in ``cascade.json``).
        augmentation_stage1 / augmentation_stage2: MONAI dict transforms on keys image/label.
        real_augmentation: a dict transform on keys image/label applied, before the stage's
            augmentation, only to draws from real images (not to synthesised ones), e.g.
            ``RandContrastRemapd``: synthesis already draws every contrast, while one real scan has
            one (calf_mri trained on the real DTI calf alone learned that contrast: its labels on
            the Dixon water and fat images of one acquisition agreed at Dice 0.14, 0.76 with it).
        loss: ``loss(logits, target[, labelled_classes])`` for both stages; None: ``DiceCELoss``.
        optimizer: ``optimizer(parameters)``; None: Adam at ``lr``.
        lr_scheduler: ``lr_scheduler(optimizer, iterations)``; None: cosine annealing to 0.
        synthesis: for ``"synthesize"`` entries, a dict transform on key ``scene`` (a label crop,
            MetaTensor with the stage grid's spacing) that may change the scene and must add
            ``image``; None: :func:`default_synthesis`. Its image then gets the bundle's
            ``intensity`` preprocessing and the augmentation above.
        patch_scale: stage-2 patch = mean training box shape × this, rounded up to the divisor.
        probe_samples: fixed samples per dataset entry whose loss is measured before and after
            each network's training (``self.probe_losses``); 0 turns it off.
        num_threads: torch CPU threads. 1 by default: on a shared, oversubscribed CPU two OpenMP
            threads per process spin-wait for each other (measured here: a 3D U-Net step took
            12 s with 2 threads and 0.7 s with 1 while other jobs ran).
        num_workers: DataLoader worker processes that draw the training samples (synthesis,
            crops, augmentation), so that a GPU does not wait for the CPU; 0 (the default) draws
            in this process. Each worker has its own random generators (:func:`batch_drawer`).
    """

    def __init__(self, bundle, dataset: list[dict], augmentation_stage1=None, augmentation_stage2=None,
                 stage1_iterations: int = 300, stage2_iterations: int = 300, batch_size: int = 2, lr: float = 1e-3,
                 patch_scale: float = 1.4, max_patch=(96, 96, 64), crop_ratio_range=(1.0, 1.8), divisor: int = 4,
                 seed: int = 0, device: str = "cpu", output_dir: str | None = None, num_threads: int = 1,
                 distributed: bool = False, stage2_iterations_by_muscle: dict | None = None, synthesis=None,
                 loss=None, optimizer=None, lr_scheduler=None, probe_samples: int = 2, num_workers: int = 0,
                 real_augmentation=None):
        self.parser = read_bundle_config(bundle)
        self.root = Path(self.parser["bundle_root"])
        self.output_dir = Path(output_dir) if output_dir else Path.cwd() / "runs" / self.root.name
        self.dataset = dataset
        self.aug1, self.aug2 = augmentation_stage1, augmentation_stage2
        self.real_aug = real_augmentation
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
        self.synthesis = synthesis if synthesis is not None else default_synthesis()
        if loss is None:
            from monai.losses import DiceCELoss

            loss = DiceCELoss(to_onehot_y=True, softmax=True)
        self.loss = loss
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler if lr_scheduler is not None else torch.optim.lr_scheduler.CosineAnnealingLR
        self.probe_samples = int(probe_samples)
        self.num_workers = int(num_workers)
        self._structure_lut = structure_lut(self.structures)
        self._group_lut = group_lut(self.structures, self.groups)  # ontology value -> stage-1 group index
        self.losses: dict[str, list[float]] = {}  # what -> loss per iteration
        self.probe_losses: dict[str, dict[str, dict[str, float]]] = {}  # what -> source -> before/after
        self.untrained: list[str] = []
        self._cases = None

    # --- data ----------------------------------------------------------------------------------
    @property
    def cases(self) -> list[dict]:
        """Every side case on the two grids, with ``source`` (its entry's name) and
        ``labelled1``, the (G + 1,) stage-1 channels its labels annotate."""
        if self._cases is None:
            self._cases = []
            for i, entry in enumerate(self.dataset):
                pairs = entry["cases"] if "cases" in entry else load_side_cases(entry)
                labelled1 = torch.as_tensor(annotated_groups(annotated_structures(entry), self.groups))
                for image, labels in pairs:
                    if entry.get("synthesize"):
                        case = prepare_scene(labels, self.cascade, self.structures)
                    else:
                        case = prepare_case(image, labels, self.cascade)
                    case.update(source=source_name(entry, i), labelled1=labelled1)
                    self._cases.append(case)
        return self._cases

    def _mask(self, case: dict, muscle: str) -> np.ndarray:
        """Where ``muscle`` is in a case's stage-2 labels (its finer atlas parts included)."""
        return self._structure_lut[np.asarray(case["label2"][0]).round().astype(np.int64)] == right_value(muscle)

    def _synthesize(self, scene, spacing, target_of) -> dict:
        """One draw from a label crop (1, X, Y, Z): {"image": intensity-normalised synthetic image,
        "label": target_of(the possibly changed scene)} as plain float tensors."""
        grid = MetaTensor(torch.as_tensor(scene).round().to(torch.uint8), affine=torch.diag(torch.tensor([*spacing, 1.0])))
        d = self.synthesis({"scene": grid})
        image = self.cascade["intensity"](torch.as_tensor(d["image"]).float())
        target = target_of(np.asarray(torch.as_tensor(d["scene"])[0]).round().astype(np.uint8))
        return {"image": plain_tensor(image).float(), "label": torch.as_tensor(target[None].astype(np.float32))}

    def world_boxes(self, case: dict) -> dict:
        out = {}
        for m in self.structures:
            b = box_from_mask(self._mask(case, m))
            if b is not None:
                out[m] = b.to_world(np.asarray(case["label2"].affine))
        return out

    def patch_size(self, muscle: str) -> tuple[int, int, int]:
        shapes, extents = [], []
        for c in self.cases:
            b = box_from_mask(self._mask(c, muscle))
            if b is not None:
                shapes.append(b.shape)
                extents.append(c["label2"].shape[1:])
        if not shapes:
            raise ValueError(f"no training case labels {muscle!r}")
        mean = np.mean(shapes, 0) * self.patch_scale
        cap = np.minimum(np.max(extents, 0), self.max_patch)
        return tuple(_round_up(max(min(m, c), self.divisor), self.divisor) for m, c in zip(mean, cap))

    # --- stage 1 -------------------------------------------------------------------------------
    def group_target(self, case: dict) -> torch.Tensor:
        """(1, X, Y, Z) stage-1 group indices; groups the case does not wholly annotate are 0 (the
        partial-label loss then counts them as "background or unannotated")."""
        groups = self._group_lut[np.asarray(case["label1"][0]).round().astype(np.int64)]
        groups[~np.asarray(case["labelled1"])[groups]] = 0
        return torch.as_tensor(groups[None])

    def train_stage1(self) -> Path:
        set_determinism(self.seed + self.rank)  # the initial weights too: a run is repeatable whatever ran before
        network = self.parser.get_parsed_content("stage1_network").to(self.device)
        roi = tuple(self.parser["stage1_roi"])
        samples = [{"scene": plain_tensor(c["scene1"])} if "scene1" in c else
                   {"image": plain_tensor(c["image1"]), "label": self.group_target(c).float()} for c in self.cases]
        keys = ["image", "label", "scene"]
        pad = SpatialPadd(keys, roi, allow_missing_keys=True)
        crop = RandSpatialCropd(keys, roi, random_size=False, allow_missing_keys=True)
        spacing = self.cascade["stage1_spacing"]

        def groups_of(scene):
            return self._group_lut[scene]

        def sample(rng, index=None):
            index = rng.integers(len(samples)) if index is None else index
            d = crop(pad(dict(samples[index])))
            if "scene" in d:
                d = self._synthesize(d["scene"], spacing, groups_of)
            elif self.real_aug is not None:
                d = self.real_aug(d)
            d = self.aug1(d) if self.aug1 is not None else d
            return {**d, "labelled": self.cases[index]["labelled1"]}

        self._fit(network, sample, self.stage1_iterations, "stage 1", [c["source"] for c in self.cases])
        return self._save(network, "stage1.pt")

    # --- stage 2 -------------------------------------------------------------------------------
    def train_stage2(self, muscle: str) -> Path:
        if muscle not in self.structures:
            raise KeyError(f"{muscle!r} is not one of this bundle's structures {self.structures}")
        set_determinism(self.seed + self.rank)
        network = self.parser.get_parsed_content("stage2_network")().to(self.device)
        patch = self.patch_size(muscle)
        v = right_value(muscle)
        items, sources = [], []
        for c in self.cases:
            mask = self._mask(c, muscle)
            box = box_from_mask(mask)
            if box is not None:  # a scene stands in for the image: the draw makes image and mask from it
                image = c["scene2"] if "scene2" in c else c["image2"]
                items.append((image, torch.as_tensor(mask[None].astype(np.float32)), box, "scene2" in c))
                sources.append(c["source"])
        spacing = self.cascade["stage2_spacing"]

        def mask_of(scene):
            return (self._structure_lut[scene] == v).astype(np.float32)
        pad = SpatialPadd(["image", "label"], patch)
        crop = RandSpatialCropd(["image", "label"], patch, random_size=False)
        from .boxes import enlarge_box

        def sample(rng, index=None):
            image, mask, box, is_scene = items[rng.integers(len(items)) if index is None else index]
            shape = tuple(image.shape[1:])
            enlarged = enlarge_box(box, shape, rng, self.crop_ratio_range)
            # crop with a context margin so rotations/elastic warps pull in real tissue, not zeros
            margin = [max(2, s // 4) for s in enlarged.shape]
            outer = Box(tuple(a - m for a, m in zip(enlarged.start, margin)),
                        tuple(b + m for b, m in zip(enlarged.stop, margin))).clip(shape)
            if is_scene:
                d = self._synthesize(plain_tensor(image[(slice(None), *outer.slices)]), spacing, mask_of)
            else:
                d = {"image": plain_tensor(image[(slice(None), *outer.slices)]).clone(),
                     "label": mask[(slice(None), *outer.slices)].clone()}
                if self.real_aug is not None:
                    d = self.real_aug(d)
            if self.aug2 is not None:
                d = self.aug2(d)
            inner = tuple(slice(a - o, b - o) for a, b, o in zip(enlarged.start, enlarged.stop, outer.start))
            d = {k: torch.as_tensor(x)[(slice(None), *inner)] for k, x in d.items()}
            return crop(pad(d))

        iterations = self.stage2_iterations_by_muscle.get(muscle, self.stage2_iterations)
        self._fit(network, sample, iterations, f"stage 2 {muscle} patch {patch}", sources)
        self._update_meta(patch_sizes={muscle: list(patch)})
        return self._save(network, f"stage2_{muscle}.pt")

    def trainable_structures(self) -> list[str]:
        """The structures some training case labels (the others cannot get a stage-2 model)."""
        return [m for m in self.structures if any(self._mask(c, m).any() for c in self.cases)]

    def fit_priors(self) -> BoxPriors:
        boxes = [self.world_boxes(c) for c in self.cases]
        labelled = {m for b in boxes for m in b}
        # priors of the structures that have training boxes; every group stays, in order (its index
        # is its stage-1 output channel), an unlabelled one empty
        groups = {g: [m for m in ms if m in labelled] for g, ms in self.groups.items()}
        priors = BoxPriors.fit(boxes, groups)
        self.untrained = [m for m in self.structures if m not in labelled]
        self._update_meta(priors=priors.to_dict(), untrained=self.untrained)
        return priors

    # --- plumbing ------------------------------------------------------------------------------
    def _fit(self, network, sample, iterations: int, what: str, sources: list[str]):
        """``sample(rng, index=None)`` draws one training sample (of item ``index``); ``sources``
        names each item's dataset entry (for the per-source probe losses)."""
        set_determinism(self.seed + self.rank)
        rng = np.random.default_rng(self.seed + self.rank)
        # MONAI randomisables keep their own generator (shared by every unseeded instance of a
        # class, so its state would depend on whatever ran before): seed them, so a run is repeatable
        def reseed(seed: int) -> None:
            for transform in (self.synthesis, self.real_aug, self.aug1, self.aug2):
                if hasattr(transform, "set_random_state"):
                    transform.set_random_state(seed)

        reseed(self.seed + self.rank)
        # plain tensors through the augmentation: MetaTensor bookkeeping doubles its cost on CPU
        track_meta = get_track_meta()
        set_track_meta(False)
        try:
            probes = {}
            if self.probe_samples > 0:
                probe_rng = np.random.default_rng(self.seed + 10_000)
                for source in dict.fromkeys(sources):
                    indices = [i for i, s in enumerate(sources) if s == source]
                    probes[source] = [sample(probe_rng, int(probe_rng.choice(indices)))
                                      for _ in range(self.probe_samples)]
            with batch_drawer(sample, self.batch_size, rng, self.num_workers, seed=self.seed + self.rank,
                              reseed=reseed, pin_memory=self.device.type == "cuda") as draw_batch:
                result = fit(network, draw_batch, iterations, self.loss, optimizer=self.optimizer,
                             lr_scheduler=self.lr_scheduler, lr=self.lr, device=self.device, what=what,
                             probes=probes, distributed=self.distributed)
        finally:  # a failed run must not leave MONAI without metadata for everything after it
            set_track_meta(track_meta)
            set_determinism(None)
        self.losses[what] = result["losses"]
        self.probe_losses[what] = result["probes"]
        return result

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
        """Train: ``stage`` 1, 2 (all muscles, or only ``muscle``) or ``"all"``; returns written files.
        Structures that no training case labels are skipped with a warning."""
        written = []
        stage = str(stage)
        if stage in ("1", "all"):
            self.fit_priors()
            written.append(self.train_stage1())
        if stage in ("2", "all"):
            if not (self.output_dir / "cascade.json").exists():
                self.fit_priors()
            if muscle:
                todo = [muscle]
            else:
                todo = self.trainable_structures()
                for m in self.structures:
                    if m not in todo:
                        log.warning("stage 2: no training case labels %s: it gets no model", m)
            for m in todo:
                written.append(self.train_stage2(m))
        return written
