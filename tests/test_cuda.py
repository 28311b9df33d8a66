"""CUDA against CPU (one interface, two paths, one result): each test runs the same inputs through the CUDA path and the
CPU / pure-torch path and compares, or trains on the device and checks what the CPU tests check.

Without a CUDA device every test here skips and prints why (CI has none). The rendering and hash-grid
CUDA checks live beside their CPU tests (tests/test_rendering.py, tests/test_hashgrid.py).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def _cuda_or_skip():
    if not torch.cuda.is_available():
        reason = "no CUDA device: the CUDA-vs-CPU checks of tests/test_cuda.py were not run"
        print(reason)
        pytest.skip(reason)
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".cache" / "torch_extensions"))


# -- rs_sdf blur -------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["auto", "matmul", "conv", "fft", "triton"])
def test_blur_on_cuda_matches_scipy_and_its_adjoint(method):
    """float32 CUDA blur against scipy in float64; its backward is the blur of the output gradient."""
    from scipy.ndimage import gaussian_filter

    from plugins.rs_sdf.blur import triton_kernels, gaussian_blur3d

    if method == "triton" and not triton_kernels().available(torch.device("cuda"))[0]:
        pytest.skip(f"Triton blur not tested: {triton_kernels().available(torch.device('cuda'))[1]}")

    gen = torch.Generator().manual_seed(1)
    x = torch.rand(41, 33, 29, dtype=torch.float64, generator=gen)
    g = torch.rand(41, 33, 29, dtype=torch.float64, generator=gen)
    sigma = (1.5, 2.0, 2.5)
    xc = x.float().cuda().requires_grad_(True)
    y = gaussian_blur3d(xc, sigma, method=method)
    assert y.is_cuda and y.dtype == torch.float32
    ref = gaussian_filter(x.numpy(), sigma, mode="constant", truncate=4.0)
    err = np.abs(y.detach().cpu().double().numpy() - ref).max()
    assert err < 1e-5, err
    y.backward(g.float().cuda())
    # the Gaussian is symmetric and zero-padded, so the adjoint is the same blur
    ref_g = gaussian_filter(g.numpy(), sigma, mode="constant", truncate=4.0)
    err_g = np.abs(xc.grad.cpu().double().numpy() - ref_g).max()
    assert err_g < 1e-5, err_g


# -- rs_sdf through the renderer ---------------------------------------------------------------------

def _rs_system(device: torch.device):
    from pipeline.build import build_system, load_scene_data
    from pipeline.config import validate
    from pipeline.testing import plugin_host
    from tests.test_rs_sdf import SHAPES, _tiny_rs_scene, indicator_grid

    cfg = validate(_tiny_rs_scene(ngp_steps=0, init_occupancy=0.5), plugin_host(), source="test")
    scene = load_scene_data(cfg, device)
    system = build_system(cfg, scene, device)
    field = system.chain.field
    with torch.no_grad():  # a ball of occupancy, so the rays cross a surface
        V = indicator_grid(SHAPES["ball"], field.box.cpu(), field.logits.shape[0]).clamp(0.05, 0.95)
        field.logits.copy_(torch.logit(V).to(device))
    return system


def test_rs_sdf_render_and_voxel_gradient_on_cuda_match_cpu():
    """Weak SDF, rendered colour and d(colour)/dV: nerfacc's CUDA sampler against the CPU torch path,
    with the same parameters and the same occupancy grid (made on the CPU, copied to the device)."""
    cpu = _rs_system(torch.device("cpu"))
    cpu.train()
    cpu.chain.field.on_train_step(0)
    cpu.renderer.grid.update(0, cpu.chain.density_fn, cpu.renderer.step_size, n=1)
    cpu.renderer.grid_ready.fill_(True)
    gpu = _rs_system(torch.device("cuda"))
    gpu.train()
    gpu.chain.field.on_train_step(0)
    gpu.load_state_dict(cpu.state_dict())  # appearance field, V, occupancy grid, phase
    gen = torch.Generator().manual_seed(0)
    o = torch.tensor([0.0, 0.0, 2.0]) + 0.3 * (torch.rand(64, 3, generator=gen) - 0.5) * torch.tensor([1, 1, 0])
    d = torch.tensor([0.0, 0.0, -1.0]) + 0.4 * (torch.rand(64, 3, generator=gen) - 0.5) * torch.tensor([1, 1, 0])
    d = d / d.norm(dim=-1, keepdim=True)
    x = torch.rand(4096, 3, generator=gen) * 1.2 - 0.6
    outs = {}
    for name, system in (("cpu", cpu), ("cuda", gpu)):
        dev = next(system.parameters()).device
        with torch.no_grad():
            sdf = system.chain(x.to(dev), None)["sdf"].cpu()
        out = system.renderer.render_rays(o.to(dev), d.to(dev), system.chain, training=False)
        out["rgb"].sum().backward()
        outs[name] = (sdf, out, system.chain.field.logits.grad.cpu())
    assert outs["cuda"][1]["backend"] == "nerfacc" and outs["cpu"][1]["backend"] == "torch"
    sdf_c, out_c, g_c = outs["cpu"]
    sdf_g, out_g, g_g = outs["cuda"]
    assert (sdf_g - sdf_c).abs().max() < 1e-5
    assert out_c["opacity"].min() < 0.5 < out_c["opacity"].max(), "the rays should both hit and miss the ball"
    # same samples up to float32 round-off; a sample on a cell face may flip cells, so allow rare outliers
    for k in ("rgb", "opacity"):
        diff = (out_g[k].detach().cpu() - out_c[k].detach()).abs()
        assert diff.mean() < 2e-3 and (diff <= 2e-3).float().mean() > 0.95, (k, diff.max())
    assert torch.isfinite(g_g).all() and g_g.abs().sum() > 0
    rel = (g_g - g_c).norm() / g_c.norm()
    assert rel < 2e-2, float(rel)


# -- every field trains on CUDA ------------------------------------------------------------------------

def _posed_image_fields() -> list[str]:
    """The fields the posed-image smoke test trains (the others need a shape dataset)."""
    from tests.test_smoke import HOST

    return [c.name for c in HOST.components("field") if c.fits({"images", "gt_mesh"})]


@pytest.mark.parametrize("field_name", _posed_image_fields())
def test_every_posed_image_field_trains_on_cuda(field_name, tmp_path):
    """The smoke test's chains, on the device, past the step at which the renderer starts culling (so the
    nerfacc sampler runs): losses finite, parameters moved, and the checkpoint reloads on the CPU."""
    from pipeline.build import build_system, load_scene_data
    from tests.test_smoke import chain_for, train_chain

    data = chain_for(field_name)
    data["renderer"] = {**data["renderer"], "cull_after": 4}
    data["train"] = {**data["train"], "steps": 8}
    trainer = train_chain(data, field_name, tmp_path, torch.device("cuda"))
    cfg, system = trainer.cfg, trainer.system
    if hasattr(system.renderer, "grid_ready"):
        assert bool(system.renderer.grid_ready), "the occupancy grid never started culling"
    ckpt = sorted((trainer.run.path / "checkpoints").glob("*.pt"))[-1]
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    cpu_system = build_system(cfg, load_scene_data(cfg, torch.device("cpu")), torch.device("cpu"))
    cpu_system.load_state_dict(state["model"])


# -- the CLI end to end on CUDA ------------------------------------------------------------------------

def test_cli_rs_sdf_reconstruct_render_export_on_cuda(tmp_path, nls):
    """All three rs_sdf phases, the evaluators (slices, Monte-Carlo certify, Chamfer), render --depth and
    export, with --device cuda; the summary records the device."""
    from tests.test_rs_sdf import RS_EVALUATORS, _tiny_rs_scene, reconstruct_rs

    data = _tiny_rs_scene(ngp_steps=40, voxel_steps=20, init_density=0.5)
    data["renderer"] = {**data["renderer"], "cull_after": 8}
    data["train"] = {**data["train"], "steps": 80, "checkpoint_every": 40, "log_every": 10}
    data["eval"] = {**data["eval"], "chamfer_samples": 2000}
    data["evaluators"] = RS_EVALUATORS + [{"type": "chamfer"}]
    run, summary = reconstruct_rs(data, tmp_path, nls, "cuda")
    assert summary["device"].startswith("cuda"), summary["device"]
    m = summary["metrics"]
    assert m["psnr"] > 12 and np.isfinite(m["chamfer_l1"]) and 0 <= m["certify_within_ci"] <= 1
    assert (run / "sdf_slices" / "sdf_z_0.50.png").exists()
    proc = nls("render", str(run), "--depth", "-q", "--device", "cuda")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert list(run.glob("renders/**/*_depth.npy"))
    proc = nls("export", str(run), "-o", str(tmp_path / "mesh.ply"), "--colors", "--device", "cuda")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "mesh.ply").stat().st_size > 0


def test_checkpoint_rng_holds_the_current_device_and_reads_the_older_per_device_list():
    """rng_state keeps the current device's generator; a checkpoint written before that change (one
    state per visible device) restores the current device's entry."""
    from pipeline.train import rng_state, set_rng_state

    torch.manual_seed(3)
    st = rng_state()
    assert "cuda" not in st and torch.equal(st["cuda_current"], torch.cuda.get_rng_state())
    want = torch.rand(4, device="cuda")
    set_rng_state(st)
    assert torch.equal(torch.rand(4, device="cuda"), want)
    old = {k: v for k, v in st.items() if k != "cuda_current"}
    old["cuda"] = [st["cuda_current"]] * (torch.cuda.current_device() + 1)
    set_rng_state(old)
    assert torch.equal(torch.rand(4, device="cuda"), want)
