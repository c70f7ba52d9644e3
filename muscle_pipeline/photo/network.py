"""The photo network (MONAI FlexibleUNet with a ResNet-34 encoder), checkpoints and encoder weights.

Checkpoint file (``torch.load(..., weights_only=True)`` reads every variant)::

    {"state_dict": {...}, "meta": {"network": {FlexibleUNet kwargs}, "image_size": 256,
                                    "classes": [...], ...}}                       # training output
    {"format": QUANTIZED_FORMAT, "int8": {...}, "scales": {...}, "float": {...}, "meta": {...}}
    {name: tensor, ...}                                                            # a bare state dict

The quantized variant stores every convolution weight as int8 with one float scale per output
channel (weight-only quantization; arithmetic stays float32 after loading) and is written as a
deflate-compressed zip, which ``torch.load`` reads like any other checkpoint. It exists because a
ResNet-34 encoder alone has 21.1 M parameters (84 MB in float32), four times the size we ship in
the repository; see ``bundles/gym_photo/docs/README.md`` for the measured size and the (absent)
loss of accuracy.

``pretrained=True`` cannot be used for a 2D ResNet in MONAI (only 3D MedicalNet weights exist
there) and nothing is downloaded at run time anyway: ``load_encoder_weights`` takes a local file
with a torchvision-style ResNet-34 state dict (e.g. ImageNet weights a user already has).
"""
from __future__ import annotations

import functools
import logging
import os
import tempfile
import zipfile
from pathlib import Path

import torch
from monai.networks.layers.factories import Pool
from monai.networks.nets import FlexibleUNet

from muscle_pipeline.errors import ModelError
from muscle_pipeline.photo import CLASS_NAMES, NUM_CLASSES

logger = logging.getLogger(__name__)

QUANTIZED_FORMAT = "muscle_pipeline.photo/int8-per-channel-v1"
DEFAULT_BACKBONE = "resnet34"
#: Narrower than FlexibleUNet's default (256, 128, 64, 32, 16): the decoder of the shipped demo
#: model. The ResNet-34 encoder is unchanged.
DEFAULT_DECODER_CHANNELS = (128, 64, 32, 16, 8)


def network_kwargs(backbone: str = DEFAULT_BACKBONE, decoder_channels=DEFAULT_DECODER_CHANNELS,
                   num_classes: int = NUM_CLASSES) -> dict:
    """FlexibleUNet keyword arguments of a photo network (RGB in, one logit map per class out)."""
    return dict(in_channels=3, out_channels=num_classes, backbone=backbone, pretrained=False, spatial_dims=2,
                decoder_channels=tuple(int(c) for c in decoder_channels))


def build_network(backbone: str = DEFAULT_BACKBONE, decoder_channels=DEFAULT_DECODER_CHANNELS,
                  num_classes: int = NUM_CLASSES) -> FlexibleUNet:
    """A FlexibleUNet: input ``(N, 3, W, H)`` in [0, 1], output logits ``(N, num_classes, W, H)``.
    W and H must be multiples of 32."""
    return FlexibleUNet(**network_kwargs(backbone, decoder_channels, num_classes))


class ZeroPadShortcut(torch.nn.Module):
    """The parameter-free (type A) ResNet shortcut as a module: average pooling with kernel 1 and
    the block's stride, then zero channels up to ``planes``.

    MONAI's ResNet-18/34 build this shortcut as a ``functools.partial`` of
    ``ResNet._downsample_basic_block``, which TorchScript cannot script (a partial is no
    TorchScript type) and ``torch.jit.trace`` records wrongly (it uses ``out.data``, so the traced
    graph keeps the trace input's residual as a constant: the traced network answers differently
    and only for the traced shape). Same arithmetic here, ``detach`` for ``.data``.
    """

    def __init__(self, planes: int, stride: int, spatial_dims: int = 2) -> None:
        super().__init__()
        self.planes = int(planes)
        self.pool = Pool[Pool.AVG, spatial_dims](kernel_size=1, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.pool(x)
        size = [out.size(0), self.planes - out.size(1)] + list(out.shape[2:])
        return torch.cat([out.detach(), torch.zeros(size, dtype=out.dtype, device=out.device)], dim=1)


def scriptable_shortcuts(network: torch.nn.Module) -> torch.nn.Module:
    """Replace every type-A shortcut partial of ``network``'s ResNet blocks by :class:`ZeroPadShortcut`
    (in place; no parameter changes, so checkpoints load as before and outputs are identical)."""
    for module in network.modules():
        shortcut = getattr(module, "downsample", None)
        if isinstance(shortcut, functools.partial):
            kw = shortcut.keywords
            module.downsample = ZeroPadShortcut(kw["planes"], kw["stride"], kw.get("spatial_dims", 2))
    return network


def flexible_unet(**kwargs) -> FlexibleUNet:
    """``FlexibleUNet(**kwargs)`` that TorchScript can script (:func:`scriptable_shortcuts`): what the
    bundle's ``network_def`` builds, so ``python -m monai.bundle ckpt_export network_def ...`` works."""
    return scriptable_shortcuts(FlexibleUNet(**kwargs))


def load_encoder_weights(network: FlexibleUNet, path: str | Path | None) -> FlexibleUNet:
    """Copy ResNet encoder weights from a local file into ``network.encoder`` (None: do nothing).

    Accepts a torchvision-style ResNet state dict (``conv1.weight``, ``layer1.0.conv1.weight``, ...;
    optionally nested under ``state_dict`` or prefixed ``module.``/``encoder.``). Keys with no
    counterpart are skipped and logged: the classifier (``fc.*``) and torchvision's projection
    shortcuts (``layerN.0.downsample.*``), because MONAI's ResNet-34 uses parameter-free (type A)
    shortcuts. A shape mismatch is a ``ModelError``.
    """
    if path is None or str(path) in ("", "None", "null"):
        return network
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: encoder weights file not found")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    target = network.encoder.state_dict()
    loaded, skipped = {}, []
    for key, value in state.items():
        name = key
        for prefix in ("module.", "encoder."):
            name = name[len(prefix):] if name.startswith(prefix) else name
        if name not in target:
            skipped.append(key)
            continue
        if tuple(target[name].shape) != tuple(value.shape):
            raise ModelError(f"{path}: {key} has shape {tuple(value.shape)}, the encoder expects {tuple(target[name].shape)}")
        loaded[name] = value
    if not loaded:
        raise ModelError(f"{path}: no key matches the {type(network.encoder).__name__} encoder; is it a ResNet state dict?")
    missing = sorted(set(target) - set(loaded))
    network.encoder.load_state_dict(loaded, strict=False)
    logger.info("encoder weights from %s: %d tensors loaded, %d skipped (%s), %d left at initialisation (%s)",
                path, len(loaded), len(skipped), ", ".join(skipped[:4]), len(missing), ", ".join(missing[:4]))
    return network


def initialise(network: FlexibleUNet, encoder_weights: str | Path | None = None,
               weights: str | Path | None = None) -> FlexibleUNet:
    """Starting weights for training: a whole checkpoint (``weights``: fine-tune a previous model)
    or local ResNet encoder weights (``encoder_weights``), or neither (random initialisation)."""
    if weights is not None and str(weights) not in ("", "None", "null"):
        load_weights(network, weights)
        return network.train()
    return load_encoder_weights(network, encoder_weights)


def _meta(network_kwargs_: dict, image_size: int, extra: dict | None = None) -> dict:
    meta = {"network": {k: (list(v) if isinstance(v, tuple) else v) for k, v in network_kwargs_.items()},
            "image_size": int(image_size), "classes": list(CLASS_NAMES)}
    meta.update(extra or {})
    return meta


def save_checkpoint(network: FlexibleUNet, path: str | Path, image_size: int, net_kwargs: dict | None = None,
                    extra_meta: dict | None = None) -> Path:
    """Save a float32 checkpoint with the metadata needed to rebuild and feed the network."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    net_kwargs = net_kwargs or network_kwargs_of(network)
    state = {k: v.detach().cpu() for k, v in network.state_dict().items()}
    _atomic_torch_save({"state_dict": state, "meta": _meta(net_kwargs, image_size, extra_meta)}, path)
    return path


def network_kwargs_of(network: FlexibleUNet) -> dict:
    """Recover FlexibleUNet kwargs from a built network (backbone from its parameter count)."""
    decoder = tuple(int(block.convs.conv_1.conv.out_channels) for block in network.decoder.blocks)
    n_blocks = sum(len(getattr(network.encoder, f"layer{i}")) for i in range(1, 5))
    backbone = {8: "resnet18", 16: "resnet34"}.get(n_blocks, DEFAULT_BACKBONE)
    out_channels = int(network.segmentation_head[0].out_channels)
    return network_kwargs(backbone, decoder, out_channels)


def quantize_state_dict(state: dict[str, torch.Tensor], bits: int = 8) -> dict:
    """Weight-only symmetric quantization: tensors with 2+ dims -> int8 (values within ±(2**(bits-1)-1))
    with one float32 scale per output channel; other tensors are kept as float32/int64."""
    if not 2 <= bits <= 8:
        raise ValueError("bits must be within 2..8")
    qmax = 2 ** (bits - 1) - 1
    int8, scales, floats = {}, {}, {}
    for key, value in state.items():
        value = value.detach().cpu()
        if value.is_floating_point() and value.ndim >= 2:
            flat = value.float().reshape(value.shape[0], -1)
            scale = flat.abs().amax(dim=1).clamp_min(1e-12) / qmax
            int8[key] = torch.round(flat / scale[:, None]).clamp(-qmax, qmax).to(torch.int8).reshape(value.shape)
            scales[key] = scale
        else:
            floats[key] = value.float() if value.is_floating_point() else value
    return {"format": QUANTIZED_FORMAT, "bits": bits, "int8": int8, "scales": scales, "float": floats}


def dequantize_state_dict(packed: dict) -> dict[str, torch.Tensor]:
    """Inverse of :func:`quantize_state_dict` (float32 tensors)."""
    state = dict(packed["float"])
    for key, q in packed["int8"].items():
        scale = packed["scales"][key].float()
        state[key] = q.float() * scale.view(-1, *([1] * (q.ndim - 1)))
    return state


def save_quantized(network_or_state, path: str | Path, image_size: int, net_kwargs: dict | None = None,
                   bits: int = 8, extra_meta: dict | None = None) -> Path:
    """Write a weight-only int8 checkpoint as a deflate-compressed zip that ``torch.load`` reads."""
    if isinstance(network_or_state, torch.nn.Module):
        net_kwargs = net_kwargs or network_kwargs_of(network_or_state)
        state = network_or_state.state_dict()
    else:
        state = network_or_state
    if net_kwargs is None:
        raise ValueError("net_kwargs are needed when saving a bare state dict")
    packed = quantize_state_dict(state, bits)
    packed["meta"] = _meta(net_kwargs, image_size, extra_meta)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        plain = Path(tmp) / "plain.pt"
        torch.save(packed, plain)
        # torch.save stores its zip entries uncompressed; int8 weights deflate by a further ~10-25 %.
        packed_path = Path(tmp) / "packed.pt"
        with zipfile.ZipFile(plain) as zin, zipfile.ZipFile(packed_path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zout:
            for info in zin.infolist():
                zout.writestr(info.filename, zin.read(info.filename))
        os.replace(packed_path, path)
    return path


def _atomic_torch_save(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(float32 state dict, meta) from any checkpoint variant; meta is {} for a bare state dict."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: model file not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file: one clear line instead of a pickle traceback
        raise ModelError(f"{path}: not a readable PyTorch checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(obj, dict):
        raise ModelError(f"{path}: expected a checkpoint dictionary, found {type(obj).__name__}")
    if obj.get("format") == QUANTIZED_FORMAT:
        return dequantize_state_dict(obj), dict(obj.get("meta", {}))
    if "state_dict" in obj and isinstance(obj["state_dict"], dict):
        return obj["state_dict"], dict(obj.get("meta", {}))
    if all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj, {}
    raise ModelError(f"{path}: unknown checkpoint layout (keys: {', '.join(list(obj)[:5])})")


def checkpoint_image_size(path: str | Path, default: int = 256) -> int:
    """The input size a checkpoint was trained at (``default`` for a bare state dict)."""
    return int(read_checkpoint(path)[1].get("image_size", default))


def load_weights(network: FlexibleUNet, path: str | Path) -> FlexibleUNet:
    """Load any checkpoint variant into ``network`` (strict) and switch it to eval mode."""
    state, _ = read_checkpoint(path)
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelError(f"{path}: weights do not fit the configured network ({str(exc).splitlines()[0]})") from exc
    return network.eval()


def load_network(path: str | Path, device: str | torch.device = "cpu") -> tuple[FlexibleUNet, dict]:
    """Build the network a checkpoint describes, load it, and return ``(network in eval mode, meta)``."""
    state, meta = read_checkpoint(path)
    kwargs = dict(meta.get("network") or network_kwargs())
    kwargs["decoder_channels"] = tuple(kwargs.get("decoder_channels", DEFAULT_DECODER_CHANNELS))
    network = FlexibleUNet(**kwargs)
    load_weights(network, path)
    meta.setdefault("image_size", 256)
    return network.to(device), meta


def bundle_path() -> Path:
    """The ``gym_photo`` bundle folder (configs, docs, shipped model), found like every bundle."""
    from muscle_pipeline.bundle import bundle_path as find_bundle

    return find_bundle("gym_photo")


def default_model_path() -> Path:
    """The shipped demo model, ``bundles/gym_photo/models/model.pt``."""
    return bundle_path() / "models" / "model.pt"


__all__ = [
    "build_network", "flexible_unet", "scriptable_shortcuts", "ZeroPadShortcut", "network_kwargs", "network_kwargs_of",
    "load_encoder_weights", "initialise", "save_checkpoint",
    "save_quantized", "quantize_state_dict", "dequantize_state_dict", "read_checkpoint", "checkpoint_image_size",
    "load_weights", "load_network", "bundle_path", "default_model_path", "QUANTIZED_FORMAT", "DEFAULT_DECODER_CHANNELS",
]
