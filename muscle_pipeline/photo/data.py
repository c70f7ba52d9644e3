"""Find image/mask pairs in the two folder layouts users have, and map mask values to classes.

Seed layout (the paper's)::

    DATASET/train/images/NAME.jpg   DATASET/train/masks/NAME.png   (also val/, test/)

Masks hold class indices 0..3 (background, biceps, triceps, calf); a ``_classes.csv`` in
``DATASET/`` or a split folder may rename them. A mask may also be called ``NAME_mask.png``.

Roboflow "Semantic Segmentation Masks" export::

    DATASET/train/NAME_jpg.rf.HASH.jpg  DATASET/train/NAME_jpg.rf.HASH_mask.png
    DATASET/train/_classes.csv          (also valid/ or val/, test/)

``_classes.csv`` has a header (``Pixel Value, Class``) and one row per pixel value. Class names
are matched loosely ("Biceps-activated", "flexed biceps", "calves" ...); a name that is none of
ours stops loading with an error naming the file, rather than silently training on a wrong map.

Without a validation split, 20 % of the training pairs (fixed seed) become the validation set.
"""
from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from muscle_pipeline.errors import InputError, NoCasesFoundError
from muscle_pipeline.photo import CLASS_NAMES

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
_VAL_NAMES = ("val", "valid", "validation")


@dataclass
class PhotoDatalists:
    """Data lists of one dataset: each item is ``{"image": path, "label": path, "name": stem}``.

    ``label_lut`` maps a raw mask value (index 0..255) to a class index, or -1 where the value is
    not a known class (``MaskToClassIndex`` raises on such pixels).
    """

    train: list[dict]
    val: list[dict]
    test: list[dict]
    layout: str
    label_lut: np.ndarray = field(default_factory=lambda: identity_lut())
    val_from_train: bool = False


def identity_lut() -> np.ndarray:
    """Mask values 0..3 are class indices; every other value is unknown (-1)."""
    lut = np.full(256, -1, dtype=np.int64)
    lut[: len(CLASS_NAMES)] = np.arange(len(CLASS_NAMES))
    return lut


def class_index_for(name: str) -> int | None:
    """Our class index for a class name from a label tool, or None if it is not one of ours."""
    key = re.sub(r"[^a-z]", "", name.lower())
    if key in ("", "background", "bg", "unlabeled", "unlabelled", "backgroundclass", "none"):
        return 0
    if "bicep" in key:
        return 1
    if "tricep" in key:
        return 2
    if "calf" in key or "calves" in key or "gastrocnemius" in key:
        return 3
    return None


def read_classes_csv(path: str | Path) -> dict[int, int]:
    """Pixel value -> class index from a Roboflow ``_classes.csv`` (header ``Pixel Value, Class``)."""
    path = Path(path)
    mapping: dict[int, int] = {}
    with open(path, newline="") as f:
        rows = [row for row in csv.reader(f) if row and any(cell.strip() for cell in row)]
    if not rows:
        raise InputError(path, "empty class table; expected a header 'Pixel Value, Class' and one row per class")
    start = 0 if rows[0][0].strip().isdigit() else 1  # skip the header row
    for row in rows[start:]:
        if len(row) < 2 or not row[0].strip().isdigit():
            raise InputError(path, f"row {row!r} is not 'pixel value, class name'")
        value, name = int(row[0].strip()), row[1].strip()
        index = class_index_for(name)
        if index is None:
            raise InputError(
                path,
                f"class {name!r} (pixel value {value}) is not one of {', '.join(CLASS_NAMES)}; "
                "rename it in the label tool or remove it from the export",
            )
        mapping[value] = index
    return mapping


def _lut_from(mapping: dict[int, int]) -> np.ndarray:
    lut = np.full(256, -1, dtype=np.int64)
    for value, index in mapping.items():
        if not 0 <= value <= 255:
            raise ValueError(f"mask pixel value {value} outside 0..255")
        lut[value] = index
    return lut


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                  and not p.stem.endswith("_mask"))


def _mask_for(image: Path, mask_dir: Path) -> Path | None:
    for stem in (image.stem, f"{image.stem}_mask"):
        for suffix in (".png", ".bmp", ".tif", ".tiff", ".gif"):
            candidate = mask_dir / f"{stem}{suffix}"
            if candidate.is_file():
                return candidate
    return None


def _pairs_seed(split_dir: Path) -> list[dict]:
    image_dir, mask_dir = split_dir / "images", split_dir / "masks"
    if not mask_dir.is_dir():
        raise InputError(split_dir, "has images/ but no masks/ folder")
    items = []
    for image in _images_in(image_dir):
        mask = _mask_for(image, mask_dir)
        if mask is None:
            raise InputError(image, f"no mask with the same name in {mask_dir}")
        items.append({"image": str(image), "label": str(mask), "name": image.stem})
    return items


def _pairs_roboflow(split_dir: Path) -> list[dict]:
    items = []
    for image in _images_in(split_dir):
        mask = split_dir / f"{image.stem}_mask.png"
        if not mask.is_file():
            raise InputError(image, f"no mask {mask.name} beside it (Roboflow export layout)")
        items.append({"image": str(image), "label": str(mask), "name": image.stem})
    return items


def split_off_validation(items: list[dict], fraction: float = 0.2, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Move ``fraction`` of ``items`` (at least one when there are two or more) to a validation list."""
    order = np.random.default_rng(seed).permutation(len(items))
    n_val = int(round(fraction * len(items)))
    if len(items) >= 2:
        n_val = min(max(n_val, 1), len(items) - 1)
    else:
        n_val = 0
    val_idx = set(order[:n_val].tolist())
    train = [item for i, item in enumerate(items) if i not in val_idx]
    val = [item for i, item in enumerate(items) if i in val_idx]
    return train, val


def find_dataset(dataset_dir: str | Path, val_fraction: float = 0.2, seed: int = 0) -> PhotoDatalists:
    """Discover the splits of a dataset in the seed or Roboflow layout (see the module doc)."""
    root = Path(dataset_dir)
    if not root.is_dir():
        raise InputError(root, "dataset folder does not exist")
    train_dir = root / "train"
    if not train_dir.is_dir():
        raise NoCasesFoundError(root, "no train/ folder (expected train/images + train/masks, or a Roboflow export)")
    layout = "seed" if (train_dir / "images").is_dir() else "roboflow"
    pairs = _pairs_seed if layout == "seed" else _pairs_roboflow

    def split_dir(names) -> Path | None:
        for name in names:
            if (root / name).is_dir():
                return root / name
        return None

    mapping: dict[int, int] = {}
    csv_files = [root / "_classes.csv"] + [d / "_classes.csv" for d in root.iterdir() if d.is_dir()]
    for csv_file in csv_files:
        if csv_file.is_file():
            for value, index in read_classes_csv(csv_file).items():
                if mapping.get(value, index) != index:
                    raise InputError(csv_file, f"pixel value {value} means a different class than in another split")
                mapping[value] = index
    if layout == "roboflow" and not mapping:
        raise InputError(train_dir, "no _classes.csv: cannot tell which mask value is which muscle")
    lut = _lut_from(mapping) if mapping else identity_lut()

    train = pairs(train_dir)
    if not train:
        raise NoCasesFoundError(train_dir, "no images found")
    val_dir = split_dir(_VAL_NAMES)
    test_dir = split_dir(("test",))
    val = pairs(val_dir) if val_dir else []
    val_from_train = not val
    if val_from_train:
        train, val = split_off_validation(train, val_fraction, seed)
    test = pairs(test_dir) if test_dir else []
    return PhotoDatalists(train=train, val=val, test=test, layout=layout, label_lut=lut, val_from_train=val_from_train)


def list_images(source: str | Path) -> list[dict]:
    """``[{"image": path}]`` for one image file or every image in a folder (sorted, not recursive)."""
    source = Path(source)
    if source.is_file():
        if source.suffix.lower() not in IMAGE_SUFFIXES:
            raise InputError(source, f"not an image (expected one of {', '.join(IMAGE_SUFFIXES)})")
        return [{"image": str(source)}]
    if source.is_dir():
        images = _images_in(source)
        if not images:
            raise NoCasesFoundError(source, "no images in this folder")
        return [{"image": str(p)} for p in images]
    raise InputError(source, "does not exist")


__all__ = ["PhotoDatalists", "find_dataset", "list_images", "read_classes_csv", "class_index_for",
           "identity_lut", "split_off_validation", "IMAGE_SUFFIXES"]
