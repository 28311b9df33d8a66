"""Multiresolution hash encoding (Müller, Evans, Schied, Keller 2022, "Instant Neural Graphics
Primitives with a Multiresolution Hash Encoding", SIGGRAPH; Sec. 3).

One encoding, three interchangeable implementations ("paths") with one result:

``torch``
    Pure PyTorch, CPU and CUDA, float32 or float64 (in float16 ``x * N_l`` loses its fraction at
    the fine levels, where N_l > 1024, so a ``.half()`` table is wrong there). Supports input gradients and double backward
    (gradient of ``d out / d x`` w.r.t. the table), as eikonal / normal losses need. Indices and
    weights are built per axis as ``(N, L, 2)`` tensors and combined by broadcasting, hashing is
    done in int32, the table gradient is a flat ``scatter_add_``.
``cpu_kernel``
    A C++ kernel (``csrc/hashgrid_cpu.cpp``) JIT-built with ``torch.utils.cpp_extension`` on first
    use (~10 s, cached in ``<repo>/.cache/torch_extensions``), threaded with torch's OpenMP pool.
    float32, first-order gradients w.r.t. the table and ``x``; a gradient that must itself be
    differentiable (``create_graph=True``) is taken through the torch path at the same inputs.
    Measured on 2 shared cores at 2^18 random points, default config: ~4.5 M points/s forward,
    ~1.5 M points/s forward+backward, against ~0.1 M for the torch path; with the input gradient too,
    0.65 M against the torch path's 0.06 M (``scripts/benchmarks/hashgrid.py``). If the build fails,
    one warning is printed and the torch path is used.
``tcnn``
    tiny-cuda-nn's ``HashGrid`` (CUDA only, when ``tinycudann`` is importable). tcnn places its
    grid slightly differently (``scale = N_min b^l - 1``, half-cell offset), so it is *not* the same
    function as the other two paths and owns its own parameters; it is used only when asked for
    with ``backend="tcnn"``.

Path choice (per call, by device and dtype, never by catching errors):
``backend="auto"`` and ``"cpu_kernel"`` use the kernel for float32 CPU tables and floating-point CPU
inputs, else the torch path. Inside :func:`differentiable_input_gradients` (eikonal and normal losses, which
differentiate the input gradient again) inputs that need a gradient take the torch path from the start:
the kernel path would answer them correctly too, but its backward then also derives a differentiable table
gradient that such a call does not use (1.44x the time of an eikonal step at 2^15 points, 2 cores).
``backend="torch"`` always uses the torch path. Environment switch: ``NLS_HASHGRID_KERNEL=0``
disables the kernel.

Semantics (identical for ``torch`` and ``cpu_kernel``):

* levels ``l = 0..L-1`` have resolution ``N_l = floor(N_min * b**l)`` (Eq. 2) with growth factor
  ``b = exp((ln N_max - ln N_min) / (L - 1))`` (Eq. 3); a 1e-6 tolerance absorbs round-off so
  that the last level is exactly ``N_max``;
* ``x`` is clamped to ``[0, 1]^3`` (NaN counts as 0, so no path ever indexes out of range;
  the gradient w.r.t. ``x`` is zero outside the cube); the cell is ``floor(x N_l)`` clamped to ``N_l - 1``;
* a level whose ``(N_l + 1)^3`` vertices fit in ``T = 2**log2_hashmap_size`` rows is indexed
  densely (``i + j (N_l+1) + k (N_l+1)^2``, a one-to-one map); every other level uses the
  spatial hash of Eq. 4, ``h(i,j,k) = (i*1 XOR j*2654435761 XOR k*805459861) mod T`` in
  32-bit unsigned arithmetic;
* the 8 corner features are blended trilinearly and the levels concatenated,
  ``out[:, l*F:(l+1)*F]``;
* all levels live in one flat table ``params`` of shape ``(sum_l min(T, (N_l+1)^3), F)``,
  initialised uniform(-1e-4, 1e-4) (Sec. 4).
"""

from __future__ import annotations

import math
import warnings
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

import torch
from torch import Tensor, nn

from pipeline.cpp_kernels import CppKernel

__all__ = ["HashGridEncoding", "level_resolutions", "cpu_kernel_status", "load_cpu_kernel",
           "differentiable_input_gradients", "PRIMES", "BACKENDS"]

#: Hash primes of Eq. 4 (pi_1 = 1 keeps the two x-neighbours in the same cache line).
PRIMES = (1, 2654435761, 805459861)
BACKENDS = ("auto", "torch", "cpu_kernel", "tcnn")


def _as_int32(v: int) -> int:
    """Two's-complement int32 value with the same low 32 bits as ``v``."""
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v >= (1 << 31) else v


_PRIMES_I32 = tuple(_as_int32(p) for p in PRIMES)


def level_resolutions(n_levels: int, base_resolution: int, max_resolution: int) -> tuple[list[int], float]:
    """Per-level grid resolutions ``N_l`` (Eq. 2) and the growth factor ``b`` (Eq. 3).

    >>> level_resolutions(16, 16, 2048)[0][:6]
    [16, 22, 30, 42, 58, 80]
    """
    if n_levels < 1:
        raise ValueError(f"n_levels must be >= 1, got {n_levels}")
    if base_resolution < 1 or max_resolution < base_resolution:
        raise ValueError(f"need 1 <= base_resolution <= max_resolution, got {base_resolution}, {max_resolution}")
    if n_levels == 1:
        return [int(base_resolution)], 1.0
    b = math.exp((math.log(max_resolution) - math.log(base_resolution)) / (n_levels - 1))
    return [int(math.floor(base_resolution * b ** l + 1e-6)) for l in range(n_levels)], b


# --------------------------------------------------------------------------------------------
# CPU kernel: one-time JIT build, then a plain function call.
# --------------------------------------------------------------------------------------------

_KERNEL = CppKernel("nls_hashgrid", Path(__file__).resolve().parent / "csrc" / "hashgrid_cpu.cpp",
                    probe="backward_input", env="NLS_HASHGRID_KERNEL",
                    title="the hash-grid CPU kernel (used by the hash_grid and dense_grid fields)")


def load_cpu_kernel(verbose: bool = False) -> bool:
    """Build (first call, ~10-30 s) and load the C++ kernel; True when it is usable.

    Never raises: a failure is recorded (see :func:`cpu_kernel_status`) and reported once with a
    one-line warning; callers then use the torch path.
    """
    return _KERNEL.load(verbose)


def cpu_kernel_status() -> dict:
    """``{"tried", "ok", "error", "seconds"}`` of the kernel build/load (``seconds``: load time)."""
    return _KERNEL.status()


_DOUBLE_BACKWARD: ContextVar[bool] = ContextVar("nls_hashgrid_double_backward", default=False)


@contextmanager
def differentiable_input_gradients():
    """Within it, encodings whose inputs need a gradient take the torch path: for code that takes
    ``torch.autograd.grad(..., x, create_graph=True)`` and differentiates that gradient again."""
    token = _DOUBLE_BACKWARD.set(True)
    try:
        yield
    finally:
        _DOUBLE_BACKWARD.reset(token)


class _KernelEncode(torch.autograd.Function):
    """CPU kernel forward; first-order backward by the kernel, w.r.t. the table and ``x``.

    When the gradient must itself be differentiable (``create_graph=True``, as eikonal and normal
    losses ask), the backward differentiates the torch path at the same inputs instead, so every
    order of derivative is the torch path's (the kernel's forward matches it to float round-off).
    """

    @staticmethod
    def forward(ctx, x: Tensor, table: Tensor, enc: "HashGridEncoding") -> Tensor:
        ctx.save_for_backward(x, table)
        ctx.enc = enc
        return torch.ops.nls_hashgrid.forward(x, table, enc._levels_i64, enc.log2_hashmap_size)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x, table = ctx.saved_tensors
        enc: HashGridEncoding = ctx.enc
        need_x, need_table = ctx.needs_input_grad[:2]
        if torch.is_grad_enabled():
            return (*_torch_path_vjp(x, table, enc, grad_out, need_x, need_table), None)
        grad_out = grad_out.contiguous()
        levels, log2_t = enc._levels_i64, enc.log2_hashmap_size
        g_x = torch.ops.nls_hashgrid.backward_input(x, grad_out, table.detach(), levels, log2_t) if need_x else None
        g_table = (torch.ops.nls_hashgrid.backward(x, grad_out, levels, log2_t, *table.shape)
                   if need_table else None)
        return g_x, g_table, None


def _torch_path_vjp(x: Tensor, table: Tensor, enc: "HashGridEncoding", grad_out: Tensor,
                    need_x: bool, need_table: bool) -> tuple[Tensor | None, Tensor | None]:
    """Gradients of ``<grad_out, encode(x, table)>`` through the torch path, themselves differentiable."""
    wrt = [t for t, need in ((x, need_x), (table, need_table)) if need]
    with torch.enable_grad():
        out = _encode_torch(x, table, enc, enc._levels_on(x.device, x.dtype))
        grads = list(torch.autograd.grad(out, wrt, grad_out, create_graph=True))
    return (grads.pop(0) if need_x else None), (grads.pop(0) if need_table else None)


# --------------------------------------------------------------------------------------------
# Torch path: gather / scatter pair, each the other's backward (so any order of derivative works).
# --------------------------------------------------------------------------------------------


def _scatter_rows(src: Tensor, idx: Tensor, n_rows: int) -> Tensor:
    """``out[r] = sum_{m: idx[m] == r} src[m]``; src (N, M, F), idx (N, M) int -> (n_rows, F).

    A flat 1-D ``scatter_add_`` (3-4x faster than ``embedding_dense_backward`` on CPU). For F = 2
    on CPU the rows are viewed as complex numbers, so one index serves both features (~1.4x).
    """
    f = src.shape[-1]
    flat = idx.reshape(-1).to(torch.int64)
    if f == 2 and src.dtype in (torch.float32, torch.float64) and src.device.type == "cpu":
        src_c = torch.view_as_complex(src.reshape(-1, 2).contiguous())
        out = torch.zeros(n_rows, dtype=src_c.dtype, device=src.device)
        out.scatter_add_(0, flat, src_c)
        return torch.view_as_real(out)
    if f > 1:
        flat = (flat.unsqueeze(1) * f + torch.arange(f, device=idx.device)).reshape(-1)
    out = torch.zeros(n_rows * f, dtype=src.dtype, device=src.device)
    out.scatter_add_(0, flat, src.reshape(-1))
    return out.view(n_rows, f)


class _Gather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, table: Tensor, idx: Tensor) -> Tensor:  # (R, F), (N, M) int32 -> (N, M, F)
        ctx.save_for_backward(idx)
        ctx.n_rows = table.shape[0]
        return torch.nn.functional.embedding(idx, table)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (idx,) = ctx.saved_tensors
        return _Scatter.apply(grad, idx, ctx.n_rows), None


class _Scatter(torch.autograd.Function):
    @staticmethod
    def forward(ctx, src: Tensor, idx: Tensor, n_rows: int) -> Tensor:
        ctx.save_for_backward(idx)
        return _scatter_rows(src, idx, n_rows)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (idx,) = ctx.saved_tensors
        return _Gather.apply(grad, idx), None, None


class _LevelTensors:
    """Per-level constants on one device/dtype, laid out for broadcasting against (N, L, 3, 2)."""

    def __init__(self, enc: "HashGridEncoding", device: torch.device, dtype: torch.dtype):
        res = torch.tensor(enc.resolutions, dtype=torch.float64)
        self.res = res.to(device=device, dtype=dtype).view(-1, 1)  # (L, 1)
        self.res_max = (res - 1).to(device=device, dtype=dtype).view(-1, 1)  # (L, 1)
        nd = enc.n_dense_levels
        r1 = torch.tensor([r + 1 for r in enc.resolutions[:nd]], dtype=torch.int64)
        strides = torch.stack([torch.ones_like(r1), r1, r1 * r1], dim=1)  # (Ld, 3)
        self.dense_strides = strides.to(torch.int32).view(nd, 3, 1).to(device)
        offs = torch.tensor(enc.offsets, dtype=torch.int32, device=device)
        self.dense_offsets = offs[:nd].view(nd, 1, 1, 1)
        self.hash_offsets = offs[nd:].view(-1, 1, 1, 1)
        self.primes = torch.tensor(_PRIMES_I32, dtype=torch.int32, device=device).view(3, 1)


def _encode_torch(x: Tensor, table: Tensor, enc: "HashGridEncoding", lt: _LevelTensors) -> Tensor:
    """Pure-PyTorch encoding; differentiable to any order w.r.t. ``x`` and ``table``."""
    n, L, f = x.shape[0], enc.n_levels, enc.n_features_per_level
    nd = enc.n_dense_levels
    x = torch.nan_to_num(x, nan=0.0, posinf=1.0, neginf=0.0).clamp(0.0, 1.0)
    scaled = x.unsqueeze(1) * lt.res  # (N, L, 3)
    with torch.no_grad():
        cell = torch.minimum(scaled.floor(), lt.res_max)
        i0 = cell.to(torch.int32)
        corner = torch.stack((i0, i0 + 1), dim=-1)  # (N, L, 3, 2): per-axis corner coordinates
        parts = []
        if nd > 0:
            c = corner[:, :nd] * lt.dense_strides  # (N, Ld, 3, 2)
            parts.append(c[:, :, 0, :, None, None] + c[:, :, 1, None, :, None] + c[:, :, 2, None, None, :]
                         + lt.dense_offsets)
        if nd < L:
            c = corner[:, nd:] * lt.primes  # int32 multiply wraps like uint32 (Eq. 4)
            h = c[:, :, 0, :, None, None] ^ c[:, :, 1, None, :, None] ^ c[:, :, 2, None, None, :]
            parts.append(torch.bitwise_and(h, enc.hashmap_size - 1) + lt.hash_offsets)
        idx = (parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)).reshape(n, L * 8)
    frac = scaled - cell  # carries d/dx
    w = torch.stack((1.0 - frac, frac), dim=-1)  # (N, L, 3, 2)
    weights = (w[:, :, 0, :, None, None] * w[:, :, 1, None, :, None]) * w[:, :, 2, None, None, :]
    feats = _Gather.apply(table, idx)  # (N, L*8, F)
    out = (feats.view(n, L, 8, f) * weights.reshape(n, L, 8, 1)).sum(dim=2)
    return out.reshape(n, L * f)


# --------------------------------------------------------------------------------------------
# The module.
# --------------------------------------------------------------------------------------------


def _tcnn_module():
    try:
        import tinycudann  # type: ignore

        return tinycudann
    except Exception:  # not installed, or installed without a usable CUDA build
        return None


class HashGridEncoding(nn.Module):
    """Instant-NGP multiresolution hash encoding, ``(N, 3)`` points in ``[0,1]^3`` -> ``(N, L*F)``.

    Args:
        n_levels: L, number of levels.
        n_features_per_level: F, features per table entry.
        log2_hashmap_size: log2 of T, the maximum number of rows per level.
        base_resolution: N_min, resolution of the coarsest level.
        max_resolution: N_max, resolution of the finest level.
        backend: ``"auto"`` (kernel on CPU when possible, torch otherwise), ``"torch"``,
            ``"cpu_kernel"`` (same as auto; explicit preference) or ``"tcnn"`` (tiny-cuda-nn,
            CUDA only; falls back to ``"torch"`` with a warning when tinycudann or CUDA is missing).

    Attributes:
        output_dim: ``L * F``.
        resolutions: ``N_l`` per level (Eq. 2); ``growth_factor``: b (Eq. 3).
        dense: per level, True when indexed densely (no hashing).
        offsets / sizes: first row and number of rows of each level in ``params``.
        params: the ``(rows, F)`` table (absent with the tcnn backend, whose parameters live in
            ``tcnn_encoding``).

    Example:
        >>> enc = HashGridEncoding(n_levels=4, log2_hashmap_size=12, base_resolution=4, max_resolution=32)
        >>> enc(torch.rand(5, 3)).shape
        torch.Size([5, 8])
    """

    def __init__(self, n_levels: int = 16, n_features_per_level: int = 2, log2_hashmap_size: int = 19,
                 base_resolution: int = 16, max_resolution: int = 2048, backend: str = "auto"):
        super().__init__()
        if backend not in BACKENDS:
            raise ValueError(f"unknown hash-grid backend {backend!r}; available: {', '.join(BACKENDS)}")
        if not 1 <= log2_hashmap_size <= 30:
            raise ValueError(f"log2_hashmap_size must be in [1, 30], got {log2_hashmap_size}")
        if n_features_per_level < 1:
            raise ValueError(f"n_features_per_level must be >= 1, got {n_features_per_level}")
        self.n_levels = int(n_levels)
        self.n_features_per_level = int(n_features_per_level)
        self.log2_hashmap_size = int(log2_hashmap_size)
        self.hashmap_size = 1 << self.log2_hashmap_size
        self.base_resolution = int(base_resolution)
        self.max_resolution = int(max_resolution)
        self.output_dim = self.n_levels * self.n_features_per_level
        self.resolutions, self.growth_factor = level_resolutions(n_levels, base_resolution, max_resolution)
        self.dense = [(r + 1) ** 3 <= self.hashmap_size for r in self.resolutions]
        # N_l is non-decreasing, so the dense levels form a prefix.
        self.n_dense_levels = sum(self.dense)
        assert all(self.dense[: self.n_dense_levels]) and not any(self.dense[self.n_dense_levels:])
        self.sizes = [(r + 1) ** 3 if d else self.hashmap_size for r, d in zip(self.resolutions, self.dense)]
        self.offsets = [sum(self.sizes[:l]) for l in range(self.n_levels)]
        self.n_params = sum(self.sizes) * self.n_features_per_level
        if sum(self.sizes) >= 2 ** 31:
            raise ValueError("hash grid too large for int32 row indices")
        # (L, 3) int64 [N_l, row offset, dense] for the C++ kernel (kept on CPU, not a buffer).
        self._levels_i64 = torch.tensor([[r, o, int(d)] for r, o, d in
                                         zip(self.resolutions, self.offsets, self.dense)], dtype=torch.int64)
        self._level_cache: dict = {}

        self.backend = backend
        self.tcnn_encoding = None
        if backend == "tcnn":
            tcnn = _tcnn_module()
            if tcnn is None or not torch.cuda.is_available():
                why = "tinycudann is not importable" if tcnn is None else "CUDA is not available"
                warnings.warn(f"nls hashgrid: backend 'tcnn' unavailable ({why}); using 'torch'",
                              RuntimeWarning, stacklevel=2)
                self.backend = "torch"
            else:
                self.tcnn_encoding = tcnn.Encoding(
                    n_input_dims=3,
                    encoding_config={"otype": "HashGrid", "n_levels": self.n_levels,
                                     "n_features_per_level": self.n_features_per_level,
                                     "log2_hashmap_size": self.log2_hashmap_size,
                                     "base_resolution": self.base_resolution,
                                     "per_level_scale": self.growth_factor},
                    dtype=torch.float32,
                )
                self.n_params = int(self.tcnn_encoding.params.numel())
        if self.tcnn_encoding is None:
            self.params = nn.Parameter(torch.empty(sum(self.sizes), self.n_features_per_level))
            self.reset_parameters()

    def reset_parameters(self) -> None:
        """Table init uniform(-1e-4, 1e-4) (Sec. 4 of the paper)."""
        if self.tcnn_encoding is None:
            with torch.no_grad():
                self.params.uniform_(-1e-4, 1e-4)

    def extra_repr(self) -> str:
        return (f"levels={self.n_levels}, features={self.n_features_per_level}, "
                f"log2_T={self.log2_hashmap_size}, res={self.base_resolution}->{self.max_resolution} "
                f"(b={self.growth_factor:.4f}, dense levels={self.n_dense_levels}), backend={self.backend}")

    # path selection -------------------------------------------------------------------------

    def prepare_kernels(self, device: torch.device) -> None:
        """Before training: on CPU, build or load the C++ kernel its inference path uses."""
        if torch.device(device).type == "cpu" and self.backend in ("auto", "cpu_kernel"):
            load_cpu_kernel()

    def path_for(self, x: Tensor) -> str:
        """Name of the path a call with ``x`` takes: ``"torch"``, ``"cpu_kernel"`` or ``"tcnn"``."""
        if self.backend == "tcnn":
            return "tcnn"
        if (self.backend in ("auto", "cpu_kernel") and x.device.type == "cpu"
                and self.params.device.type == "cpu" and self.params.dtype == torch.float32
                and x.is_floating_point()
                and not (_DOUBLE_BACKWARD.get() and x.requires_grad and torch.is_grad_enabled())
                and load_cpu_kernel()):
            return "cpu_kernel"
        return "torch"

    def _levels_on(self, device: torch.device, dtype: torch.dtype) -> _LevelTensors:
        key = (device, dtype)
        lt = self._level_cache.get(key)
        if lt is None:
            lt = self._level_cache[key] = _LevelTensors(self, device, dtype)
        return lt

    # forward --------------------------------------------------------------------------------

    def forward(self, x: Tensor) -> Tensor:
        """x: (N, 3) (or (..., 3)) in [0, 1]^3 -> (N, output_dim) in the table's dtype (float32)."""
        if x.shape[-1] != 3:
            raise ValueError(f"HashGridEncoding expects (..., 3) points, got shape {tuple(x.shape)}")
        lead = x.shape[:-1]
        x = x.reshape(-1, 3)
        path = self.path_for(x)
        if path == "tcnn":
            if x.device.type != "cuda":
                raise RuntimeError("HashGridEncoding(backend='tcnn') needs CUDA inputs; "
                                   "use backend='auto' or 'torch' for CPU tensors")
            out = self.tcnn_encoding(x.clamp(0.0, 1.0).float().contiguous()).float()
        elif path == "cpu_kernel":
            out = _KernelEncode.apply(x.float().contiguous(), self.params, self)
        else:
            table = self.params
            x = x.to(table.dtype)
            out = _encode_torch(x, table, self, self._levels_on(x.device, x.dtype))
        return out.reshape(*lead, self.output_dim)
