"""Turntable video files: mp4 with imageio-ffmpeg (odd frame sizes included), else or on failure a GIF."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest

from pipeline.video import write_video


def _frames(h: int, w: int, n: int = 6) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for _ in range(n)]


@pytest.mark.parametrize("size", [(32, 48), (33, 47)])
def test_mp4_of_even_and_odd_frames_is_not_empty(tmp_path, size):
    pytest.importorskip("imageio_ffmpeg", reason="imageio-ffmpeg is not installed (the optional video extra)")
    import imageio.v3 as iio

    path = write_video(_frames(*size), tmp_path / "turn")
    assert path.suffix == ".mp4" and path.stat().st_size > 0
    assert iio.imread(path, index=0).shape[:2] == (size[0] + size[0] % 2, size[1] + size[1] % 2)


def test_a_gif_write_stopped_midway_keeps_the_previous_video(tmp_path, monkeypatch):
    """A render killed while its turntable is written used to leave a 0-byte video in place of the old one."""
    import os

    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # no mp4 encoder: the GIF path
    old = write_video(_frames(8, 8), tmp_path / "turn")
    data = old.read_bytes()

    def stopped(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", stopped)
    with pytest.raises(KeyboardInterrupt):
        write_video(_frames(16, 16), tmp_path / "turn")
    assert old.read_bytes() == data and sorted(p.name for p in tmp_path.iterdir()) == ["turn.gif"]


def test_an_encoder_that_writes_nothing_falls_back_to_a_gif(tmp_path, monkeypatch):
    """What ffmpeg did with odd sizes: no exception and an empty file. The GIF still holds every frame."""
    import imageio.v3 as iio

    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", types.ModuleType("imageio_ffmpeg"))
    real = iio.imwrite

    def empty_mp4(path, data, **kwargs):
        if str(path).endswith(".mp4"):
            open(path, "wb").close()
            return None
        return real(path, data, **kwargs)

    monkeypatch.setattr(iio, "imwrite", empty_mp4)
    path = write_video(_frames(33, 47), tmp_path / "turn")
    assert path.suffix == ".gif" and not (tmp_path / "turn.mp4").exists()
    assert iio.imread(path, index=None).shape[0] == 6



def test_the_gif_fallback_says_why_and_that_it_is_slow(tmp_path, monkeypatch, capsys):
    """Without imageio-ffmpeg the turntable became a GIF without a word, and 300 frames of 800x800 then took
    two silent minutes to encode."""
    import imageio.v3 as iio

    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)
    path = write_video(_frames(8, 10), tmp_path / "turn")
    err = capsys.readouterr().err
    assert path.suffix == ".gif" and iio.imread(path, index=None).shape == (6, 8, 10, 3)
    assert "note: imageio-ffmpeg is not installed (`pip install imageio-ffmpeg` writes an mp4); encoding the 6 " \
           "frames as a GIF" in err, err
