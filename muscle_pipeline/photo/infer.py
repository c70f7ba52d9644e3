"""Segment activated muscles in photos: one image, a folder, or (via ``video``) a video.

The same MONAI steps as the bundle's ``inference.json``: preprocessing (RGB, [0, 1], resize to
the size the model was trained at), the network, softmax, ``Invertd`` back to the photo's own
size (probabilities resized bilinearly, then argmax), so masks match the photo pixel for pixel.

Outputs per photo in the output folder: ``NAME_mask.png`` (class index per pixel: 0
background, 1 biceps, 2 triceps, 3 calf — the same file the bundle writes),
``NAME_overlay.png`` (the photo with activated muscles coloured and a legend), a row in
``summary.csv`` (activated share of the photo per muscle), and ``labels.json`` (class names and
colours) once per folder.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import torch
from monai.transforms import Activationsd, AsDiscreted, Compose, Invertd
from PIL import Image, ImageDraw, ImageFont

from muscle_pipeline.errors import CorruptFileError, InputError
from muscle_pipeline.photo import CLASS_COLOURS, CLASS_NAMES
from muscle_pipeline.photo.data import list_images
from muscle_pipeline.photo.network import default_model_path, load_network
from muscle_pipeline.photo.transforms import inference_transforms, input_error_in, photo_to_tensor

#: A muscle is reported as activated when it covers at least this share of the photo.
ACTIVATION_MIN_FRACTION = 0.001


def postprocessing(preprocessing: Compose) -> Compose:
    """Softmax, undo ``preprocessing``'s resize on the probabilities, argmax -> ``(1, W, H)``."""
    return Compose([
        Activationsd(keys="pred", softmax=True),
        Invertd(keys="pred", transform=preprocessing, orig_keys="image", nearest_interp=False, to_tensor=True),
        AsDiscreted(keys="pred", argmax=True),
    ])


class PhotoSegmenter:
    """A loaded model plus its pre- and postprocessing.

    ``model_path`` defaults to the shipped demo model; the input size comes from the checkpoint.
    """

    def __init__(self, model_path: str | Path | None = None, device: str | torch.device = "cpu"):
        self.model_path = Path(model_path) if model_path else default_model_path()
        self.device = torch.device(device)
        self.network, self.meta = load_network(self.model_path, self.device)
        self.image_size = int(self.meta["image_size"])
        self._file_pre = inference_transforms(self.image_size, load=True)
        self._array_pre = inference_transforms(self.image_size, load=False)
        self._file_post = postprocessing(self._file_pre)
        self._array_post = postprocessing(self._array_pre)

    @torch.inference_mode()
    def _run(self, data: dict, post: Compose) -> np.ndarray:
        image = data["image"]
        logits = self.network(image.as_tensor()[None].to(self.device))[0].cpu()
        data["pred"] = logits
        mask = post(data)["pred"]  # (1, W, H) in MONAI's PIL layout
        return np.ascontiguousarray(np.asarray(mask[0]).T.astype(np.uint8))

    def predict(self, photo) -> np.ndarray:
        """Class-index mask ``(H, W)`` uint8 for a photo file path or an ``(H, W[, C])`` uint8 array."""
        if isinstance(photo, (str, Path)):
            try:
                data = self._file_pre({"image": str(photo)})
            except Exception as exc:  # PIL/MONAI reader failures: name the file, say why
                known = input_error_in(exc)
                if known is not None:
                    raise known from exc
                cause = exc.__cause__ or exc
                raise CorruptFileError(photo, f"cannot be read as an image ({type(cause).__name__}: {cause})") from exc
            return self._run(data, self._file_post)
        return self._run(self._array_pre({"image": photo_to_tensor(photo)}), self._array_post)


def class_fractions(mask: np.ndarray) -> dict[str, float]:
    """Share of the photo (0..1) covered by each muscle class."""
    counts = np.bincount(np.asarray(mask).ravel(), minlength=len(CLASS_NAMES))
    total = max(int(counts.sum()), 1)
    return {name: float(counts[i] / total) for i, name in enumerate(CLASS_NAMES) if i > 0}


def activated(mask: np.ndarray, min_fraction: float = ACTIVATION_MIN_FRACTION) -> list[str]:
    """Names of the muscles covering at least ``min_fraction`` of the photo."""
    return [name for name, f in class_fractions(mask).items() if f >= min_fraction]


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: fixed-size bitmap font
        return ImageFont.load_default()


def overlay(rgb: np.ndarray, mask: np.ndarray, alpha: float = 0.5, legend: bool = True) -> np.ndarray:
    """The photo ``(H, W, 3)`` uint8 with each activated muscle blended in its colour, outlined, and a
    legend in the top-left corner."""
    rgb = np.asarray(rgb)
    if rgb.ndim == 2:
        rgb = np.repeat(rgb[..., None], 3, axis=2)
    rgb = rgb[..., :3].astype(np.float32)
    mask = np.asarray(mask)
    if mask.shape != rgb.shape[:2]:
        raise ValueError(f"mask {mask.shape} and photo {rgb.shape[:2]} differ in size")
    colours = np.asarray(CLASS_COLOURS, dtype=np.float32)
    out = rgb.copy()
    muscle = mask > 0
    out[muscle] = (1 - alpha) * rgb[muscle] + alpha * colours[mask[muscle]]
    # Outline: muscle pixels with a differently-labelled 4-neighbour, in the full colour.
    edge = np.zeros_like(muscle)
    edge[1:, :] |= mask[1:, :] != mask[:-1, :]
    edge[:-1, :] |= mask[:-1, :] != mask[1:, :]
    edge[:, 1:] |= mask[:, 1:] != mask[:, :-1]
    edge[:, :-1] |= mask[:, :-1] != mask[:, 1:]
    edge &= muscle
    out[edge] = colours[mask[edge]]
    image = Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))
    if legend:
        _draw_legend(image)
    return np.asarray(image)


def _draw_legend(image: Image.Image) -> None:
    height = image.height
    size = max(8, min(24, height // 22))
    font = _font(size)
    draw = ImageDraw.Draw(image, "RGBA")
    entries = [(CLASS_NAMES[i], CLASS_COLOURS[i]) for i in range(1, len(CLASS_NAMES))]
    pad = max(2, size // 4)
    width = max(int(draw.textlength(f"{name} (activated)", font=font)) for name, _ in entries) + size + 3 * pad
    box_h = len(entries) * (size + pad) + pad
    draw.rectangle([0, 0, width, box_h], fill=(0, 0, 0, 150))
    for k, (name, colour) in enumerate(entries):
        y = pad + k * (size + pad)
        draw.rectangle([pad, y, pad + size, y + size], fill=tuple(colour) + (255,))
        draw.text((2 * pad + size, y), f"{name} (activated)", fill=(255, 255, 255, 255), font=font)


def write_labels_json(output_dir: str | Path) -> Path:
    """``labels.json``: class index -> name and overlay colour."""
    path = Path(output_dir) / "labels.json"
    path.write_text(json.dumps({str(i): {"name": n, "colour": list(CLASS_COLOURS[i])}
                                for i, n in enumerate(CLASS_NAMES)}, indent=1))
    return path


def _read_rgb(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except Exception as exc:
        raise CorruptFileError(path, f"cannot be read as an image ({type(exc).__name__}: {exc})") from exc


def segment_images(source: str | Path, output_dir: str | Path, segmenter: PhotoSegmenter | None = None,
                   model_path: str | Path | None = None, device: str = "cpu") -> list[dict]:
    """Segment one image file or every image in a folder; returns one summary row per photo.

    A photo that cannot be read is reported in its row (``error``) and the others go on."""
    items = list_images(source)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    segmenter = segmenter or PhotoSegmenter(model_path, device)
    rows = []
    for item in items:
        path = Path(item["image"])
        row = {"image": str(path)}
        try:
            rgb = _read_rgb(path)
            mask = segmenter.predict(path)
        except InputError as exc:
            row["error"] = str(exc)
            rows.append(row)
            continue
        Image.fromarray(mask).save(output_dir / f"{path.stem}_mask.png")
        Image.fromarray(overlay(rgb, mask)).save(output_dir / f"{path.stem}_overlay.png")
        row.update(width=mask.shape[1], height=mask.shape[0],
                   **{f"{k}_fraction": round(v, 6) for k, v in class_fractions(mask).items()},
                   activated=";".join(activated(mask)), error="")
        rows.append(row)
    write_labels_json(output_dir)
    _write_rows(rows, output_dir / "summary.csv")
    return rows


def _write_rows(rows: list[dict], path: Path) -> None:
    fields = ["image", "width", "height"] + [f"{n}_fraction" for n in CLASS_NAMES[1:]] + ["activated", "error"]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, restval="")
        writer.writeheader()
        writer.writerows(rows)


@torch.inference_mode()
def run_bundle_inference(dataloader, network, postprocessing_: Compose, device="cpu") -> int:
    """The loop of the bundle's ``inference.json``: network -> postprocessing (which saves) per photo.
    Returns the number of photos processed. (MONAI's SupervisedEvaluator would need pytorch-ignite.)"""
    from monai.data import decollate_batch

    network.eval()
    count = 0
    for batch in dataloader:
        images = batch["image"]
        batch["pred"] = network(images.as_tensor().to(device) if hasattr(images, "as_tensor") else images.to(device)).cpu()
        for item in decollate_batch(batch):
            postprocessing_(item)
            count += 1
    return count


__all__ = ["PhotoSegmenter", "segment_images", "overlay", "class_fractions", "activated", "postprocessing",
           "write_labels_json", "run_bundle_inference", "ACTIVATION_MIN_FRACTION"]
