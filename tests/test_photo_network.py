"""The photo network (ResNet-34 FlexibleUNet), its checkpoints, local encoder weights, and the scores."""
from __future__ import annotations

import zipfile

import numpy as np
import pytest
import torch

from muscle_pipeline.errors import ModelError
from muscle_pipeline.photo.evaluation import confusion_matrix, scores
from muscle_pipeline.photo.network import (
    QUANTIZED_FORMAT,
    build_network,
    dequantize_state_dict,
    load_encoder_weights,
    load_network,
    load_weights,
    quantize_state_dict,
    read_checkpoint,
    save_checkpoint,
    save_quantized,
)


@pytest.fixture(scope="module")
def network():
    torch.manual_seed(0)
    return build_network().eval()


def test_resnet34_encoder_and_output_shape(network):
    # ResNet-34: 3, 4, 6 and 3 basic blocks; 21.1 M encoder parameters (MONAI's type-A shortcuts).
    assert [len(getattr(network.encoder, f"layer{i}")) for i in range(1, 5)] == [3, 4, 6, 3]
    assert sum(p.numel() for p in network.encoder.parameters()) == 21_110_848
    with torch.inference_mode():
        out = network(torch.rand(2, 3, 64, 96))
    assert out.shape == (2, 4, 64, 96)


def test_quantized_checkpoint_round_trip(network, tmp_path):
    state = network.state_dict()
    packed = quantize_state_dict(state, bits=8)
    restored = dequantize_state_dict(packed)
    for key, value in state.items():
        if key in packed["int8"]:
            step = packed["scales"][key].view(-1, *([1] * (value.ndim - 1)))
            assert torch.all((restored[key] - value).abs() <= step / 2 + 1e-7)
        else:
            assert torch.equal(restored[key], value.float() if value.is_floating_point() else value)

    path = save_quantized(network, tmp_path / "model.pt", image_size=128, extra_meta={"note": "test"})
    with zipfile.ZipFile(path) as z:  # deflated, yet a plain torch.load reads it
        assert all(info.compress_type == zipfile.ZIP_DEFLATED for info in z.infolist())
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == QUANTIZED_FORMAT and raw["int8"]["encoder.conv1.weight"].dtype == torch.int8
    loaded, meta = load_network(path)
    assert meta["image_size"] == 128 and meta["note"] == "test" and meta["network"]["backbone"] == "resnet34"
    x = torch.rand(1, 3, 64, 64)
    with torch.inference_mode():
        ref, got = network(x), loaded(x)
    assert float((ref - got).abs().max()) < 0.05 * float(ref.abs().max())

    float_path = save_checkpoint(network, tmp_path / "float.pt", image_size=64)
    state2, meta2 = read_checkpoint(float_path)
    assert meta2["image_size"] == 64 and torch.equal(state2["encoder.conv1.weight"], state["encoder.conv1.weight"])
    bare = tmp_path / "bare.pt"
    torch.save(network.state_dict(), bare)
    assert read_checkpoint(bare)[1] == {}
    load_weights(build_network(), bare)


def test_bad_checkpoints_raise_model_error(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        read_checkpoint(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ModelError, match="junk.pt"):
        read_checkpoint(junk)
    other = tmp_path / "resnet18.pt"
    torch.save(build_network(backbone="resnet18").state_dict(), other)
    with pytest.raises(ModelError, match="do not fit"):
        load_weights(build_network(), other)


def test_local_encoder_weights_torchvision_layout(network, tmp_path):
    # A torchvision-style ResNet-34 state dict: same names without "encoder.", plus fc and
    # projection shortcuts that MONAI's type-A ResNet-34 has no place for.
    torch.manual_seed(1)
    state = {k: torch.randn_like(v.float()) if v.is_floating_point() else v
             for k, v in network.encoder.state_dict().items()}
    state["fc.weight"] = torch.randn(1000, 512)
    state["layer2.0.downsample.0.weight"] = torch.randn(128, 64, 1, 1)
    path = tmp_path / "resnet34_imagenet.pth"
    torch.save(state, path)
    net = load_encoder_weights(build_network(), path)
    assert torch.equal(net.encoder.layer3[5].conv2.weight, state["layer3.5.conv2.weight"])
    assert load_encoder_weights(net, None) is net

    state["conv1.weight"] = torch.randn(64, 1, 7, 7)
    torch.save(state, path)
    with pytest.raises(ModelError, match="conv1.weight"):
        load_encoder_weights(build_network(), path)


def test_scores_from_confusion_matrix():
    label = torch.tensor([[0, 0, 1, 1], [2, 2, 0, 0]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 0, 0]])
    cm = confusion_matrix(pred, label)
    assert cm.tolist() == [[3, 1, 0, 0], [0, 2, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]]
    s = scores(cm)
    # background 3/(4+4-3)=0.6, biceps 2/(2+3-2)=2/3, triceps 1/(2+1-1)=0.5; calf absent -> left out
    assert s["iou"]["background"] == pytest.approx(0.6)
    assert s["iou"]["biceps"] == pytest.approx(2 / 3)
    assert s["iou"]["triceps"] == pytest.approx(0.5)
    assert s["iou"]["calf"] is None
    assert s["miou"] == pytest.approx(np.mean([0.6, 2 / 3, 0.5]))
    assert s["miou_muscles"] == pytest.approx(np.mean([2 / 3, 0.5]))
    assert s["pixel_accuracy"] == pytest.approx(6 / 8)
