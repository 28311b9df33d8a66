"""Inputs read at full precision and checked for sense: 16-bit PNGs keep all 16 bits (every PNG row filter,
interlaced or not), near-rotations with determinant 1 but skewed axes are refused, and the image metrics
refuse NaN."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest

from pipeline import notices
from pipeline.metrics import psnr, ssim
from pipeline.scenes import blender
from pipeline.scenes.blender import _read_image, load_blender
from pipeline.types import NLSError
from tests.test_blender import _edit, _raises, make_blender

#: Adam7 passes as (first row, first column, row step, column step)
_ADAM7 = ((0, 0, 8, 8), (0, 4, 8, 8), (4, 0, 8, 4), (0, 2, 4, 4), (2, 0, 4, 2), (0, 1, 2, 2), (1, 0, 2, 1))
_COLOUR_TYPE = {1: 0, 2: 4, 3: 2, 4: 6}  # channels -> PNG colour type (grey, grey+alpha, RGB, RGBA)


def _filtered(rows: np.ndarray, bpp: int) -> bytes:
    """PNG scanlines of the (H, row bytes) uint8 ``rows``, row i with filter i % 5 (None, Sub, Up, Average,
    Paeth), so a decoder must undo each."""
    out, prev = [], np.zeros(rows.shape[1], np.int32)
    for i, row in enumerate(rows.astype(np.int32)):
        a = np.concatenate([np.zeros(bpp, np.int32), row[:-bpp]])
        c = np.concatenate([np.zeros(bpp, np.int32), prev[:-bpp]])
        p = a + prev - c
        pa, pb, pc = np.abs(p - a), np.abs(p - prev), np.abs(p - c)
        paeth = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, prev, c))
        pred = (0, a, prev, (a + prev) // 2, paeth)[i % 5]
        out.append(bytes([i % 5]) + ((row - pred) % 256).astype(np.uint8).tobytes())
        prev = row
    return b"".join(out)


def write_png16(path, arr: np.ndarray, *, interlace: bool = False, key=None) -> None:
    """Write (H, W, C) uint16 ``arr`` (C 1..4) as a 16-bit PNG with every row filter, Adam7-interlaced or not,
    with transparency colour ``key`` (tRNS) if given; Pillow and imageio cannot write 16-bit colour PNGs."""
    h, w, c = arr.shape
    passes = _ADAM7 if interlace else ((0, 0, 1, 1),)
    data = b""
    for y0, x0, dy, dx in passes:
        sub = arr[y0::dy, x0::dx]
        if sub.size:
            data += _filtered(sub.astype(">u2").view(np.uint8).reshape(sub.shape[0], -1), 2 * c)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    trns = chunk(b"tRNS", np.asarray(key, ">u2").tobytes()) if key is not None else b""
    path.write_bytes(b"\x89PNG\r\n\x1a\n"
                     + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, _COLOUR_TYPE[c], 0, 0, int(interlace)))
                     + trns + chunk(b"IDAT", zlib.compress(data)) + chunk(b"IEND", b""))


def _wide(shape, seed=0) -> np.ndarray:
    """Random uint16 samples whose low bytes matter (and whose high bytes alone would not give them)."""
    arr = np.random.default_rng(seed).integers(0, 65535, shape, endpoint=True).astype(np.uint16)
    arr.flat[:2] = (0x1200, 0x12FF)  # one high byte, two low bytes
    return arr


# --------------------------------------------------------------------------- 16-bit PNGs


@pytest.mark.parametrize("interlace", [False, True])
@pytest.mark.parametrize("channels", [2, 3, 4])
def test_16_bit_png_keeps_all_16_bits(tmp_path, capsys, channels, interlace):
    notices.reset()
    arr = _wide((11, 13, channels))
    write_png16(tmp_path / "x.png", arr, interlace=interlace)
    got = _read_image(tmp_path / "x.png")
    want = arr.astype(np.float64) / 65535
    if channels == 2:  # grey + alpha -> RGBA
        want = np.concatenate([np.repeat(want[..., :1], 3, axis=-1), want[..., 1:]], axis=-1)
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-7)  # float32 round-off only
    assert "16-bit" not in capsys.readouterr().err


def test_16_bit_blender_scene_loads_at_16_bits(tmp_path):
    """RGB and RGBA frames (composited onto white) of a NeRF-synthetic folder keep their low bytes."""
    root = make_blender(tmp_path / "s", n=2, size=8, splits=("train",))
    arrs = [_wide((8, 8, 3), seed=1), _wide((8, 8, 4), seed=2)]
    for i, arr in enumerate(arrs):
        write_png16(root / "train" / f"r_{i}.png", arr)
    tr = load_blender(root, splits=("train",)).splits["train"]
    rgb = arrs[0] / 65535
    np.testing.assert_allclose(tr.images[0].numpy(), rgb, rtol=0, atol=1e-7)
    rgba = arrs[1] / 65535
    alpha = rgba[..., 3:]
    np.testing.assert_allclose(tr.alphas[1].numpy(), alpha, rtol=0, atol=1e-7)
    np.testing.assert_allclose(tr.images[1].numpy(), rgba[..., :3] * alpha + (1 - alpha), rtol=0, atol=3e-7)


@pytest.mark.parametrize("channels, key", [(1, [500]), (3, [1000, 2000, 3000])])
def test_16_bit_png_transparency_colour_becomes_alpha(tmp_path, channels, key):
    arr = np.array([[key, key], [key, key]], np.uint16).reshape(2, 2, channels)
    arr[1, 1, -1] += 1  # differs from the key in the low byte only
    write_png16(tmp_path / "x.png", arr, key=key)
    got = _read_image(tmp_path / "x.png")
    assert got.shape == (2, 2, 4)
    assert got[..., 3].tolist() == [[0, 0], [0, 1]]
    np.testing.assert_allclose(got[..., :3], np.repeat(arr, 4 - channels, axis=-1) / 65535, rtol=0, atol=1e-7)


def test_16_bit_png_falls_back_to_8_bits_with_a_warning(tmp_path, capsys, monkeypatch):
    """A Pillow that cannot decode the low bytes: the high bytes, as Pillow reads them, and a warning."""
    def fail(path, rawmode):
        raise ValueError("unknown raw mode")

    notices.reset()
    monkeypatch.setattr(blender, "_decode_as", fail)
    arr = _wide((4, 5, 3))
    write_png16(tmp_path / "x.png", arr)
    np.testing.assert_allclose(_read_image(tmp_path / "x.png"), (arr >> 8) / 255.0, rtol=0, atol=1e-7)
    assert f"{tmp_path}: 16-bit colour PNGs are read at 8 bits per channel" in capsys.readouterr().err


# --------------------------------------------------------------------------- camera poses


def _set_rotation(root, frame: int, r33) -> None:
    m = np.eye(4)
    m[:3, :3] = r33
    m[2, 3] = 4.0
    _edit(root, "train", lambda d: d["frames"][frame].update(transform_matrix=m.tolist()))


def test_slightly_sheared_pose_with_determinant_one_is_refused(tmp_path):
    """A shear of 1e-3 (det exactly 1) moves a pixel at 1000 px focal by one pixel."""
    root = make_blender(tmp_path / "s", splits=("train",))
    _set_rotation(root, 1, [[1, 1e-3, 0], [0, 1, 0], [0, 0, 1]])
    _raises(root, "transforms_train.json: frames[1]", "'./train/r_1'", "not orthonormal",
            "max |R^T R - I| = 0.001, allowed 0.0001", splits=("train",))


def test_float32_rounded_rotation_loads(tmp_path):
    """A rotation stored at float32 precision (as Blender exports) is a rotation."""
    q, _ = np.linalg.qr(np.random.default_rng(3).normal(size=(3, 3)))
    q *= np.sign(np.linalg.det(q))
    root = make_blender(tmp_path / "s", splits=("train",))
    _set_rotation(root, 0, q.astype(np.float32).astype(np.float64))
    assert len(load_blender(root, splits=("train",)).splits["train"]) == 2


# --------------------------------------------------------------------------- image metrics


@pytest.mark.parametrize("metric", [psnr, ssim])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_image_metrics_refuse_non_finite_values(metric, bad):
    x = np.random.default_rng(0).random((16, 16, 3))
    y = x.copy()
    y[3, 4, 1] = bad
    with pytest.raises(NLSError, match=rf"^{metric.__name__}: pred has 1 NaN or inf value\(s\); images must be "
                                       r"finite and in \[0, 1\]$"):
        metric(y, x)
