"""Interactive demo (Gradio): upload a photo or a video, see the activated muscles overlaid.

    python -m muscle_pipeline.photo.app [--host 127.0.0.1] [--port 7860] [--model PATH]
    muscle-pipeline photo --serve ...

Gradio is an optional extra (``pip install 'muscle_pipeline[photo]'``); everything else in
``muscle_pipeline.photo`` works without it. The app binds to 127.0.0.1 unless told otherwise,
sends no usage statistics, and creates no public share link.

API (for ``gradio_client``): ``/segment_photo`` (image -> overlay image, summary JSON) and
``/segment_video`` (video -> overlaid video, summary JSON).
"""
from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np

from muscle_pipeline.photo.infer import PhotoSegmenter, activated, class_fractions, overlay

# Before gradio is imported: no usage statistics leave the machine.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

_NOTE = ("Demo model trained on synthetic, procedurally drawn gym photos only: it shows the pipeline, "
         "not a validated result on real photos. Train your own with the bundle's train.json.")


def _summary(mask: np.ndarray) -> dict:
    return {"activated": activated(mask),
            "fraction_of_photo": {k: round(v, 5) for k, v in class_fractions(mask).items()}}


def build_app(model_path: str | Path | None = None, device: str = "cpu", segmenter: PhotoSegmenter | None = None):
    """The Gradio Blocks app (not launched)."""
    import gradio as gr

    segmenter = segmenter or PhotoSegmenter(model_path, device)
    work_dir = Path(tempfile.mkdtemp(prefix="muscle_photo_app_"))

    def segment_photo(image):
        if image is None:
            raise gr.Error("Upload a photo first.")
        mask = segmenter.predict(image)
        return overlay(image, mask), _summary(mask)

    def segment_video(video_path):
        if not video_path:
            raise gr.Error("Upload a video first.")
        from muscle_pipeline.photo.video import segment_video as run_video

        out_dir = Path(tempfile.mkdtemp(dir=work_dir))
        result = run_video(video_path, out_dir, segmenter=segmenter)
        return result["video"], {"frames": result["frames"], "fps": result["fps"],
                                 "activated_frame_share": result["activated_frame_share"]}

    with gr.Blocks(title="Activated muscles in gym photos", analytics_enabled=False) as app:
        gr.Markdown("## Activated muscles in gym photos\nBiceps (red), triceps (blue) and calf (green) "
                    f"are coloured where they are flexed; relaxed muscles are not.\n\n*{_NOTE}*")
        with gr.Tab("Photo"):
            with gr.Row():
                photo_in = gr.Image(type="numpy", label="Photo")
                photo_out = gr.Image(type="numpy", label="Activated muscles", format="png")
            photo_summary = gr.JSON(label="Summary")
            gr.Button("Segment photo").click(segment_photo, inputs=photo_in, outputs=[photo_out, photo_summary],
                                             api_name="segment_photo")
        with gr.Tab("Video"):
            with gr.Row():
                video_in = gr.Video(label="Video")
                video_out = gr.Video(label="Activated muscles")
            video_summary = gr.JSON(label="Summary")
            gr.Button("Segment video").click(segment_video, inputs=video_in, outputs=[video_out, video_summary],
                                             api_name="segment_video")
    return app


def launch(host: str = "127.0.0.1", port: int = 7860, model_path: str | Path | None = None, device: str = "cpu",
           block: bool = True):
    """Build and serve the app; with ``block=False`` return ``(app, url)`` and serve in a thread."""
    app = build_app(model_path, device)
    app.launch(server_name=host, server_port=port, share=False, prevent_thread_lock=not block, quiet=not block)
    return app, f"http://{host}:{port}/"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve the activated-muscle photo demo (Gradio).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--model", type=Path, default=None, help="checkpoint (default: the shipped demo model)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    launch(args.host, args.port, args.model, args.device, block=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

__all__ = ["build_app", "launch", "main"]
