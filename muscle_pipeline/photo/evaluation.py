"""Segmentation scores for photos: IoU per class, mean IoU and pixel accuracy.

Scores come from one confusion matrix accumulated over a whole data set (the usual definition
for semantic segmentation, and the seed's): IoU_c = TP_c / (TP_c + FP_c + FN_c); mIoU is the mean
over classes that occur in the labels or the predictions (a class absent from both is left out
rather than counted as 0 or 1); ``miou_muscles`` leaves the background out; pixel accuracy is
the trace over the total. Masks are compared at the network's input size (photo and mask
resized alike), as in training.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from muscle_pipeline.metrics import ConfusionMatrix
from muscle_pipeline.photo import CLASS_NAMES, NUM_CLASSES


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int = NUM_CLASSES) -> torch.Tensor:
    """(num_classes, num_classes) int64 counts, rows = label, columns = prediction
    (:class:`muscle_pipeline.metrics.ConfusionMatrix`). ``pred`` and ``target`` hold class indices
    and have the same shape (any)."""
    matrix = ConfusionMatrix(num_classes).update(torch.as_tensor(pred).detach().cpu(), torch.as_tensor(target).detach().cpu())
    return torch.as_tensor(matrix.matrix)


def scores(confusion: torch.Tensor | np.ndarray, class_names=CLASS_NAMES) -> dict:
    """IoU per class, mIoU (all classes present), mIoU of the muscles, pixel accuracy."""
    matrix = ConfusionMatrix(len(class_names))
    matrix.matrix = np.asarray(confusion, dtype=np.int64)
    result = matrix.result()
    return {
        "iou": {name: (None if np.isnan(v) else float(v)) for name, v in zip(class_names, result["iou"])},
        "miou": result["miou"],
        "miou_muscles": matrix.result(include_background=False)["miou"],
        "pixel_accuracy": result["pixel_accuracy"] if matrix.matrix.sum() else 0.0,
        "pixels": int(matrix.matrix.sum()),
    }


@torch.inference_mode()
def evaluate(network: torch.nn.Module, dataloader, device="cpu", loss_function=None) -> dict:
    """Run ``network`` over a loader of ``{"image": (N,3,W,H), "label": (N,1,W,H)}`` batches.

    Returns :func:`scores` plus ``loss`` (mean over batches, when ``loss_function`` is given)
    and ``confusion`` (nested lists)."""
    network.eval()
    cm = torch.zeros(NUM_CLASSES, NUM_CLASSES, dtype=torch.int64)
    losses = []
    for batch in dataloader:
        images = batch["image"].to(device)
        labels = batch["label"].to(device).long()
        logits = network(images)
        if loss_function is not None:
            from muscle_pipeline.photo.train import loss_target

            losses.append(float(loss_function(logits, loss_target(loss_function, labels))))
        cm += confusion_matrix(logits.argmax(1), labels[:, 0])
    result = scores(cm)
    result["loss"] = float(np.mean(losses)) if losses else None
    result["confusion"] = cm.tolist()
    return result


def write_scores(result: dict, output_dir: str | Path, name: str = "metrics") -> Path:
    """``NAME.json`` (everything) and ``NAME_per_class.csv`` (class, IoU) in ``output_dir``."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / f"{name}.json").write_text(json.dumps(result, indent=2))
    lines = ["class,iou"] + [f"{k},{'' if v is None else f'{v:.4f}'}" for k, v in result["iou"].items()]
    lines += [f"mean_iou,{result['miou']:.4f}", f"mean_iou_muscles,{result['miou_muscles']:.4f}",
              f"pixel_accuracy,{result['pixel_accuracy']:.4f}"]
    (output_dir / f"{name}_per_class.csv").write_text("\n".join(lines) + "\n")
    return output_dir / f"{name}.json"


__all__ = ["confusion_matrix", "scores", "evaluate", "write_scores"]
