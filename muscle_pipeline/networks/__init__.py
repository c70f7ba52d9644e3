"""Network factories for the cascade (3D U-Nets from MONAI).

Every factory returns a plain ``torch.nn.Module`` whose input is ``(B, in_channels, X, Y, Z)``
and whose output is ``(B, out_channels, X, Y, Z)`` logits. Spatial sizes must be divisible by
the product of the strides (``divisor()`` tells by how much).
"""
from __future__ import annotations

from collections.abc import Sequence
from math import prod

from monai.networks.nets import BasicUNet, DynUNet, UNet

__all__ = ["unet3d", "basic_unet3d", "dyn_unet3d", "divisor"]


def unet3d(
    out_channels: int,
    in_channels: int = 1,
    channels: Sequence[int] = (16, 32, 64),
    strides: Sequence[int] = (2, 2),
    num_res_units: int = 1,
    norm: str = "instance",
    dropout: float = 0.0,
) -> UNet:
    """MONAI ``UNet`` in 3D: ``len(channels)`` levels, ``strides`` between them.

    The default (16, 32, 64) with two down-samplings is the small 3-level U-Net of Ni et al.'s
    stage 2, narrowed so that each per-muscle model is a few hundred kB and trains on a CPU.
    """
    if len(strides) != len(channels) - 1:
        raise ValueError(f"need len(strides) == len(channels) - 1, got {strides} and {channels}")
    return UNet(
        spatial_dims=3,
        in_channels=in_channels,
        out_channels=out_channels,
        channels=tuple(channels),
        strides=tuple(strides),
        num_res_units=num_res_units,
        norm=norm,
        dropout=dropout,
    )


def basic_unet3d(out_channels: int, in_channels: int = 1, features: Sequence[int] = (16, 16, 32, 64, 128, 16)) -> BasicUNet:
    """MONAI ``BasicUNet`` (4 down-samplings; spatial sizes divisible by 16)."""
    return BasicUNet(spatial_dims=3, in_channels=in_channels, out_channels=out_channels, features=tuple(features))


def dyn_unet3d(
    out_channels: int,
    in_channels: int = 1,
    filters: Sequence[int] = (16, 32, 64, 128),
    strides: Sequence[Sequence[int] | int] = (1, 2, 2, 2),
) -> DynUNet:
    """MONAI ``DynUNet`` (nnU-Net-like); ``strides`` may be anisotropic, e.g. ``(2, 2, 1)``."""
    kernels = [3] * len(strides)
    return DynUNet(
        spatial_dims=3,
        in_channels=in_channels,
        out_channels=out_channels,
        kernel_size=kernels,
        strides=list(strides),
        upsample_kernel_size=list(strides[1:]),
        filters=list(filters),
        norm_name="instance",
        res_block=True,
    )


def divisor(strides: Sequence[Sequence[int] | int]) -> tuple[int, int, int]:
    """Per-axis factor that input sizes must be divisible by for these strides."""
    out = [1, 1, 1]
    for s in strides:
        s3 = [s] * 3 if isinstance(s, int) else list(s)
        out = [o * v for o, v in zip(out, s3)]
    return tuple(out)
