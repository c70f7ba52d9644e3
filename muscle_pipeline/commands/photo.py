"""``muscle-pipeline photo``: activated muscles in gym photos and videos, or the demo app.

    muscle-pipeline photo IMAGE|FOLDER|VIDEO -o OUT [--model PATH] [--device cpu] [--every-nth N]
    muscle-pipeline photo --serve [--host 127.0.0.1] [--port 7860] [--model PATH]
"""
from __future__ import annotations

import argparse
from pathlib import Path

from muscle_pipeline.errors import InputError


def register(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "photo",
        help="segment activated biceps/triceps/calf in gym photos or videos (or serve the demo app)",
        description="Segment activated (flexed) biceps, triceps and calf muscles in an image, every image of a "
                    "folder, or a video (frame by frame). Writes NAME_mask.png (0 background, 1 biceps, "
                    "2 triceps, 3 calf), NAME_overlay.png, summary.csv; for a video NAME_overlay.mp4 and "
                    "NAME_frames.csv. The default model is a demo trained on synthetic photos.",
    )
    parser.add_argument("input", nargs="?", type=Path, help="image file, folder of images, or video file")
    parser.add_argument("-o", "--output", type=Path, help="output folder (created)")
    parser.add_argument("--model", type=Path, default=None,
                        help="checkpoint (default: bundles/gym_photo/models/model.pt, the synthetic-photo demo)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument("--every-nth", type=int, default=1,
                        help="video: segment every n-th frame and reuse its mask in between (default 1)")
    parser.add_argument("--serve", action="store_true", help="serve the interactive Gradio demo instead")
    parser.add_argument("--host", default="127.0.0.1", help="--serve: address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=7860, help="--serve: port (default 7860)")
    return parser


def run(args) -> int:
    if args.serve:
        try:
            from muscle_pipeline.photo.app import launch
            import gradio  # noqa: F401  (fail here with a clear message, not deep inside the app)
        except ImportError:
            raise InputError(None, "the demo app needs Gradio: pip install 'muscle_pipeline[photo]'") from None
        launch(args.host, args.port, args.model, args.device, block=True)
        return 0
    if args.input is None or args.output is None:
        raise InputError(None, "give an INPUT (image, folder or video) and -o OUTPUT, or --serve")
    from muscle_pipeline.photo.infer import segment_images
    from muscle_pipeline.photo.video import is_video, segment_video

    if args.input.is_file() and is_video(args.input):
        result = segment_video(args.input, args.output, model_path=args.model, device=args.device,
                               every_nth=args.every_nth)
        shares = ", ".join(f"{k} {v:.0%}" for k, v in result["activated_frame_share"].items())
        print(f"{result['frames']} frames -> {result['video']} (frames with activated muscle: {shares})")
        return 0
    rows = segment_images(args.input, args.output, model_path=args.model, device=args.device)
    failed = [r for r in rows if r.get("error")]
    for row in rows:
        if row.get("error"):
            print(f"failed: {row['error']}")
        else:
            print(f"{Path(row['image']).name}: activated {row['activated'] or 'none'}")
    print(f"{len(rows) - len(failed)} of {len(rows)} photos segmented -> {args.output}")
    return 1 if failed else 0
