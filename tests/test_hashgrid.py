"""Tests of plugins.ngp.hashgrid against an independent, loop-by-loop reference encoding."""

from __future__ import annotations

import math

import pytest
import torch

from pipeline.cpp_kernels import CppKernel

from plugins.ngp import hashgrid as hg
from plugins.ngp.hashgrid import HashGridEncoding


# --------------------------------------------------------------------------------------------
# Reference: written from the paper (Eq. 2-4), one level and one corner at a time, Python ints
# for the hash, no shared code with the module.
# --------------------------------------------------------------------------------------------

def reference_encoding(x, table, n_levels, n_feat, log2_t, base, finest):
    T = 2 ** log2_t
    b = math.exp((math.log(finest) - math.log(base)) / (n_levels - 1)) if n_levels > 1 else 1.0
    x = torch.nan_to_num(x.detach().float(), nan=0.0).clamp(0, 1)
    table = table.detach().double()
    out = torch.zeros(x.shape[0], n_levels * n_feat, dtype=torch.float64)
    row0 = 0
    for lvl in range(n_levels):
        res = int(math.floor(base * b ** lvl + 1e-6))
        dense = (res + 1) ** 3 <= T
        n_rows = (res + 1) ** 3 if dense else T
        pos = x * float(res)  # float32, like the implementation
        cell = torch.minimum(pos.floor(), torch.tensor(float(res - 1)))
        frac = (pos - cell).double()
        cell = cell.long()
        for dx in (0, 1):
            for dy in (0, 1):
                for dz in (0, 1):
                    i, j, k = cell[:, 0] + dx, cell[:, 1] + dy, cell[:, 2] + dz
                    if dense:
                        idx = i + j * (res + 1) + k * (res + 1) ** 2
                    else:
                        h = (i * 1) ^ (j * 2654435761) ^ (k * 805459861)
                        idx = (h & 0xFFFFFFFF) % T
                    assert int(idx.min()) >= 0 and int(idx.max()) < n_rows
                    w = ((frac[:, 0] if dx else 1 - frac[:, 0]) * (frac[:, 1] if dy else 1 - frac[:, 1])
                         * (frac[:, 2] if dz else 1 - frac[:, 2]))
                    out[:, lvl * n_feat:(lvl + 1) * n_feat] += w[:, None] * table[row0 + idx]
        row0 += n_rows
    assert row0 == table.shape[0]
    return out


MIXED = dict(n_levels=4, n_features_per_level=2, log2_hashmap_size=10, base_resolution=4, max_resolution=32)


def _points(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, generator=g)
    special = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.5, 0.25, 0.75], [1.0, 0.0, 0.5],
                            [-0.2, 1.3, 0.5], [0.999999, 1e-7, 0.125], [float("nan"), float("inf"), 0.3]])
    return torch.cat([special, x])


def _random_table(enc, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        enc.params.copy_(torch.rand(enc.params.shape, generator=g) * 2 - 1)


def _kernel_or_skip():
    if not hg.load_cpu_kernel():
        pytest.skip(f"CPU kernel unavailable: {hg.cpu_kernel_status()['error']}")


# --------------------------------------------------------------------------------------------


def test_levels_follow_paper():
    res, b = hg.level_resolutions(16, 16, 2048)
    assert res[0] == 16 and res[-1] == 2048
    assert b == pytest.approx(2 ** (7 / 15))
    assert res == sorted(res)
    enc = HashGridEncoding(backend="torch")
    assert enc.output_dim == 32
    assert enc.dense == [True] * 5 + [False] * 11  # (N_l+1)^3 <= 2^19 for N_l <= 79
    assert enc.params.shape == (sum(enc.sizes), 2)
    assert enc.params.abs().max() <= 1e-4  # uniform(-1e-4, 1e-4)


def test_torch_path_matches_reference():
    enc = HashGridEncoding(backend="torch", **MIXED)
    assert enc.dense == [True, True, False, False]
    _random_table(enc)
    x = _points(500)
    out = enc(x)
    assert out.shape == (x.shape[0], 8) and out.dtype == torch.float32
    ref = reference_encoding(x, enc.params, 4, 2, 10, 4, 32)
    torch.testing.assert_close(out.double(), ref, atol=2e-6, rtol=1e-5)
    # leading dimensions are kept
    assert enc(x[:12].view(3, 4, 3)).shape == (3, 4, 8)


def test_gradcheck_float64():
    cfg = dict(n_levels=3, n_features_per_level=2, log2_hashmap_size=6, base_resolution=2, max_resolution=8)
    enc = HashGridEncoding(backend="torch", **cfg).double()
    assert enc.dense == [True, False, False]
    g = torch.Generator().manual_seed(0)
    x = (0.05 + 0.9 * torch.rand(4, 3, generator=g, dtype=torch.float64)).requires_grad_(True)
    table = torch.rand(enc.params.shape, generator=g, dtype=torch.float64).requires_grad_(True)

    def f(x_, t_):
        return torch.func.functional_call(enc, {"params": t_}, (x_,))

    assert enc.path_for(x) == "torch"
    assert torch.autograd.gradcheck(f, (x, table))
    assert torch.autograd.gradgradcheck(f, (x, table))


def test_double_backward_fp32():
    enc = HashGridEncoding(n_levels=8, log2_hashmap_size=14, base_resolution=8, max_resolution=128)
    _random_table(enc)
    head = torch.randn(enc.output_dim)
    x = torch.rand(256, 3).requires_grad_(True)
    sdf = enc(x) @ head
    (grad_x,) = torch.autograd.grad(sdf.sum(), x, create_graph=True)
    eikonal = ((grad_x.norm(dim=-1) - 1.0) ** 2).mean()
    eikonal.backward()
    g = enc.params.grad
    assert g is not None and g.dtype == torch.float32
    assert torch.isfinite(g).all() and g.abs().sum() > 0


def test_cpu_kernel_matches_torch_path():
    _kernel_or_skip()
    for cfg, n in [(dict(n_levels=8, log2_hashmap_size=15, base_resolution=16, max_resolution=512), 3001),
                   (dict(MIXED, n_features_per_level=1), 77),
                   (dict(MIXED, n_features_per_level=3), 50),
                   (dict(MIXED, n_features_per_level=4), 0)]:
        enc = HashGridEncoding(backend="auto", **cfg)
        assert 0 < enc.n_dense_levels < enc.n_levels
        _random_table(enc)
        x = _points(n) if n else torch.rand(0, 3)
        assert enc.path_for(x) == "cpu_kernel"
        out_k = enc(x)
        gout = torch.randn_like(out_k)
        (g_k,) = torch.autograd.grad(out_k, enc.params, gout)
        ref = HashGridEncoding(backend="torch", **cfg)
        ref.load_state_dict(enc.state_dict())
        out_t = ref(x)
        (g_t,) = torch.autograd.grad(out_t, ref.params, gout)
        torch.testing.assert_close(out_k, out_t, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(g_k, g_t, atol=1e-5, rtol=1e-5)


def _kernel_and_torch_pair(cfg):
    """The same table behind the kernel path (``auto``) and the torch path."""
    enc = HashGridEncoding(backend="auto", **cfg)
    _random_table(enc)
    ref = HashGridEncoding(backend="torch", **cfg)
    ref.load_state_dict(enc.state_dict())
    return enc, ref


@pytest.mark.parametrize("features", [1, 2, 3, 4])
def test_cpu_kernel_input_gradient_matches_torch_path(features):
    """First-order gradients w.r.t. x and the table, x requiring a gradient: the kernel's backward
    against autograd through the torch path (whose float64 gradients gradcheck holds to finite
    differences above), on random points, cell corners, the cube's faces, and points the clamp moves
    (outside the cube, NaN, inf: no gradient there)."""
    _kernel_or_skip()
    cfg = dict(MIXED, n_levels=6, max_resolution=64, n_features_per_level=features)
    enc, ref = _kernel_and_torch_pair(cfg)
    assert 0 < enc.n_dense_levels < enc.n_levels
    x = _points(2000)
    gout = torch.randn(x.shape[0], enc.output_dim, generator=torch.Generator().manual_seed(2))
    grads = []
    for e in (enc, ref):
        xi = x.clone().requires_grad_(True)
        assert e.path_for(xi) == ("cpu_kernel" if e is enc else "torch")
        grads.append(torch.autograd.grad(e(xi), (xi, e.params), gout))
    (gx_k, gt_k), (gx_t, gt_t) = grads
    scale = float(gx_t.abs().max())
    assert scale > 1.0
    torch.testing.assert_close(gx_k, gx_t, atol=1e-5 * scale, rtol=1e-5)
    torch.testing.assert_close(gt_k, gt_t, atol=1e-5, rtol=1e-5)
    outside = ~((x >= 0) & (x <= 1))  # -0.2, 1.3, nan, inf
    assert outside.sum() == 4 and (gx_k[outside] == 0).all()
    assert (gx_k[~outside] != 0).float().mean() > 0.99


def test_cpu_kernel_double_backward_is_torch_paths():
    """An eikonal loss (gradient of a gradient) through the kernel path: the differentiable backward
    is the torch path's, so the x gradient and the table's second-order gradient are the same."""
    _kernel_or_skip()
    enc, ref = _kernel_and_torch_pair(dict(n_levels=8, log2_hashmap_size=14, base_resolution=8, max_resolution=128))
    head = torch.randn(enc.output_dim, generator=torch.Generator().manual_seed(3))
    x = torch.rand(300, 3, generator=torch.Generator().manual_seed(4))
    results = []
    for e in (enc, ref):
        xi = x.clone().requires_grad_(True)
        (grad_x,) = torch.autograd.grad((e(xi) @ head).sum(), xi, create_graph=True)
        ((grad_x.norm(dim=-1) - 1.0) ** 2).mean().backward()
        results.append((grad_x.detach(), e.params.grad, xi.grad))
    assert enc.path_for(x.requires_grad_(True)) == "cpu_kernel"
    with hg.differentiable_input_gradients():  # what the eikonal and normal losses call the field within
        assert enc.path_for(x) == "torch" and enc.path_for(x.detach()) == "cpu_kernel"
        with torch.no_grad():
            assert enc.path_for(x) == "cpu_kernel"
    assert enc.path_for(x) == "cpu_kernel"
    for got, want in zip(*results):
        assert want.abs().sum() > 0
        torch.testing.assert_close(got, want, atol=1e-6 * float(want.abs().max()), rtol=1e-6)


def test_cpu_kernel_threads_deterministic():
    _kernel_or_skip()
    enc = HashGridEncoding(n_levels=6, log2_hashmap_size=14, base_resolution=8, max_resolution=256)
    x = torch.rand(2000, 3)
    gout = torch.randn(2000, enc.output_dim)
    threads = torch.get_num_threads()
    try:
        grads = []
        for t in (1, 2):
            torch.set_num_threads(t)
            xi = x.clone().requires_grad_(True)
            grads.append(torch.autograd.grad(enc(xi), (enc.params, xi), gout))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])


def test_kernel_build_failure_falls_back(monkeypatch):
    saved = hg.cpu_kernel_status()
    monkeypatch.setenv("NLS_HASHGRID_KERNEL", "0")
    monkeypatch.setattr(hg, "_KERNEL", CppKernel(hg._KERNEL.namespace, hg._KERNEL.source, hg._KERNEL.probe,
                                                 hg._KERNEL.env, title=hg._KERNEL.title))
    with pytest.warns(RuntimeWarning, match="the hash-grid CPU kernel .* is unavailable"):
        assert hg.load_cpu_kernel() is False
    enc = HashGridEncoding(**MIXED)
    assert enc.path_for(torch.rand(4, 3)) == "torch"
    assert hg.cpu_kernel_status()["error"].endswith("NLS_HASHGRID_KERNEL=0")
    assert saved.keys() == hg.cpu_kernel_status().keys()


def test_unknown_backend_message():
    with pytest.raises(ValueError, match="available: auto, torch, cpu_kernel, tcnn"):
        HashGridEncoding(backend="warp")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: CUDA path not tested")
def test_cuda_torch_path_matches_cpu():
    enc = HashGridEncoding(backend="torch", **dict(MIXED, log2_hashmap_size=12))
    _random_table(enc)
    x = _points(4000)
    gout = torch.randn(x.shape[0], enc.output_dim)
    out_c = enc(x)
    (g_c,) = torch.autograd.grad(out_c, enc.params, gout)
    enc_cuda = enc.cuda()
    out_g = enc_cuda(x.cuda())
    (g_g,) = torch.autograd.grad(out_g, enc_cuda.params, gout.cuda())
    torch.testing.assert_close(out_g.cpu(), out_c, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(g_g.cpu(), g_c, atol=1e-4, rtol=1e-4)
    # double backward on CUDA
    xg = x.cuda().requires_grad_(True)
    (gx,) = torch.autograd.grad(enc_cuda(xg).sum(), xg, create_graph=True)
    gx.norm(dim=-1).mean().backward()
    assert torch.isfinite(enc_cuda.params.grad).all()


def test_tcnn_against_torch():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device: tiny-cuda-nn path not tested")
    if hg._tcnn_module() is None:
        pytest.skip("tinycudann is not importable: tiny-cuda-nn path not tested")
    cfg = dict(n_levels=8, log2_hashmap_size=15, base_resolution=16, max_resolution=512)
    enc_t = HashGridEncoding(backend="tcnn", **cfg).cuda()
    enc_p = HashGridEncoding(backend="torch", **cfg).cuda()
    x = torch.rand(10000, 3, device="cuda")
    out_t, out_p = enc_t(x), enc_p(x)
    # Values are NOT compared: tcnn offsets its grid by half a cell and hashes its own table. Only the
    # shapes, dtype, finiteness and gradients are checked (the bound below is the +-1e-4 table initialisation,
    # which any interpolation of it meets). A value check needs tcnn's table copied into the torch encoding.
    assert out_t.shape == out_p.shape and out_t.dtype == torch.float32
    assert torch.isfinite(out_t).all()
    assert out_t.abs().max() <= 1e-4 + 1e-6 and out_p.abs().max() <= 1e-4 + 1e-6
    out_t.sum().backward()
    assert torch.isfinite(enc_t.tcnn_encoding.params.grad).all()
