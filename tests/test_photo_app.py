"""The Gradio demo, end to end: launched on 127.0.0.1 and driven through gradio_client.

Gradio is an optional extra (``muscle_pipeline[photo]``); this test is skipped only when it is
not installed.
"""
from __future__ import annotations

import socket

import numpy as np
import pytest
from PIL import Image

gr = pytest.importorskip("gradio", reason="Gradio not installed: pip install 'muscle_pipeline[photo]' to test the demo app")
gradio_client = pytest.importorskip("gradio_client", reason="gradio_client not installed (muscle_pipeline[photo] extra)")

from muscle_pipeline.photo.app import build_app  # noqa: E402
from muscle_pipeline.photo.infer import PhotoSegmenter, overlay  # noqa: E402
from tools.photo_synthetic import make_photo  # noqa: E402
from photo_models import untrained_checkpoint  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    model = untrained_checkpoint(tmp_path_factory.mktemp("model"))
    segmenter = PhotoSegmenter(model)
    app = build_app(segmenter=segmenter)
    port = _free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, share=False)
    try:
        yield gradio_client.Client(f"http://127.0.0.1:{port}/", verbose=False), segmenter
    finally:
        app.close()


def test_app_segments_an_uploaded_photo(served, tmp_path):
    client, segmenter = served
    rgb = make_photo(np.random.default_rng(3), (72, 100))[0]
    path = tmp_path / "upload.png"
    Image.fromarray(rgb).save(path)
    overlay_path, summary = client.predict(gradio_client.handle_file(str(path)), api_name="/segment_photo")
    returned = np.asarray(Image.open(overlay_path).convert("RGB"))
    mask = segmenter.predict(rgb)
    assert np.array_equal(returned, overlay(rgb, mask))
    assert set(summary["fraction_of_photo"]) == {"biceps", "triceps", "calf"}
    for name, share in summary["fraction_of_photo"].items():
        assert share == pytest.approx(np.mean(mask == ["background", "biceps", "triceps", "calf"].index(name)), abs=1e-4)


def test_app_segments_an_uploaded_video(served, tmp_path):
    import imageio.v2 as imageio

    client, _ = served
    rng = np.random.default_rng(4)
    source = tmp_path / "clip.mp4"
    with imageio.get_writer(source, format="FFMPEG", fps=6, codec="libx264", macro_block_size=1,
                            ffmpeg_log_level="error") as writer:
        for _ in range(4):
            writer.append_data(make_photo(rng, (64, 64))[0])
    video_path, summary = client.predict(gradio_client.handle_file(str(source)), api_name="/segment_video")
    frames = [np.asarray(f) for f in imageio.get_reader(video_path, format="FFMPEG")]
    assert summary["frames"] == 4 and len(frames) == 4 and frames[0].shape == (64, 64, 3)
    assert summary["fps"] == pytest.approx(6)
