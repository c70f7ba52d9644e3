"""Segment a video frame by frame and write it back with the activated muscles overlaid.

Reading and writing go through ``imageio`` with its ffmpeg plugin (the ``imageio-ffmpeg``
package ships its own ffmpeg binary, so no system ffmpeg is needed). The output is H.264 in
an MP4 (yuv420p, plays in browsers) at the input's frame rate; ``frames.csv`` lists, for every
frame, its time and the share of the frame each muscle covers.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from muscle_pipeline.errors import CorruptFileError, InputError
from muscle_pipeline.photo import CLASS_NAMES
from muscle_pipeline.photo.infer import ACTIVATION_MIN_FRACTION, PhotoSegmenter, class_fractions, overlay

VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")


def is_video(path: str | Path) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def _even(frame: np.ndarray) -> np.ndarray:
    # H.264 in yuv420p needs even width and height: drop a last odd row/column instead of rescaling.
    h, w = frame.shape[:2]
    return frame[: h - h % 2, : w - w % 2]


def segment_video(source: str | Path, output_dir: str | Path, segmenter: PhotoSegmenter | None = None,
                  model_path: str | Path | None = None, device: str = "cpu", every_nth: int = 1,
                  max_frames: int | None = None, output_name: str | None = None) -> dict:
    """Segment ``source`` frame by frame; write ``NAME_overlay.mp4`` and ``NAME_frames.csv``.

    ``every_nth`` > 1 segments every n-th frame and reuses its mask for the frames in between
    (faster on a CPU); ``max_frames`` stops early. Returns a summary dict (frames, fps, paths,
    per-muscle share of frames in which it is activated).
    """
    import imageio.v2 as imageio

    source = Path(source)
    if not source.is_file():
        raise InputError(source, "does not exist")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    segmenter = segmenter or PhotoSegmenter(model_path, device)
    name = output_name or source.stem
    video_path = output_dir / f"{name}_overlay.mp4"
    csv_path = output_dir / f"{name}_frames.csv"
    try:
        reader = imageio.get_reader(source, format="FFMPEG")
        fps = float(reader.get_meta_data().get("fps") or 25.0)
    except Exception as exc:
        raise CorruptFileError(source, f"cannot be read as a video ({type(exc).__name__}: {exc})") from exc
    tmp_path = video_path.with_name(video_path.stem + ".part.mp4")
    writer = imageio.get_writer(tmp_path, format="FFMPEG", fps=fps, codec="libx264", quality=7,
                                macro_block_size=1, ffmpeg_log_level="error")
    rows, mask, n = [], None, 0
    active_frames = {m: 0 for m in CLASS_NAMES[1:]}
    try:
        for index, frame in enumerate(reader):
            if max_frames is not None and index >= max_frames:
                break
            frame = _even(np.asarray(frame)[..., :3])
            if mask is None or index % max(1, int(every_nth)) == 0 or mask.shape != frame.shape[:2]:
                mask = segmenter.predict(frame)
            fractions = class_fractions(mask)
            for muscle, share in fractions.items():
                active_frames[muscle] += share >= ACTIVATION_MIN_FRACTION
            rows.append({"frame": index, "time_s": round(index / fps, 4),
                         **{f"{k}_fraction": round(v, 6) for k, v in fractions.items()}})
            writer.append_data(overlay(frame, mask))
            n += 1
    except (RuntimeError, OSError) as exc:
        if n == 0:
            raise CorruptFileError(source, f"no frame could be decoded ({exc})") from exc
    finally:
        writer.close()
        reader.close()
    if n == 0:
        tmp_path.unlink(missing_ok=True)
        raise CorruptFileError(source, "the video has no frames")
    tmp_path.replace(video_path)
    with open(csv_path, "w", newline="") as f:
        writer_csv = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer_csv.writeheader()
        writer_csv.writerows(rows)
    return {"video": str(video_path), "frames_csv": str(csv_path), "frames": n, "fps": fps,
            "activated_frame_share": {k: v / n for k, v in active_frames.items()}}


__all__ = ["segment_video", "is_video", "VIDEO_SUFFIXES"]
