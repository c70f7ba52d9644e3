"""Training loop, training curves and the hyper-parameter sweep of the photo model.

The bundle's ``configs/train.json`` builds every part (network, loss, optimizer, StepLR,
MONAI datasets and transforms) and hands them to :func:`fit`; :func:`sweep` re-runs that same
config for every learning rate x batch size x optimizer and writes one table. Nothing here
needs pytorch-ignite.

Outputs of :func:`fit` in ``output_dir``: ``model.pt`` (float32 checkpoint of the epoch with the
best validation mIoU, with the metadata ``network.load_network`` needs), ``history.csv`` (one
row per epoch), ``curves.png`` (loss and mIoU per epoch), ``metrics.json`` (best epoch, its
validation scores, training time).
"""
from __future__ import annotations

import csv
import itertools
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from muscle_pipeline.photo.evaluation import confusion_matrix, evaluate, scores
from muscle_pipeline.photo.network import network_kwargs_of, save_checkpoint
from muscle_pipeline.training_loop import fit as fit_loop, plain_tensor

logger = logging.getLogger(__name__)


def make_optimizer(name: str, params, learning_rate: float = 1e-4, weight_decay: float = 0.0):
    """``adam`` (the seed's) or ``sgd`` (momentum 0.9, Nesterov) over ``params``."""
    key = str(name).lower()
    if key == "adam":
        return torch.optim.Adam(params, lr=learning_rate, weight_decay=weight_decay)
    if key == "sgd":
        return torch.optim.SGD(params, lr=learning_rate, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    raise ValueError(f"optimizer must be 'adam' or 'sgd', not {name!r}")


def loss_target(loss_function, labels: torch.Tensor) -> torch.Tensor:
    """Labels ``(N, 1, W, H)`` as ``loss_function`` wants them: ``(N, W, H)`` for torch's
    ``CrossEntropyLoss``, unchanged for MONAI losses (``DiceCELoss(to_onehot_y=True)`` ...)."""
    return labels[:, 0] if isinstance(loss_function, torch.nn.CrossEntropyLoss) else labels


def plot_curves(history: list[dict], path: str | Path) -> Path:
    """Two panels per epoch: training/validation loss, and validation mIoU / pixel accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_score) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [h["train_loss"] for h in history], "o-", label="training")
    val = [(h["epoch"], h["val_loss"]) for h in history if h.get("val_loss") is not None]
    if val:
        ax_loss.plot(*zip(*val), "s-", label="validation")
    ax_loss.set(xlabel="epoch", ylabel="the configured loss", title="Loss")
    ax_loss.legend()
    scored = [h for h in history if h.get("val_miou") is not None]
    if scored:
        ax_score.plot([h["epoch"] for h in scored], [h["val_miou"] for h in scored], "o-", label="mIoU")
        ax_score.plot([h["epoch"] for h in scored], [h["val_miou_muscles"] for h in scored], "^-",
                      label="mIoU (muscles)")
        ax_score.plot([h["epoch"] for h in scored], [h["val_pixel_accuracy"] for h in scored], "s--",
                      label="pixel accuracy")
    ax_score.set(xlabel="epoch", ylim=(0, 1), title="Validation")
    ax_score.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def fit(network: torch.nn.Module, optimizer, loss_function, train_loader, val_loader, epochs: int,
        output_dir: str | Path, device="cpu", lr_scheduler=None, image_size: int = 256, val_interval: int = 1,
        extra_meta: dict | None = None) -> dict:
    """Train for ``epochs`` epochs; validate every ``val_interval`` epochs; keep the best model.

    Batches are ``{"image": (N, 3, W, H) float in [0,1], "label": (N, 1, W, H) int64}``.
    Returns ``{"best_epoch", "best": validation scores, "history": [...], "train_seconds", "model"}``.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device(device)
    network.to(device)
    net_kwargs = network_kwargs_of(network)
    history: list[dict] = []
    best: dict | None = None
    best_epoch = 0
    start = time.perf_counter()
    for epoch in range(1, int(epochs) + 1):
        cm = torch.zeros(4, 4, dtype=torch.int64)

        def count(logits, labels):
            nonlocal cm
            cm += confusion_matrix(logits.argmax(1), labels[:, 0])

        # one epoch = one pass of the loader through the shared loop (muscle_pipeline.training_loop)
        batches = iter(train_loader)
        losses = fit_loop(network, lambda: next(batches), len(train_loader),
                          lambda logits, labels: loss_function(logits, loss_target(loss_function, labels)),
                          optimizer=optimizer, device=device, what=f"epoch {epoch}", on_batch=count,
                          log_every=max(1, len(train_loader)))["losses"]
        if lr_scheduler is not None:
            lr_scheduler.step()
        train_scores = scores(cm)
        row = {"epoch": epoch, "train_loss": float(np.mean(losses)) if losses else float("nan"),
               "train_miou": train_scores["miou"], "learning_rate": optimizer.param_groups[0]["lr"],
               "val_loss": None, "val_miou": None, "val_miou_muscles": None, "val_pixel_accuracy": None,
               "seconds": time.perf_counter() - start}
        if val_loader is not None and (epoch % int(val_interval) == 0 or epoch == int(epochs)):
            result = evaluate(network, ({"image": plain_tensor(b["image"]), "label": plain_tensor(b["label"])} for b in val_loader),
                              device=device, loss_function=loss_function)
            row.update(val_loss=result["loss"], val_miou=result["miou"], val_miou_muscles=result["miou_muscles"],
                       val_pixel_accuracy=result["pixel_accuracy"])
            if best is None or result["miou"] > best["miou"]:
                best, best_epoch = result, epoch
                save_checkpoint(network, output_dir / "model.pt", image_size, net_kwargs,
                                dict(extra_meta or {}, epoch=epoch, val_miou=result["miou"]))
        elif val_loader is None:
            save_checkpoint(network, output_dir / "model.pt", image_size, net_kwargs, dict(extra_meta or {}, epoch=epoch))
        history.append(row)
        logger.info("epoch %d/%d: train loss %.4f, val loss %s, val mIoU %s, pixel accuracy %s", epoch, epochs,
                    row["train_loss"], _fmt(row["val_loss"]), _fmt(row["val_miou"]), _fmt(row["val_pixel_accuracy"]))
        _write_history(history, output_dir / "history.csv")
    seconds = time.perf_counter() - start
    plot_curves(history, output_dir / "curves.png")
    summary = {"best_epoch": best_epoch, "best": best, "history": history, "train_seconds": seconds,
               "model": str(output_dir / "model.pt"), "image_size": image_size}
    (output_dir / "metrics.json").write_text(json.dumps(summary, indent=2))
    return summary


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def _write_history(history: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)


def sweep(train_config: str | Path, output_dir: str | Path, learning_rates=(1e-4, 1e-3), batch_sizes=(8, 16),
          optimizers=("adam", "sgd"), overrides: dict | None = None, meta_file: str | Path | None = None) -> list[dict]:
    """Run ``train_config`` once per learning rate x batch size x optimizer; write ``sweep.csv`` and
    ``sweep.md`` (best validation mIoU, muscle mIoU, pixel accuracy and loss per combination, best
    first) in ``output_dir``. ``overrides`` are config ids set in every run (``dataset_dir``,
    ``epochs`` ...). Each run's own outputs go to ``output_dir/lr<..>_bs<..>_<optimizer>/``."""
    from monai.bundle import ConfigParser

    train_config = Path(train_config)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for lr, batch_size, optimizer in itertools.product(learning_rates, batch_sizes, optimizers):
        run_dir = output_dir / f"lr{lr:g}_bs{batch_size}_{optimizer}"
        parser = ConfigParser()
        parser.read_config(str(train_config))
        if meta_file:
            parser.read_meta(str(meta_file))
        parser["bundle_root"] = str(train_config.resolve().parents[1])
        for key, value in dict(overrides or {}).items():
            parser[key] = value
        parser["output_dir"] = str(run_dir)
        parser["learning_rate"] = float(lr)
        parser["batch_size"] = int(batch_size)
        parser["optimizer_name"] = str(optimizer)
        logger.info("sweep: learning rate %g, batch size %d, %s", lr, batch_size, optimizer)
        if "initialize" in parser:
            parser.get_parsed_content("initialize")
        summary = parser.get_parsed_content("run")[-1]
        best = summary["best"] or {}
        last = summary["history"][-1]
        rows.append({
            "learning_rate": lr, "batch_size": batch_size, "optimizer": optimizer,
            "best_epoch": summary["best_epoch"], "val_miou": best.get("miou"),
            "val_miou_muscles": best.get("miou_muscles"), "val_pixel_accuracy": best.get("pixel_accuracy"),
            "val_loss": best.get("loss"), "final_train_loss": last["train_loss"],
            "train_seconds": round(summary["train_seconds"], 1), "run_dir": str(run_dir),
        })
    rows.sort(key=lambda r: -(r["val_miou"] if r["val_miou"] is not None else -1))
    write_sweep_table(rows, output_dir)
    return rows


def write_sweep_table(rows: list[dict], output_dir: str | Path) -> tuple[Path, Path]:
    """``sweep.csv`` (all fields) and ``sweep.md`` (a readable table) in ``output_dir``."""
    output_dir = Path(output_dir)
    with open(output_dir / "sweep.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)

    def cell(v):
        return "-" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))

    columns = [("learning_rate", "learning rate"), ("batch_size", "batch size"), ("optimizer", "optimizer"),
               ("val_miou", "val mIoU"), ("val_miou_muscles", "val mIoU (muscles)"),
               ("val_pixel_accuracy", "val pixel accuracy"), ("val_loss", "val loss"),
               ("final_train_loss", "train loss"), ("best_epoch", "best epoch")]
    lines = ["| " + " | ".join(title for _, title in columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join(
            f"{r[k]:g}" if k == "learning_rate" else cell(r[k]) for k, _ in columns) + " |")
    (output_dir / "sweep.md").write_text("\n".join(lines) + "\n")
    return output_dir / "sweep.csv", output_dir / "sweep.md"


__all__ = ["fit", "loss_target", "make_optimizer", "plot_curves", "sweep", "write_sweep_table"]
