"""The separable Gaussian blur as three Triton kernels: one pass per axis, one read and one write of
the grid each (the 6 grid transfers of the bandwidth bound in ``bench.py rs_sdf``).

Each program of a pass computes ``BLOCK`` consecutive outputs of the flattened ``(R0, R1, R2)`` grid:
``out[i] = sum_k w[k] * x[i + (k - r) * stride]`` over the ``2r + 1`` taps, where a tap whose voxel
falls outside the axis reads 0 (zero padding, as every other path of :mod:`plugins.rs_sdf.blur`).
The neighbours a program loads are runs of consecutive addresses, so the loads are coalesced and
the repeated reads of a tap window mostly hit the cache. Sums are in
float32 in tap order, so results agree with the other paths to float32 rounding, not bit for bit.
Measured on an H200 at 384^3, sigma 2 voxels (17 taps): 1.49 ms forward, 2.99 ms forward +
backward; the bound of 6 transfers at the copy bandwidth is 0.33 ms (docs/rs_sdf_results.md, CUDA figures).

Used on CUDA float32 grids when ``triton`` imports. With ``TRITON_INTERPRET=1`` set before the first
import, the same kernels run on CPU tensors through Triton's interpreter (slow; how the test suite
checks them without a GPU: the ``test`` extra installs triton).
"""

from __future__ import annotations

import os
from typing import Sequence

import torch
from torch import Tensor

try:  # optional: CUDA images of PyTorch ship it; the CPU wheel does not
    import triton
    import triton.language as tl
except Exception as e:  # noqa: BLE001 (any import failure means "not available")
    triton = None
    IMPORT_ERROR = f"{type(e).__name__}: {e}"
else:
    IMPORT_ERROR = ""

__all__ = ["available", "blur3d", "IMPORT_ERROR", "BLOCK"]

#: outputs per program (a multiple of 128 for full warps)
BLOCK = 1024


def available(device: torch.device) -> tuple[bool, str]:
    """Whether the kernels can run on ``device``, and why not."""
    if triton is None:
        return False, f"triton is not importable ({IMPORT_ERROR})"
    if device.type == "cuda":
        return True, ""
    if os.environ.get("TRITON_INTERPRET") == "1" and device.type == "cpu":
        return True, ""
    return False, f"triton kernels run on CUDA grids (or on CPU with TRITON_INTERPRET=1), not on {device}"


if triton is not None:

    @triton.jit
    def _blur_axis(x_ptr, w_ptr, out_ptr, n_total, n_axis, stride, R: tl.constexpr, BLOCK: tl.constexpr):
        """One pass: blur along the axis with ``n_axis`` voxels and element stride ``stride``."""
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        inside = offs < n_total
        coord = (offs // stride) % n_axis  # this output's index along the blurred axis
        acc = tl.zeros([BLOCK], dtype=tl.float32)
        for k in tl.static_range(2 * R + 1):
            c = coord + (k - R)
            ok = inside & (c >= 0) & (c < n_axis)
            acc += tl.load(w_ptr + k) * tl.load(x_ptr + offs + (k - R) * stride, mask=ok, other=0.0)
        tl.store(out_ptr + offs, acc, mask=inside)


def blur3d(v: Tensor, taps: Sequence[Tensor]) -> Tensor:
    """``G * v`` for a float32 grid ``v (R0, R1, R2)`` with 1-D taps ``taps[a] (2 r_a + 1,)`` per axis."""
    ok, why = available(v.device)
    if not ok:
        raise ValueError(f"blur method 'triton': {why}")
    if v.dtype != torch.float32:
        raise ValueError(f"blur method 'triton' needs a float32 grid, got {v.dtype}")
    if v.numel() >= 2 ** 31:
        raise ValueError(f"blur method 'triton' indexes with int32: a grid of {v.numel()} voxels is too large")
    x = v.contiguous()
    n = x.numel()
    grid = (triton.cdiv(n, BLOCK),)
    strides = (x.shape[1] * x.shape[2], x.shape[2], 1)
    for ax, w in enumerate(taps):
        out = torch.empty_like(x)
        _blur_axis[grid](x, w.to(device=x.device, dtype=torch.float32).contiguous(), out, n, x.shape[ax],
                         strides[ax], R=(len(w) - 1) // 2, BLOCK=BLOCK)
        x = out
    return x
