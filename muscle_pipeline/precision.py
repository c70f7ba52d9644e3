"""Reduced-precision inference: bf16 autocast where the hardware computes it natively.

On a CPU with AMX or AVX512-BF16 (Intel Sapphire Rapids and later, AMD Zen 4 and later) oneDNN runs
bf16 3D convolutions ~2.5x faster than fp32 (``benchmarks/bench_precision.py``); on a CPU without
it bf16 is *emulated* and slower than fp32, so ``"auto"`` only picks it where it is native. The
networks' weights stay fp32; only the forward pass is autocast, and the logits come back as fp32
before softmax and averaging.
"""
from __future__ import annotations

import contextlib
from functools import lru_cache

import torch

__all__ = ["PRECISIONS", "PRECISION_NAMES", "native_bf16", "resolve_precision", "autocast"]

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# autocast dtype (resolve_precision's answer) → the name reports give it
PRECISION_NAMES = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


@lru_cache(maxsize=None)
def native_bf16(device_type: str = "cpu") -> bool:
    """Whether ``device_type`` ("cpu" or "cuda") computes bf16 convolutions natively."""
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device_type != "cpu":
        return False
    try:  # oneDNN's own check: AVX512-BF16 or AMX present
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str, device: str | torch.device = "cpu") -> torch.dtype | None:
    """``"auto" | "fp32" | "bf16" | "fp16"`` → the autocast dtype for ``device`` (None: plain fp32).

    ``"auto"``: bf16 where :func:`native_bf16`, else fp32. ``"fp16"`` is for CUDA only (CPU fp16
    convolutions are emulated)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    device_type = torch.device(device).type
    if precision == "fp32":
        return None
    if precision == "auto":
        return torch.bfloat16 if native_bf16(device_type) else None
    if precision == "fp16" and device_type != "cuda":
        raise ValueError("precision 'fp16' needs a CUDA device; use 'bf16' (or 'auto') on CPU")
    return torch.bfloat16 if precision == "bf16" else torch.float16


def autocast(dtype: torch.dtype | None, device: str | torch.device = "cpu"):
    """A ``torch.autocast`` context for ``dtype`` on ``device``'s type, or a no-op for None (fp32)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)
