"""Inference on photos, folders and videos: the CLI, the Python API, and the bundle's inference.json.

The plumbing is tested with a small untrained checkpoint (fast); what the shipped model finds is
tested in test_photo_quality.py.
"""
from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from muscle_pipeline.cli import main
from muscle_pipeline.errors import InputError
from muscle_pipeline.photo import CLASS_COLOURS
from muscle_pipeline.photo.infer import PhotoSegmenter, overlay, segment_images
from tools.photo_synthetic import make_photo
from photo_models import untrained_checkpoint

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "gym_photo"


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return untrained_checkpoint(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def segmenter(model_path):
    return PhotoSegmenter(model_path)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(11)
    for i, size in enumerate([(60, 90), (72, 48)]):
        Image.fromarray(make_photo(rng, size)[0]).save(folder / f"gym_{i}.png")
    Image.fromarray(make_photo(rng, (40, 40))[0]).convert("L").save(folder / "gym_gray.jpg")
    return folder


def test_cli_folder_writes_masks_overlays_summary(photos, model_path, tmp_path, segmenter):
    out = tmp_path / "out"
    assert main(["photo", str(photos), "-o", str(out), "--model", str(model_path)]) == 0
    for stem, shape in (("gym_0", (60, 90)), ("gym_1", (72, 48)), ("gym_gray", (40, 40))):
        mask = np.asarray(Image.open(out / f"{stem}_mask.png"))
        assert mask.shape == shape and mask.dtype == np.uint8 and mask.max() <= 3
        assert np.array_equal(mask, segmenter.predict(photos / f"{Path(stem).name}{'.jpg' if 'gray' in stem else '.png'}"))
        assert np.asarray(Image.open(out / f"{stem}_overlay.png")).shape == shape + (3,)
    with open(out / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 and all(r["error"] == "" for r in rows)
    assert (out / "labels.json").is_file()


def test_array_and_file_inputs_agree(photos, segmenter):
    rgb = np.asarray(Image.open(photos / "gym_0.png"))
    assert np.array_equal(segmenter.predict(rgb), segmenter.predict(photos / "gym_0.png"))


def test_overlay_colours_and_legend():
    rgb = np.full((120, 160, 3), 100, np.uint8)
    mask = np.zeros((120, 160), np.uint8)
    mask[60:100, 20:60], mask[60:100, 70:110], mask[60:100, 120:150] = 1, 2, 3
    out = overlay(rgb, mask, alpha=0.5)
    for value, (y, x) in ((1, (80, 40)), (2, (80, 90)), (3, (80, 135))):
        expected = 0.5 * 100 + 0.5 * np.asarray(CLASS_COLOURS[value])
        assert np.allclose(out[y, x], expected, atol=1)
        assert np.array_equal(out[60, x], CLASS_COLOURS[value])  # outline in full colour
    assert np.array_equal(out[110, 10], rgb[110, 10])  # background untouched
    legend = out[:20, :20].reshape(-1, 3)
    assert (legend == CLASS_COLOURS[1]).all(1).any()  # the biceps swatch of the legend
    with pytest.raises(ValueError):
        overlay(rgb, mask[:10])


def test_unreadable_photo_is_reported_and_others_go_on(photos, model_path, tmp_path, segmenter):
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "ok.png").write_bytes((photos / "gym_0.png").read_bytes())
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    rows = segment_images(folder, tmp_path / "out", segmenter=segmenter)
    by_name = {Path(r["image"]).name: r for r in rows}
    assert "broken.jpg" in by_name["broken.jpg"]["error"]
    assert by_name["ok.png"]["error"] == "" and (tmp_path / "out" / "ok_mask.png").is_file()
    assert main(["photo", str(folder), "-o", str(tmp_path / "out2"), "--model", str(model_path)]) == 1
    with pytest.raises(InputError):
        segment_images(tmp_path / "no_such_folder", tmp_path / "out3", segmenter=segmenter)


def test_cli_video_writes_overlaid_video(tmp_path, model_path, segmenter):
    import imageio.v2 as imageio

    rng = np.random.default_rng(5)
    frames = [make_photo(rng, (64, 96))[0] for _ in range(3)]
    source = tmp_path / "lift.mp4"
    with imageio.get_writer(source, format="FFMPEG", fps=8, codec="libx264", macro_block_size=1,
                            ffmpeg_log_level="error") as writer:
        for frame in frames + frames[::-1]:
            writer.append_data(frame)
    out = tmp_path / "video_out"
    assert main(["photo", str(source), "-o", str(out), "--model", str(model_path)]) == 0
    reader = imageio.get_reader(out / "lift_overlay.mp4", format="FFMPEG")
    written = [np.asarray(f) for f in reader]
    assert reader.get_meta_data()["fps"] == pytest.approx(8)
    reader.close()
    assert len(written) == 6 and written[0].shape == (64, 96, 3)
    with open(out / "lift_frames.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["frame"]) for r in rows] == list(range(6))
    # The overlay of the first decoded frame, re-encoded, is what the video holds (lossy codec).
    decoded = [np.asarray(f) for f in imageio.get_reader(source, format="FFMPEG")]
    expected = overlay(decoded[0], segmenter.predict(decoded[0]))
    assert np.abs(written[0].astype(int) - expected.astype(int)).mean() < 12


def test_bundle_inference_config_writes_the_same_masks(photos, model_path, tmp_path, segmenter):
    out = tmp_path / "bundle_out"
    cmd = [sys.executable, "-m", "monai.bundle", "run",
           "--config_file", str(BUNDLE / "configs" / "inference.json"),
           "--meta_file", str(BUNDLE / "configs" / "metadata.json"),
           "--logging_file", str(BUNDLE / "configs" / "logging.conf"),
           "--input", str(photos), "--output_dir", str(out), "--model_path", str(model_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for name in ("gym_0.png", "gym_1.png", "gym_gray.jpg"):
        mask = np.asarray(Image.open(out / f"{Path(name).stem}_mask.png"))
        assert np.array_equal(mask, segmenter.predict(photos / name)), name


def test_metadata_passes_monai_schema():
    from monai.bundle import verify_metadata

    verify_metadata(meta_file=str(BUNDLE / "configs" / "metadata.json"),
                    filepath=str(REPO / "bundles" / "schemas" / "meta_schema_20240725.json"))
