"""Networks of the thigh CT bundle: the seed's simplified 2D U-Net and the 3D baseline.

Both are MONAI ``UNet``s with three resolution levels (two down-samplings, hence two skip
connections) and no residual units, so each has ~10^5 parameters and trains on a CPU in
minutes. Inputs ``(B, in_channels, H, W)`` (2D) or ``(B, in_channels, X, Y, Z)`` (3D) with
spatial sizes divisible by 4; outputs are logits with ``out_channels`` channels.
"""
from __future__ import annotations

from collections.abc import Sequence

from monai.networks.nets import UNet

from muscle_pipeline.networks import unet3d

__all__ = ["simple_unet2d", "baseline_unet3d", "SIZE_DIVISOR"]

# Two stride-2 down-samplings: every spatial size must be a multiple of 4.
SIZE_DIVISOR = 4


def simple_unet2d(out_channels: int, in_channels: int = 3, channels: Sequence[int] = (16, 32, 64),
                  norm: str = "instance", dropout: float = 0.0) -> UNet:
    """Simplified 2D U-Net of seed 004: 3 levels (``channels``), two skip connections.

    ``in_channels=3`` is the 2.5D input (slice and its neighbours); 1 for a plain 2D U-Net.
    """
    if len(channels) != 3:
        raise ValueError(f"the simplified U-Net has exactly 3 levels (2 skips), got channels={channels}")
    return UNet(spatial_dims=2, in_channels=in_channels, out_channels=out_channels, channels=tuple(channels),
                strides=(2, 2), num_res_units=0, norm=norm, dropout=dropout)


def baseline_unet3d(out_channels: int, in_channels: int = 1, channels: Sequence[int] = (16, 32, 64)) -> UNet:
    """3D U-Net baseline with the same depth and widths as :func:`simple_unet2d`."""
    return unet3d(out_channels, in_channels=in_channels, channels=tuple(channels), strides=(2, 2), num_res_units=0)
