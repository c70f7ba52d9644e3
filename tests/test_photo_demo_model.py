"""The demo-model command's own steps: int8 packing keeps the answers and metadata, and the
examples picture shows the photos the scores are computed on."""
from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image

from tools.photo_demo_model import draw_examples, pack
from muscle_pipeline.photo.infer import PhotoSegmenter
from muscle_pipeline.photo.network import read_checkpoint
from tools.photo_synthetic import make_photo

from photo_models import untrained_checkpoint


def test_pack_keeps_metadata_and_answers_at_a_quarter_of_the_size(tmp_path):
    fp32 = untrained_checkpoint(tmp_path / "fp32")
    packed = pack(fp32, tmp_path / "int8.pt")
    assert os.path.getsize(packed) < 0.3 * os.path.getsize(fp32)
    state32, meta32 = read_checkpoint(fp32)
    state8, meta8 = read_checkpoint(packed)
    assert meta8["image_size"] == meta32["image_size"] and meta8["network"] == meta32["network"]
    assert "int8" in meta8["quantization"]
    assert state8.keys() == state32.keys()
    weight = "encoder.conv1.weight"
    assert torch.allclose(state8[weight], state32[weight], atol=float(state32[weight].abs().max()) / 100)
    image = make_photo(np.random.default_rng(3), (64, 64))[0]
    a, b = PhotoSegmenter(fp32).predict(image), PhotoSegmenter(packed).predict(image)
    assert a.shape == b.shape == (64, 64)
    assert (a == b).mean() > 0.95


def test_examples_picture_shows_the_scored_photos_their_truth_and_the_answer(tmp_path):
    model = untrained_checkpoint(tmp_path)  # paints every class somewhere
    path = draw_examples(model, tmp_path / "examples.png", photos=3, seed=1000)
    picture = np.asarray(Image.open(path).convert("RGB")).astype(float)
    assert picture.shape == (480, 3 * 160, 3)
    # Top row: the first photo score_synthetic draws with this seed, scaled like the picture.
    first, truth = make_photo(np.random.default_rng(1000), (256, 256))
    expected = np.asarray(Image.fromarray(first).resize((160, 160), Image.LANCZOS)).astype(float)
    assert np.abs(picture[:160, :160] - expected).mean() < 3
    # The truth row is the photo painted where the drawn mask has a muscle, about as much of it.
    photo, truth_row = picture[:160, :160], picture[160:320, :160]
    painted = (np.abs(truth_row - photo).max(axis=2) > 15).mean()
    assert truth.any() and 0.5 * (truth > 0).mean() < painted < 2 * (truth > 0).mean() + 0.02
