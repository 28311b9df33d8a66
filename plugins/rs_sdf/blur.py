"""Differentiable separable 3-D Gaussian blur of a voxel grid: the smoothing ``G_sigma * V``.

Randomized smoothing of an occupancy classifier (Cohen et al. 2019, Eq. 1: ``g(x) = P(f(x+eps))``,
``eps ~ N(0, sigma^2 I)``) is the convolution of the classifier with a Gaussian; on a voxel grid
it is a Gaussian blur (Pérez et al., "Certified robustness as a tool for 3D vision", §3, where
the expensive sampling of RS is replaced by Gaussian smoothing of a pre-computed grid).

Five paths with one result (tested against ``scipy.ndimage.gaussian_filter(mode="constant")``):

* ``"kernel"``: a C++ CPU kernel (``csrc/blur_cpu.cpp``, JIT-built once like the hash-grid
  kernel) that fuses the three passes into two sweeps over memory (z and y inside each cached
  x-slice, then x on blocks of columns): 2 reads + 2 writes of the grid instead of 3 + 3, and
  half the multiplies by using the symmetry of the taps. ``"auto"`` picks it for float32 CPU
  grids whenever it builds; ``NLS_BLUR_KERNEL=0`` switches it off.

* ``"matmul"``: per axis, the taps at integer voxel offsets ``-r..r`` (``r = ceil(truncate *
  sigma_vox)``, ``truncate >= 3``) form a banded Toeplitz matrix. The axis is cut into blocks of
  ``B`` outputs; each block is one BLAS ``mm`` of its ``B x (B + 2r)`` band with the input rows it
  needs (zero padding = dropping the band's columns that fall outside the grid, so no padded
  copy is made). Each pass writes its result *transposed* (``(R1 R2, R0)`` layout), so after
  three passes the axes are back in order without any permute copy: 3 reads + 3 writes of the
  grid per blur, which is what bounds it on CPU (memory-bound).
* ``"conv"``: the three passes as ``torch.nn.functional.conv3d`` with ``(2r+1, 1, 1)``-shaped
  kernels (then ``(1, 2r+1, 1)``, ``(1, 1, 2r+1)``), zero padding ``r`` along the pass's axis:
  cuDNN on CUDA, oneDNN on CPU. On CUDA it runs with TF32 off (cuDNN's default for float32
  convolutions is TF32, a 10-bit mantissa that would move the occupancy near 0 and 1, where
  ``Phi^-1`` is steep, by ~1e-3). Measured, it loses on both devices (384^3: 23 ms forward on an
  H200 against the FFT's 3.4 ms; 5.7 s on 2 CPU cores against the kernel's 0.3 s), so ``"auto"``
  never picks it; it stays as the library-only reference path.
* ``"fft"``: zero-padded real FFT (``torch.fft.rfftn``) times the transfer function of the same
  sampled taps (outer product of the three 1-D transforms). Cheaper for large ``sigma_vox``,
  where the band gets wide; ``"auto"`` picks it for ``r > 24`` (except on float32 CPU grids, where
  the C++ kernel, when it builds, is taken at every radius), and on CUDA when triton is not
  importable: on an H200 at 384^3, sigma 2 voxels, it took 3.3-3.4 ms forward and 6.7-7.0 ms
  forward + backward against the matmul's 3.5-4.4 / 8.0-8.7 ms and cuDNN conv's 23 / 47 ms (two
  sessions; docs/rs_sdf_results.md, CUDA figures).
* ``"triton"``: one Triton kernel per axis (:mod:`plugins.rs_sdf.blur_triton`), each one read and
  one write of the grid: the 6 transfers of the bandwidth bound. CUDA float32 grids only;
  ``"auto"`` takes it there for ``r <= 24`` whenever triton imports. On the H200 at 384^3, sigma 2
  voxels: 1.49 ms forward and 2.99 ms forward + backward, against the FFT's 3.45 / 7.08 ms in the
  same run, and 4.5x the 0.33 ms bound (the FFT: 10x). Training with ``method: triton`` where
  it cannot run is refused up front (the certifier); any other blur there warns and takes the
  FFT, as ``"auto"`` does for good if the kernels fail to compile.

The taps are the sampled Gaussian normalised to sum 1 (as scipy does), so a constant grid stays
constant away from the boundary. Outside the grid the occupancy is taken as 0 (zero padding):
the scene box is assumed to contain the object.

The blur is linear and its matrix is symmetric (symmetric taps, zero padding), so the backward
pass of :class:`GaussianBlur3d` is the same blur applied to the incoming gradient.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from pipeline.cpp_kernels import CppKernel

__all__ = ["gaussian_taps", "gaussian_blur3d", "blur_radius", "auto_method", "FFT_RADIUS", "KERNEL", "METHODS"]

METHODS = ("auto", "kernel", "matmul", "conv", "fft", "triton")
#: the C++ CPU kernel (built on first use; ``KERNEL.status()`` tells whether it loaded)
KERNEL = CppKernel("nls_blur", Path(__file__).resolve().parent / "csrc" / "blur_cpu.cpp", probe="blur3d",
                   env="NLS_BLUR_KERNEL", cflags=("-march=native",), title="rs_sdf's CPU blur kernel")

#: "auto" switches from the banded matmul (CPU without the C++ kernel, or float64) or the Triton kernels (CUDA)
#: to the FFT above this tap radius (voxels); the C++ kernel is taken at every radius
FFT_RADIUS = 24
_BLOCK = 16
#: why the Triton blur failed in this process, if it did ("auto" then takes the FFT)
_TRITON_FAILED: list[str] = []


def blur_radius(sigma_vox: float, truncate: float = 4.0) -> int:
    """Tap radius ``ceil(truncate * sigma_vox)`` (at least 1)."""
    return max(1, int(math.ceil(truncate * float(sigma_vox))))


def gaussian_taps(sigma_vox: float, truncate: float = 4.0, dtype=torch.float32) -> Tensor:
    """Normalised sampled Gaussian at offsets ``-r..r``: ``(2r+1,)``."""
    if not sigma_vox > 0:
        raise ValueError(f"sigma in voxels must be > 0, got {sigma_vox}")
    r = blur_radius(sigma_vox, truncate)
    x = torch.arange(-r, r + 1, dtype=torch.float64)
    w = torch.exp(-0.5 * (x / float(sigma_vox)) ** 2)
    return (w / w.sum()).to(dtype)


def _band(w: Tensor, block: int) -> Tensor:
    """``(block, block + 2r)`` band: row i holds the taps at columns i..i+2r."""
    r = (len(w) - 1) // 2
    T = w.new_zeros(block, block + 2 * r)
    for i in range(block):
        T[i, i:i + 2 * r + 1] = w
    return T


def _pass_rotate(x: Tensor, w: Tensor) -> Tensor:
    """Blur along axis 0 of ``x (R0, *rest)`` and return it with axis 0 moved last ``(*rest, R0)``."""
    R0 = x.shape[0]
    X = x.reshape(R0, -1)
    out = torch.empty(X.shape[1], R0, dtype=x.dtype, device=x.device)
    r = (len(w) - 1) // 2
    B = _BLOCK
    T = _band(w, B)
    for j0 in range(0, R0, B):
        b = min(B, R0 - j0)
        lo = j0 - r
        clo, chi = max(lo, 0), min(j0 + b + r, R0)
        Tj = T[:b, clo - lo: chi - lo]
        # (rest, K) @ (K, b) written straight into the transposed output columns
        torch.mm(X[clo:chi].t(), Tj.t(), out=out[:, j0:j0 + b])
    return out.view(*x.shape[1:], R0)


def _blur_matmul(v: Tensor, taps: Sequence[Tensor]) -> Tensor:
    x = v
    for w in taps:  # axis 0, then 1, then 2 (each pass rotates the axes by one)
        x = _pass_rotate(x, w)
    return x


class _IeeeConv:
    """Context: cuDNN float32 convolutions in full precision (no TF32), restored on exit."""

    def __enter__(self):
        conv = getattr(torch.backends.cudnn, "conv", None)
        self._new = conv is not None and hasattr(conv, "fp32_precision")  # torch >= 2.9
        if self._new:
            self._old = conv.fp32_precision
            conv.fp32_precision = "ieee"
        else:
            self._old = torch.backends.cudnn.allow_tf32
            torch.backends.cudnn.allow_tf32 = False

    def __exit__(self, *exc):
        if self._new:
            torch.backends.cudnn.conv.fp32_precision = self._old
        else:
            torch.backends.cudnn.allow_tf32 = self._old


def _blur_conv(v: Tensor, taps: Sequence[Tensor]) -> Tensor:
    x = v[None, None]  # (1, 1, R0, R1, R2)
    with _IeeeConv():
        for ax, w in enumerate(taps):
            shape, pad = [1, 1, 1, 1, 1], [0, 0, 0]
            shape[2 + ax], pad[ax] = len(w), (len(w) - 1) // 2
            # conv3d is a correlation: the same as the convolution for symmetric taps
            x = torch.nn.functional.conv3d(x, w.view(shape), padding=tuple(pad))
    return x[0, 0]


def _blur_fft(v: Tensor, taps: Sequence[Tensor]) -> Tensor:
    shape = v.shape
    rs = [(len(w) - 1) // 2 for w in taps]
    n = [s + 2 * r for s, r in zip(shape, rs)]  # linear (not circular) convolution
    spec = torch.fft.rfftn(v, s=n)
    for ax, (w, r) in enumerate(zip(taps, rs)):
        # kernel centred at index 0 (wrapped), so the output needs no shift
        k = torch.zeros(n[ax], dtype=v.dtype, device=v.device)
        k[: r + 1] = w[r:]
        k[n[ax] - r:] = w[:r]
        kf = torch.fft.rfft(k) if ax == 2 else torch.fft.fft(k)
        view = [1, 1, 1]
        view[ax] = -1
        spec = spec * kf.view(view)
    out = torch.fft.irfftn(spec, s=n)
    return out[: shape[0], : shape[1], : shape[2]].contiguous()


def triton_kernels():
    """:mod:`plugins.rs_sdf.blur_triton`, imported on first use (importing triton takes a second):
    ``triton_kernels().available(device) -> (ok, why not)``."""
    from plugins.rs_sdf import blur_triton

    return blur_triton


def auto_method(device: torch.device, dtype: torch.dtype, radius: int) -> str:
    """The path ``method="auto"`` takes for a grid on ``device`` of ``dtype`` with taps of ``radius``."""
    if device.type == "cpu" and dtype == torch.float32 and KERNEL.load():
        return "kernel"
    if (device.type == "cuda" and dtype == torch.float32 and radius <= FFT_RADIUS and not _TRITON_FAILED
            and triton_kernels().available(device)[0]):
        return "triton"
    return "fft" if radius > FFT_RADIUS or device.type == "cuda" else "matmul"


def _blur(v: Tensor, sigmas_vox: Sequence[float], truncate: float, method: str) -> Tensor:
    taps = [gaussian_taps(s, truncate, v.dtype).to(v.device) for s in sigmas_vox]
    cpu32 = v.device.type == "cpu" and v.dtype == torch.float32
    chosen = method == "auto"
    if chosen:
        method = auto_method(v.device, v.dtype, max((len(w) - 1) // 2 for w in taps))
    if method == "triton":
        ok, why = triton_kernels().available(v.device)
        if ok:
            try:
                return triton_kernels().blur3d(v, taps)
            except Exception as e:  # noqa: BLE001 (a triton that imports may still fail to compile)
                if not chosen:
                    raise
                _TRITON_FAILED.append(f"{type(e).__name__}: {e}")
                why = f"the Triton blur failed ({_TRITON_FAILED[0]}); blur method auto takes the FFT from now on"
        else:  # e.g. a run trained with method: triton on CUDA, rendered on CPU (training refuses it up front)
            why = f"blur method 'triton' cannot run here ({why}); using the FFT, which computes the same blur"
        warnings.warn(why, RuntimeWarning, stacklevel=2)
        method = "fft"
    if method == "kernel":
        if not (cpu32 and KERNEL.load()):
            raise ValueError(f"blur method 'kernel' needs a float32 CPU grid and a built kernel "
                             f"(grid: {v.dtype} on {v.device}; kernel: {KERNEL.status()['error']})")
        return KERNEL.ops.blur3d(v.contiguous(), *taps)
    if method == "fft":
        return _blur_fft(v, taps)
    if method == "conv":
        return _blur_conv(v.contiguous(), taps)
    return _blur_matmul(v.contiguous(), taps)


class GaussianBlur3d(torch.autograd.Function):
    """Autograd op: forward ``G * V``; backward ``G * grad`` (the blur is self-adjoint)."""

    @staticmethod
    def forward(ctx, v: Tensor, sigmas_vox: tuple, truncate: float, method: str) -> Tensor:  # noqa: D401
        ctx.args = (sigmas_vox, truncate, method)
        return _blur(v, sigmas_vox, truncate, method)

    @staticmethod
    def backward(ctx, g: Tensor):
        return _blur(g.contiguous(), *ctx.args), None, None, None


def gaussian_blur3d(v: Tensor, sigma_vox, *, truncate: float = 4.0, method: str = "auto") -> Tensor:
    """Blur ``v (R0, R1, R2)`` with a Gaussian of std ``sigma_vox`` voxels (a float or one per axis).

    ``truncate``: tap radius in standard deviations (>= 3; 4 as scipy). ``method``: ``"auto"``,
    ``"kernel"``, ``"matmul"``, ``"conv"``, ``"fft"`` or ``"triton"``. Differentiable; the output has the shape and dtype of ``v``.
    """
    if v.dim() != 3:
        raise ValueError(f"gaussian_blur3d needs a 3-D grid (R0, R1, R2), got shape {tuple(v.shape)}")
    if truncate < 3:
        raise ValueError(f"truncate must be >= 3 standard deviations, got {truncate}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    s = tuple(float(sigma_vox) for _ in range(3)) if not isinstance(sigma_vox, (tuple, list)) else \
        tuple(float(t) for t in sigma_vox)
    if len(s) != 3 or not all(t > 0 for t in s):
        raise ValueError(f"sigma_vox must be > 0 (one value or three), got {sigma_vox!r}")
    return GaussianBlur3d.apply(v, s, float(truncate), method)
