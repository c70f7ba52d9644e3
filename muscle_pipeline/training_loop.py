"""The training loop shared by the iteration-based trainers (the cascade's stages, the 2.5D views).

A trainer says what a batch is (``draw_batch``: random crops, synthesis, augmentation) and its
``train.json`` says how to learn (loss, optimiser, learning-rate schedule, iterations); this
module only turns the crank, so every trainer logs, schedules and handles partial labels alike.

Partial labels: a sample may carry ``"labelled"``, a (C,) bool tensor saying which output
channels its dataset annotated (:class:`muscle_pipeline.losses.PartialLabelLoss`). The stacked
(B, C) mask goes to the loss as ``labelled_classes``; a loss without that argument (MONAI's
``DiceCELoss``) is refused when any sample is only partly labelled, because it would teach the
unannotated structures to be background.
"""
from __future__ import annotations

import contextlib
import inspect
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np
import torch

__all__ = ["accepts_labelled_classes", "batch_drawer", "fit", "plain_tensor", "stack_batch"]

log = logging.getLogger(__name__)


def accepts_labelled_classes(loss) -> bool:
    """Whether ``loss(logits, target, labelled_classes)`` is understood (the partial-label losses)."""
    forward = getattr(loss, "forward", loss)
    try:
        return "labelled_classes" in inspect.signature(forward).parameters
    except (TypeError, ValueError):
        return False


def plain_tensor(x) -> torch.Tensor:
    """A MetaTensor's bare tensor (its bookkeeping only slows the network and augmentation down);
    anything else as a tensor."""
    return x.as_tensor() if hasattr(x, "as_tensor") else torch.as_tensor(x)


def stack_batch(batch: Sequence[Mapping] | Mapping, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Samples ``{"image": (C, *spatial), "label": (1, *spatial) class indices[, "labelled": (K,) bool]}``
    (or one dict of such tensors already batched, as a DataLoader gives) -> images (B, C, ...)
    float, labels (B, 1, ...) int64, labelled (B, K) bool or None."""
    if isinstance(batch, Mapping):
        labelled = batch.get("labelled")
        return (plain_tensor(batch["image"]).float().to(device), plain_tensor(batch["label"]).round().long().to(device),
                None if labelled is None else plain_tensor(labelled).bool().to(device))
    x = torch.stack([torch.as_tensor(b["image"]) for b in batch]).float().to(device)
    y = torch.stack([torch.as_tensor(b["label"]) for b in batch]).round().long().to(device)
    labelled = None
    if any("labelled" in b for b in batch):
        labelled = torch.stack([torch.as_tensor(b["labelled"]).bool() for b in batch]).to(device)
    return x, y, labelled


class _SampleStream(torch.utils.data.IterableDataset):
    """Endless ``sample(rng)`` draws in one DataLoader worker, with that worker's own generators."""

    def __init__(self, sample: Callable, seed: int, reseed: Callable[[int], None] | None):
        self.sample, self.seed, self.reseed = sample, int(seed), reseed

    def __iter__(self) -> Iterator[Mapping]:
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else 0
        # forked workers inherit the parent's generators: without their own, every worker would
        # draw the same crops and the same synthetic images
        rng = np.random.default_rng([self.seed, worker + 1])
        if self.reseed is not None:
            self.reseed(self.seed + 104_729 * (worker + 1))
        while True:
            yield self.sample(rng)


def _one_thread(_worker_id: int) -> None:
    torch.set_num_threads(1)  # the workers are the parallelism; OpenMP threads would oversubscribe


@contextlib.contextmanager
def batch_drawer(sample: Callable, batch_size: int, rng: np.random.Generator, num_workers: int = 0, seed: int = 0,
                 reseed: Callable[[int], None] | None = None, pin_memory: bool = False):
    """``draw_batch()`` for :func:`fit`: a list of ``batch_size`` samples of ``sample(rng)``.

    ``num_workers=0`` draws in this process from ``rng``. ``num_workers > 0`` draws in that many
    forked DataLoader worker processes (synthesis and augmentation are numpy/scipy work on the
    CPU; a GPU would otherwise wait for them): worker ``k`` draws from its own generator seeded
    with ``(seed, k + 1)`` and calls ``reseed(seed')`` once, to give the MONAI randomisable
    transforms it uses their own state. The draws are repeatable for a given ``seed`` and
    ``num_workers`` (the DataLoader takes from the workers in turn). The workers stop when the
    block ends.
    """
    if num_workers <= 0:
        yield lambda: [sample(rng) for _ in range(batch_size)]
        return
    loader = torch.utils.data.DataLoader(
        _SampleStream(sample, seed, reseed), batch_size=None, num_workers=int(num_workers), prefetch_factor=4,
        worker_init_fn=_one_thread, pin_memory=pin_memory,
        # fork: ``sample`` is a closure over the trainer and its cached scenes (not picklable, and
        # copy-on-write instead of a copy per worker)
        multiprocessing_context="fork")
    stream = iter(loader)
    try:
        yield lambda: [next(stream) for _ in range(batch_size)]
    finally:
        shutdown = getattr(stream, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
        del stream


def _loss(loss_fn, takes_labelled: bool, logits, y, labelled, what: str):
    if labelled is not None and not bool(labelled.all()):
        if not takes_labelled:
            raise ValueError(f"{what}: some training cases label only part of the structures, but the configured loss "
                             f"{type(loss_fn).__name__} cannot ignore the unlabelled ones; use "
                             "muscle_pipeline.losses.PartialLabelLoss in train.json's 'loss'")
        return loss_fn(logits, y, labelled)
    return loss_fn(logits, y)


def _probe(network, loss_fn, takes_labelled, probes, device, what) -> dict[str, float]:
    """Mean loss on fixed samples per source, network in eval mode, no gradients."""
    out = {}
    was_training = network.training
    network.eval()
    with torch.no_grad():
        for source, samples in probes.items():
            values = []
            for sample in samples:
                x, y, labelled = stack_batch([sample], device)
                values.append(float(_loss(loss_fn, takes_labelled, network(x), y, labelled, what)))
            out[source] = float(np.mean(values))
    network.train(was_training)
    return out


def fit(network: torch.nn.Module, draw_batch: Callable[[], Sequence[Mapping]], iterations: int, loss,
        optimizer: Callable | None = None, lr_scheduler: Callable | None = None, lr: float = 1e-3,
        device="cpu", what: str = "training", probes: Mapping[str, Sequence[Mapping]] | None = None,
        distributed: bool = False, log_every: int = 50, on_batch: Callable | None = None) -> dict:
    """Train ``network`` for ``iterations`` batches of ``draw_batch()``; it ends in eval mode.

    Args:
        loss: ``loss(logits, target)`` or ``loss(logits, target, labelled_classes)``.
        optimizer: ``optimizer(parameters) -> torch.optim.Optimizer`` (a MONAI config item with
            ``"_mode_": "callable"``), or an optimizer already built; None: Adam at ``lr``.
        lr_scheduler: ``lr_scheduler(optimizer, iterations) -> scheduler`` stepped every
            iteration; None: constant learning rate.
        probes: source name -> fixed samples; their mean loss is measured before and after
            training (``result["probes"][source] = {"before", "after"}``): how a run did on each
            dataset's own labels.
        distributed: wrap in ``DistributedDataParallel`` (the process group must exist).
        on_batch: called with the (detached) logits and targets of every batch (e.g. to count a
            confusion matrix while training).

    Returns ``{"losses": [loss per iteration], "probes": {...}, "seconds": float}``.
    """
    device = torch.device(device)
    module = network.to(device)
    takes_labelled = accepts_labelled_classes(loss)
    before = _probe(module, loss, takes_labelled, probes, device, what) if probes else {}
    if distributed:
        network = torch.nn.parallel.DistributedDataParallel(module)
    if isinstance(optimizer, torch.optim.Optimizer):
        opt = optimizer
    else:
        opt = optimizer(network.parameters()) if optimizer is not None else torch.optim.Adam(network.parameters(), lr=lr)
    sched = lr_scheduler(opt, max(1, int(iterations))) if lr_scheduler is not None else None
    network.train()
    losses: list[float] = []
    start = time.perf_counter()
    for it in range(int(iterations)):
        x, y, labelled = stack_batch(draw_batch(), device)
        opt.zero_grad(set_to_none=True)
        logits = network(x)
        value = _loss(loss, takes_labelled, logits, y, labelled, what)
        value.backward()
        opt.step()
        if sched is not None:
            sched.step()
        losses.append(float(value.detach()))
        if on_batch is not None:
            on_batch(logits.detach(), y)
        if (it + 1) % log_every == 0 or it + 1 == iterations:
            log.info("%s: iteration %d/%d loss %.4f (%.0f s)", what, it + 1, iterations,
                     float(np.mean(losses[-log_every:])), time.perf_counter() - start)
    module.eval()
    result = {"losses": losses, "seconds": time.perf_counter() - start, "probes": {}}
    if probes:
        after = _probe(module, loss, takes_labelled, probes, device, what)
        result["probes"] = {s: {"before": before[s], "after": after[s]} for s in probes}
        for s, d in result["probes"].items():
            log.info("%s: loss on %s's labels %.4f -> %.4f", what, s, d["before"], d["after"])
    return result
