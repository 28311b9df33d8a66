"""A third-party plugin's mistakes while a run trains, evaluates or exports are one error line that
names the component and its plugin (exit 1), never a traceback from deep inside torch or nerfacc;
and what a plugin author may reasonably leave out (a renderer without ``update``/``cfg``, an evaluator
returning numpy numbers, a plain function as a density map) works."""

from __future__ import annotations

import json

import pytest

# One --plugins-dir file with a component per stage; ``mode`` picks the mistake.
RUNTIME_PLUGIN = '''
from typing import Literal

from pydantic import Field

from pipeline.components import ComponentConfig
from pipeline.hookspecs import hookimpl

Mode = Literal["ok", "raise", "tensor", "shape", "tuple", "no_image", "none", "nograd", "nan", "number",
               "kernels", "schedule", "int_key", "no_depth"]


class ModeConfig(ComponentConfig):
    """Which mistake to make."""
    mode: Mode = Field("ok", description="ok or a mistake")


def build_field(cfg, ctx):
    import torch
    from torch import nn

    if cfg.mode == "none":
        return  # a factory that forgets its return

    class SphereField(nn.Module):
        """A sphere of learnable radius and colour: sdf (N,), rgb (N, 3)."""
        def __init__(self):
            super().__init__()
            self.radius = nn.Parameter(torch.tensor(0.3))
            self.colour = nn.Parameter(torch.full((3,), 0.5))

        def forward(self, x, d):
            sdf = x.norm(dim=-1) - self.radius
            if cfg.mode == "raise":
                raise RuntimeError("my field has a bug")
            if cfg.mode == "tensor":
                return sdf
            if cfg.mode == "shape":
                return {"sdf": x - self.radius, "rgb": self.colour.expand(len(x), 3)}
            return {"sdf": sdf, "rgb": self.colour.expand(len(x), 3)}
    return SphereField()


def build_density(cfg, ctx):
    import torch

    def density(out):  # a plain function, not a module
        if cfg.mode == "raise":
            raise RuntimeError("density blew up")
        return {"density": 200.0 * torch.sigmoid(-out["sdf"] * 100.0)}
    return density


def build_renderer(cfg, ctx):
    """Uniform samples in the box; no update(), no .cfg, no num_samples: all optional."""
    import torch
    from torch import nn

    from pipeline.rays import image_rays, ray_aabb_intersect

    aabb = ctx.aabb

    class Uniform(nn.Module):
        def render_rays(self, origins, dirs, chain, *, training=False, background=None):
            t0, t1, hit = ray_aabb_intersect(origins, dirs, aabb.to(origins.device))
            t0, t1 = t0.clamp(min=0), t1.clamp(min=0)
            t = t0[:, None] + (t1 - t0)[:, None] * torch.linspace(0, 1, 24)
            x = origins[:, None] + dirs[:, None] * t[..., None]
            R, S = t.shape
            out = chain(x.reshape(-1, 3), dirs[:, None].expand(R, S, 3).reshape(-1, 3))
            alpha = 1 - torch.exp(-out["density"].reshape(R, S) * ((t1 - t0) / (S - 1) * hit)[:, None])
            trans = torch.cumprod(torch.cat([torch.ones(R, 1), 1 - alpha[:, :-1] + 1e-10], 1), 1)
            w = alpha * trans
            op = w.sum(1, keepdim=True)
            res = {"rgb": (w[..., None] * out["rgb"].reshape(R, S, 3)).sum(1) + (1 - op),
                   "opacity": op, "depth": (w * t).sum(1, keepdim=True)}
            if cfg.mode == "no_depth":
                del res["depth"]
            return res

        def render_image(self, cameras, i, chain, *, chunk, supersample=1):
            if cfg.mode == "raise":
                raise TypeError("my render_image has a bug")
            o, d = image_rays(cameras, i)
            H, W = cameras.height, cameras.width
            parts = [self.render_rays(o.reshape(-1, 3)[k:k + chunk], d.reshape(-1, 3)[k:k + chunk], chain)
                     for k in range(0, H * W, chunk)]
            return {key: torch.cat([p[key] for p in parts]).reshape(H, W, -1) for key in parts[0]}

    r = Uniform()
    if cfg.mode == "no_image":
        r.render_image = None
    return r


def build_loss(cfg, ctx):
    import torch
    from torch import nn

    if cfg.mode == "number":
        return 42

    class Hooked(nn.Module):
        def prepare_kernels(self, device):
            if cfg.mode == "kernels":
                raise OSError("nvcc not found")

        def on_train_step(self, step):
            if cfg.mode == "schedule":
                raise RuntimeError("schedule boom")

        def forward(self, batch, out, system):
            return out["rgb"].mean()

    if cfg.mode in ("kernels", "schedule"):
        return Hooked()

    def loss(batch, out, system):
        if cfg.mode == "nograd":
            return torch.tensor(0.5)
        if cfg.mode == "nan":
            return torch.tensor(float("nan"))
        raise ValueError("my loss has a bug")
    return loss


def build_certifier(cfg, ctx):
    def certify(outputs, x=None, field=None):  # a plain function that asks for the query points
        if x is None or field is None:
            raise RuntimeError("wants_query certifier got no x")
        return {"sdf": outputs["sdf"]}
    certify.wants_query = True
    return certify


def build_extractor(cfg, ctx):
    class Extractor:
        def extract(self, chain, *, resolution=None, level=None, bbox=None, device=None):
            if cfg.mode == "raise":
                raise IndexError("my extractor has a bug")
            if cfg.mode == "ok":  # a mesh without metadata
                import trimesh
                return trimesh.creation.box(extents=(0.5, 0.5, 0.5))
            return ([[0, 0, 0]], [[0, 0, 0]])
    return Extractor()


def build_evaluator(cfg, ctx):
    import numpy as np
    import torch

    if cfg.mode == "int_key":
        return lambda c: {1: 2.0}
    return lambda c: {"np_metric": np.float32(1.5), "torch_metric": torch.tensor(2.5), "np_int": np.int64(3)}


def build_scene(cfg, ctx):
    def load():
        raise FileNotFoundError("my_data/cameras.npz")
    return load


@hookimpl
def nls_register_fields(register):
    register("rt_field", build_field, config=ModeConfig, produces={"sdf", "rgb"}, description="sphere")


@hookimpl
def nls_register_density_maps(register):
    register("rt_density", build_density, config=ModeConfig, consumes=[{"sdf"}], produces={"density"},
             description="sdf -> density, a plain function")


@hookimpl
def nls_register_renderers(register):
    register("rt_renderer", build_renderer, config=ModeConfig, consumes=[{"density", "rgb", "images"}],
             produces={"render", "depth"}, description="uniform samples")


@hookimpl
def nls_register_losses(register):
    register("rt_loss", build_loss, config=ModeConfig, description="raises")


@hookimpl
def nls_register_mesh_extractors(register):
    register("rt_mc", build_extractor, config=ModeConfig, description="raises or returns a tuple")


@hookimpl
def nls_register_evaluators(register):
    register("rt_eval", build_evaluator, config=ModeConfig, description="numpy and torch numbers")


@hookimpl
def nls_register_certifiers(register):
    register("rt_cert", build_certifier, consumes=["sdf"], produces={"sdf"}, description="wants_query")


@hookimpl
def nls_register_scene_sources(register):
    register("rt_scene", build_scene, produces={"images"}, description="its loader raises")
'''

#: the working chain: this plugin's field, density map and renderer
GOOD = ["--set", "field={type: rt_field}", "--set", "density={type: rt_density}",
        "--set", "renderer={type: rt_renderer}", "--set", "extractor={type: marching_cubes, quantity: sdf, level: 0.0}"]


@pytest.fixture
def runtime_plugin(tmp_path, tiny_scene):
    (tmp_path / "plugs").mkdir()
    (tmp_path / "plugs" / "rt.py").write_text(RUNTIME_PLUGIN)
    return tiny_scene(), ["--plugins-dir", str(tmp_path / "plugs"), "-q", "-o", str(tmp_path / "runs"), "--steps", "2"]


def test_a_renderer_without_update_and_numpy_evaluator_results_work(runtime_plugin, tmp_path, nls):
    scene, common = runtime_plugin
    res = nls("reconstruct", str(scene), *common, *GOOD[:-2], "--set", "evaluators=[{type: rt_eval}]",
              "--set", "extractor={type: rt_mc}", "--set", "certifier={type: rt_cert}")  # a plain wants_query
    assert res.returncode == 0, res.stderr
    run = next((tmp_path / "runs").glob("tiny/*/*"))
    metrics = json.loads((run / "summary.json").read_text())["metrics"]
    assert metrics == {"np_metric": 1.5, "torch_metric": 2.5, "np_int": 3}, metrics  # were dropped as not numbers
    ev = nls("eval", str(run), "--plugins-dir", str(tmp_path / "plugs"), "-o", str(tmp_path / "e.json"))
    assert ev.returncode == 0, ev.stderr  # was: float32 is not JSON serializable
    assert json.loads((tmp_path / "e.json").read_text())["metrics"]["torch_metric"] == 2.5
    ex = nls("export", str(run), "--plugins-dir", str(tmp_path / "plugs"), "-o", str(tmp_path / "m.ply"))
    assert ex.returncode == 0 and "8 vertices, 12 faces" in ex.stdout and "None" not in ex.stdout, ex.stdout


@pytest.mark.parametrize("sets, needle", [
    (["field={type: rt_field, mode: raise}"],
     "field 'rt_field' of plugin rt failed on 6144 points: RuntimeError: my field has a bug"),
    (["field={type: rt_field, mode: tensor}"], "field 'rt_field' of plugin rt returned Tensor, not a mapping"),
    (["field={type: rt_field, mode: shape}"],
     "field 'rt_field' of plugin rt returned 'sdf' as shape (6144, 3) for 6144 points; 'sdf' is a tensor of shape (N,)"),
    (["density={type: rt_density, mode: raise}"],
     "density map 'rt_density' of plugin rt failed on 6144 points: RuntimeError: density blew up"),
    (["losses=[{type: photometric}, {type: rt_loss}]"],
     "loss 'rt_loss' of plugin rt (term 1_rt_loss) failed: ValueError: my loss has a bug"),
    (["extractor={type: rt_mc, mode: raise}"], "extractor 'rt_mc' of plugin rt failed: IndexError: my extractor has a bug"),
    (["extractor={type: rt_mc, mode: tuple}"], "extractor 'rt_mc' of plugin rt returned tuple; an extractor returns a trimesh"),
    (["renderer={type: rt_renderer, mode: raise}"],
     "renderer 'rt_renderer' of plugin rt failed rendering view 0 of test: TypeError: my render_image has a bug"),
    (["renderer={type: rt_renderer, mode: no_image}"], "renderer 'rt_renderer' of plugin rt has no render_image()"),
    (["scene={type: rt_scene}"],
     "scene source 'rt_scene' of plugin rt failed while loading the scene: FileNotFoundError: my_data/cameras.npz"),
    (["field={type: rt_field, mode: none}"], "field 'rt_field' of plugin rt: its factory returned None"),
    (["losses=[{type: rt_loss, mode: number}]"], "loss 'rt_loss' of plugin rt: its factory returned int"),
    (["losses=[{type: rt_loss, mode: kernels}]"],
     "loss 'rt_loss' of plugin rt: prepare_kernels(cpu) failed: OSError: nvcc not found"),
    (["losses=[{type: rt_loss, mode: schedule}]"],
     "loss 'rt_loss' of plugin rt: on_train_step(0) failed: RuntimeError: schedule boom"),
    (["losses=[{type: rt_loss, mode: nograd}]"],
     "no loss term of step 0 has a gradient (0_rt_loss (loss 'rt_loss' of plugin rt))"),
    (["losses=[{type: photometric}, {type: rt_loss, mode: nan}]"],
     "1_rt_loss (loss 'rt_loss' of plugin rt) gave a non-finite loss at the first step"),
    (["renderer={type: rt_renderer, mode: no_depth}"],
     "renderer 'rt_renderer' of plugin rt: render_rays returned 'depth' as nothing; a renderer returns 'depth' "
     "of shape (256, 1)"),
    (["evaluators=[{type: rt_eval, mode: int_key}]"],
     "evaluator 'rt_eval' of plugin rt returned the metric name(s) 1; metric names are strings"),
])
def test_a_plugin_mistake_at_run_time_names_the_component(runtime_plugin, tmp_path, nls, sets, needle):
    scene, common = runtime_plugin
    extra = [a for s in sets for a in ("--set", s)]
    res = nls("reconstruct", str(scene), *common, *GOOD, *extra)
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
    assert needle in res.stderr, res.stderr
    # a run that failed before anything was trained leaves no folder; one that failed after training
    # (extraction, evaluation renders) keeps its checkpoint for `nls resume` once the plugin is fixed
    runs = list((tmp_path / "runs").glob("tiny/*/*"))
    if "extractor" in needle or "rendering view" in needle or "evaluator" in needle:
        assert len(runs) == 1 and list((runs[0] / "checkpoints").glob("*.pt")), runs
    else:
        assert not runs, runs
        assert any(w in res.stderr for w in ("removed", "scene source", "has no", "factory returned")), res.stderr
