"""Videos and frame annotations for media/: MP4 (H.264) where imageio-ffmpeg's encoder is installed, GIF otherwise.

Frames are (H, W, 3) uint8 RGB. H.264 in the yuv420p pixel format that every browser and W&B play needs even
sides, so an odd frame is padded with one black row or column (never resized: a pixel of the game stays a pixel).
A video is written beside its target under a temporary name and renamed into place when complete, so a killed
run leaves no torn file under the final name (shared.atomic sweeps the temporary).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np

from shared.atomic import temporary_name


@functools.lru_cache(maxsize=1)
def video_format() -> str:
    """'mp4' when the ffmpeg binary of imageio-ffmpeg (a PyPI wheel) is present, else 'gif'."""
    try:
        import imageio_ffmpeg

        imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError):
        return "gif"
    return "mp4"


class VideoWriter:
    """Append frames one at a time; `close()` returns the path written, `<path>.mp4` or `<path>.gif`.

    MP4 frames stream to the encoder, so memory stays flat however long the episode; the GIF fallback holds
    every frame (palette-quantised, a third of the RGB size) until `close()`, as Pillow writes a GIF whole, and
    a GIF stores a frame identical to the one before it as a longer duration of that one (the play time is kept,
    the frame count read back is smaller). All frames must have the size of the first.
    """

    def __init__(self, path: Path | str, fps: float, fmt: Optional[str] = None) -> None:
        self.format = fmt or video_format()
        self.path = Path(path).with_suffix(f".{self.format}")
        self.fps = float(fps)
        self.frames = 0
        self._size: Optional[tuple[int, int]] = None  # (H, W) of the first frame
        self._encoder = None  # the imageio_ffmpeg.write_frames generator (MP4)
        self._images: list = []  # PIL palette images (GIF)

    def append(self, frame: np.ndarray) -> None:
        """Add one (H, W, 3) uint8 frame."""
        frame = np.asarray(frame)
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"a video frame is (H, W, 3) uint8, got {frame.shape} {frame.dtype}")
        if self._size is None:
            self._size = frame.shape[:2]
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.format == "mp4":
                self._encoder = self._start_encoder()
        elif frame.shape[:2] != self._size:
            raise ValueError(f"frame {self.frames} is {frame.shape[:2]}, the first was {self._size}")
        if self.format == "mp4":
            self._encoder.send(np.ascontiguousarray(_pad_to_even(frame)))
        else:
            from PIL import Image

            self._images.append(Image.fromarray(frame).quantize(colors=256))
        self.frames += 1

    def close(self) -> Path:
        """Finish the file and rename it into place; returns its path. A video needs at least one frame."""
        if self.frames == 0:
            raise ValueError(f"no frames to write to {self.path}")
        tmp = temporary_name(self.path)
        try:
            if self._encoder is not None:
                self._encoder.close()
                self._encoder = None
            else:
                duration_ms = round(1000 / self.fps)
                first, *rest = self._images
                first.save(tmp, format="GIF", save_all=True, append_images=rest, duration=duration_ms, loop=0)
                self._images = []
            os.replace(tmp, self.path)
        finally:
            tmp.unlink(missing_ok=True)
        return self.path

    def abandon(self) -> None:
        """Stop without writing anything (the temporary is removed)."""
        if self._encoder is not None:
            self._encoder.close()
            self._encoder = None
        self._images = []
        temporary_name(self.path).unlink(missing_ok=True)

    def _start_encoder(self):
        import imageio_ffmpeg

        height, width = (side + side % 2 for side in self._size)
        encoder = imageio_ffmpeg.write_frames(
            str(temporary_name(self.path)),
            (width, height),
            fps=self.fps,
            codec="libx264",
            pix_fmt_out="yuv420p",
            quality=8,  # imageio's 0-10 scale: x264 CRF 10, near lossless; the default (5) shifts colours by ~6/255
            macro_block_size=1,  # the sides are made even above; imageio's default (16) would rescale
            output_params=["-f", "mp4", "-movflags", "+faststart"],  # the temporary name has no .mp4 suffix
            ffmpeg_log_level="error",
        )
        encoder.send(None)  # starts ffmpeg
        return encoder


def write_video(frames: Sequence[np.ndarray] | Iterable[np.ndarray], path: Path | str, fps: float) -> Path:
    """Write (H, W, 3) uint8 frames as `path` with the suffix `.mp4` (H.264) or `.gif` (see `video_format`),
    at `fps` frames per second; returns the path written. Any suffix given is replaced."""
    writer = VideoWriter(path, fps)
    try:
        for frame in frames:
            writer.append(frame)
        return writer.close()
    except BaseException:
        writer.abandon()
        raise


def read_video(path: Path | str) -> np.ndarray:
    """The frames of an MP4 or GIF as (T, H, W, 3) uint8: the way tests and the report read a video back."""
    path = Path(path)
    if path.suffix == ".mp4":
        import imageio_ffmpeg

        reader = imageio_ffmpeg.read_frames(str(path))
        meta = next(reader)
        width, height = meta["size"]
        return np.stack([np.frombuffer(f, np.uint8).reshape(height, width, 3) for f in reader])
    import imageio.v3 as iio

    frames = iio.imread(path, index=None)  # (T, H, W, C)
    return np.ascontiguousarray(frames[..., :3])


def draw_text(
    frame: np.ndarray,
    text: str,
    xy: tuple[int, int],
    color: tuple[int, int, int] = (255, 255, 255),
    background: Optional[tuple[int, int, int]] = (0, 0, 0),
) -> np.ndarray:
    """A copy of the (H, W, 3) uint8 `frame` with `text` in Pillow's bitmap font (6 x 11 pixels a character),
    its top-left corner at `xy` = (x, y) pixels, on a filled `background` box (None: no box) so it reads over
    any picture."""
    from PIL import Image, ImageDraw

    image = Image.fromarray(frame)
    draw = ImageDraw.Draw(image)
    font = _bitmap_font()
    if background is not None:
        left, top, right, bottom = draw.textbbox(xy, text, font=font)
        draw.rectangle((left - 1, top - 1, right, bottom), fill=background)
    draw.text(xy, text, fill=color, font=font)
    return np.asarray(image).copy()


def draw_box(
    frame: np.ndarray, box: tuple[float, float, float, float], color: tuple[int, int, int], width: int = 1
) -> np.ndarray:
    """A copy of the (H, W, 3) uint8 `frame` with the outline of `box` = (left, top, right, bottom) in pixels,
    both edges inclusive, drawn `width` pixels thick inward; parts outside the frame are clipped."""
    from PIL import Image, ImageDraw

    image = Image.fromarray(frame)
    ImageDraw.Draw(image).rectangle(tuple(round(v) for v in box), outline=color, width=width)
    return np.asarray(image).copy()


@functools.lru_cache(maxsize=1)
def _bitmap_font():
    from PIL import ImageFont

    return ImageFont.load_default_imagefont()


def _pad_to_even(frame: np.ndarray) -> np.ndarray:
    height, width = frame.shape[:2]
    if height % 2 == 0 and width % 2 == 0:
        return frame
    return np.pad(frame, ((0, height % 2), (0, width % 2), (0, 0)))
