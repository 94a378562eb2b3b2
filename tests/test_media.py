"""shared.media: videos read back with the frames, size and order written; text and boxes drawn where asked."""

from __future__ import annotations

import numpy as np
import pytest

from shared.media import VideoWriter, draw_box, draw_text, read_video, video_format, write_video


def _frames(count: int, height: int, width: int) -> list[np.ndarray]:
    """Distinct flat frames: frame i is grey level 20 i, so order survives lossy coding."""
    return [np.full((height, width, 3), 20 * i, np.uint8) for i in range(count)]


def test_gif_keeps_frame_count_size_and_pixels_for_odd_sides(tmp_path):
    path = VideoWriter(tmp_path / "clip.mp4", fps=10, fmt="gif")
    for frame in _frames(7, 11, 13):
        path.append(frame)
    written = path.close()
    assert written == tmp_path / "clip.gif"
    video = read_video(written)
    assert video.shape == (7, 11, 13, 3)
    assert video[:, 5, 6, 0].tolist() == [0, 20, 40, 60, 80, 100, 120]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.gif"]  # no temporary left


@pytest.mark.skipif(video_format() != "mp4", reason="imageio-ffmpeg's encoder is not installed")
def test_mp4_pads_odd_sides_to_even_and_keeps_every_frame(tmp_path):
    written = write_video(_frames(7, 11, 13), tmp_path / "clip", fps=15)
    assert written == tmp_path / "clip.mp4"
    video = read_video(written)
    assert video.shape == (7, 12, 14, 3)  # one black row and column added, nothing rescaled
    assert np.abs(video[:, 5, 6, 0].astype(int) - np.arange(0, 140, 20)).max() <= 3  # H.264 is lossy


def test_write_video_native_atari_size_in_the_available_format(tmp_path):
    written = write_video(_frames(5, 210, 160), tmp_path / "episode.gif", fps=15)
    assert written.suffix == f".{video_format()}"
    assert read_video(written).shape == (5, 210, 160, 3)


def test_a_frame_of_another_size_or_no_frame_is_refused(tmp_path):
    writer = VideoWriter(tmp_path / "clip", fps=10, fmt="gif")
    writer.append(np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match=r"\(4, 5\)"):
        writer.append(np.zeros((4, 5, 3), np.uint8))
    with pytest.raises(ValueError, match="no frames"):
        write_video([], tmp_path / "empty", fps=10)
    assert not (tmp_path / "empty.gif").exists() and not (tmp_path / "empty.mp4").exists()


def test_draw_text_marks_only_around_its_corner_and_leaves_the_input():
    frame = np.full((60, 80, 3), 90, np.uint8)
    out = draw_text(frame, "42", (10, 20))
    changed = np.argwhere((out != frame).any(2))
    assert changed.min(0).tolist() >= [19, 9] and changed.max(0).tolist() <= [20 + 11, 10 + 2 * 6]
    assert (out == 255).all(2).sum() > 10  # white strokes of the digits
    assert (frame == 90).all()


def test_draw_box_outlines_inclusive_edges():
    out = draw_box(np.zeros((10, 10, 3), np.uint8), (2, 3, 6, 8), (255, 0, 0))
    red = (out == [255, 0, 0]).all(2)
    expected = np.zeros((10, 10), bool)
    expected[3, 2:7] = expected[8, 2:7] = expected[3:9, 2] = expected[3:9, 6] = True
    assert (red == expected).all()
